"""BentoML's refusals of malformed bodies are logged as one warning line."""

from __future__ import annotations

import logging
import sys

import pytest
from pydantic import BaseModel, ValidationError

from service.logs import BENTOML_HTTP_LOGGER, ClientErrorsAsWarnings, install


class _Input(BaseModel):
    instances: list[list[float]]


def _record(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        info = sys.exc_info()
    return logging.LogRecord(
        BENTOML_HTTP_LOGGER, logging.ERROR, __file__, 1, "Exception on %s [%s]",
        ("/predict", "POST"), info,
    )  # fmt: skip


def _validation_error(body: bytes) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        _Input.model_validate_json(body)
    return caught.value


def test_a_validation_error_becomes_one_warning_line_without_the_input() -> None:
    record = _record(_validation_error(b'{"instances": [["secret-value"]]}'))
    assert ClientErrorsAsWarnings().filter(record)
    text = logging.Formatter().format(record)
    assert record.levelno == logging.WARNING and record.levelname == "WARNING"
    assert text == (
        "refused a malformed request on /predict (400): "
        "instances.0.0: Input should be a valid number, unable to parse string as a number"
    )
    assert "secret-value" not in text and "Traceback" not in text


def test_invalid_json_names_the_body() -> None:
    record = _record(_validation_error(b"not json"))
    ClientErrorsAsWarnings().filter(record)
    assert record.getMessage().startswith(
        "refused a malformed request on /predict (400): body: Invalid JSON"
    )


def test_other_exceptions_keep_their_traceback() -> None:
    record = _record(RuntimeError("a real bug"))
    assert ClientErrorsAsWarnings().filter(record)
    assert record.levelno == logging.ERROR
    assert "Traceback" in logging.Formatter().format(record)


def test_install_adds_the_filter_once() -> None:
    logger = logging.getLogger(BENTOML_HTTP_LOGGER)
    before = list(logger.filters)
    try:
        install()
        install()
        added = [f for f in logger.filters if isinstance(f, ClientErrorsAsWarnings)]
        assert len(added) == 1
    finally:
        logger.filters[:] = before

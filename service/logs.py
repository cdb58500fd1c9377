"""One warning line, not an ERROR traceback, for a request BentoML itself refused.

When a body is not JSON, misses a field or has a field of the wrong JSON type, BentoML
answers 400 and logs ``Exception on /predict [POST]`` at ERROR with the whole pydantic
traceback, including the start of the offending input. A client sending garbage would
fill the log with ERROR tracebacks and copy request data into it (raw inputs are not
logged by default, for privacy). ``install()`` turns those records into one WARNING
line naming the route and the problems, without any input value. Other exceptions keep
their traceback.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from service.validation import describe_problems

BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"


class ClientErrorsAsWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            problems = describe_problems(exc.errors(include_url=False, include_input=False))
            route = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "refused a malformed request on %s (400): %s"
            record.args = (route, problems)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def install() -> None:
    logger = logging.getLogger(BENTOML_HTTP_LOGGER)
    if not any(isinstance(f, ClientErrorsAsWarnings) for f in logger.filters):
        logger.addFilter(ClientErrorsAsWarnings())

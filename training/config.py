"""Every hyperparameter of a training run, in one frozen dataclass.

The defaults mirror DeepLearning4j's MNIST multi-layer perceptron example: one hidden layer
of ReLU units, a softmax output trained on negative log-likelihood, SGD with Nesterov
momentum 0.9 at learning rate 0.01, Xavier (Glorot uniform) initialisation, L2 on the
weights and seed 12345; the hidden layer is 100 units wide because the default data are the
8x8 digits rather than 28x28 MNIST.

A config comes from code (``TrainConfig(...)`` or ``with_overrides``), from a dict
(``from_dict``, the form stored in a model card) or from a TOML file (``load_toml``;
``training/default.toml`` holds the defaults with a comment per key).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from errors import DataError

#: The TOML file holding the defaults, with comments.
DEFAULT_TOML = Path(__file__).with_name("default.toml")

#: Hidden-layer activations ``hidden`` layers may use.
ACTIVATIONS = ("relu", "tanh", "sigmoid")

#: Weight initialisations; biases always start at zero, as in DL4J.
WEIGHT_INITS = ("xavier_uniform", "xavier_normal")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run.

    Parameters
    ----------
    source : str
        Data source for :func:`training.data.load_dataset`: ``"digits"``, ``"digits28"``,
        ``"mnist:DIR"`` or ``"csv:PATH"``.
    label_column : str or None
        Label column of a CSV source; required for ``csv:``, ignored otherwise.
    hidden : tuple of int
        Width of each hidden layer, input side first.
    activation : str
        Hidden-layer activation, one of :data:`ACTIVATIONS`.
    weight_init : str
        Weight initialisation, one of :data:`WEIGHT_INITS`.
    learning_rate, momentum : float
        SGD step size and momentum coefficient.
    nesterov : bool
        Use Nesterov momentum (DL4J's ``Nesterovs`` updater).
    l2 : float
        L2 coefficient added to the gradient of every weight matrix (not the biases), like
        DL4J's ``l2(...)``; torch calls it weight decay.
    batch_size : int
        Rows per minibatch; the last, smaller batch of an epoch is kept.
    max_epochs : int
        Upper bound on passes over the training rows.
    patience : int
        Early stopping: epochs without a validation-loss improvement of at least
        ``min_delta`` before training stops; the best epoch's weights are restored.
    min_delta : float
        Smallest decrease of the validation loss that counts as an improvement.
    log_every : int
        The loss listener reports the minibatch loss every this many iterations (DL4J's
        ``ScoreIterationListener``).
    val_fraction, test_fraction : float
        Share of each class held out for validation (early stopping, calibration) and for
        the final test evaluation.
    seed : int
        Seeds the split, the initial weights and the minibatch order.
    threads : int
        Torch intra-op threads while training; one is fastest for a net this small and
        leaves the other cores to the rest of the machine.
    calibration_bins : int
        Equal-width confidence bins of the expected calibration error.
    anomaly_fpr : float
        False-positive rate the anomaly threshold is set to on the reference data.
    """

    source: str = "digits"
    label_column: str | None = None
    hidden: tuple[int, ...] = (100,)
    activation: str = "relu"
    weight_init: str = "xavier_uniform"
    learning_rate: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    l2: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 200
    patience: int = 15
    min_delta: float = 1e-4
    log_every: int = 10
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 12345
    threads: int = 1
    calibration_bins: int = 15
    anomaly_fpr: float = 0.01

    def __post_init__(self) -> None:
        # Lists (JSON, TOML) become tuples so the config stays hashable and frozen.
        if isinstance(self.hidden, list):
            object.__setattr__(self, "hidden", tuple(self.hidden))
        for name in _FLOAT_FIELDS:
            if _is_int(getattr(self, name)):
                object.__setattr__(self, name, float(getattr(self, name)))
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-ready dict (``hidden`` as a list)."""
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict; missing keys take their defaults.

        Raises
        ------
        DataError
            On an unknown key or a value of the wrong type or range (naming the key).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(
                f"unknown training config key {unknown[0]!r}; "
                f"known keys: {', '.join(sorted(known))}"
            )
        try:
            return cls(**d)
        except (TypeError, ValueError) as exc:
            raise DataError(str(exc)) from exc

    @classmethod
    def load_toml(cls, path: str | Path) -> TrainConfig:
        """Read a flat TOML file of ``key = value`` lines (see ``training/default.toml``).

        Raises
        ------
        DataError
            When the file is missing or not valid TOML, or on a bad key or value.
        """
        p = Path(path)
        try:
            with p.open("rb") as fh:
                d = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise DataError(f"training config file not found: {p}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise DataError(f"training config {p} is not valid TOML: {exc}") from exc
        return cls.from_dict(d)

    def with_overrides(self, **kw: Any) -> TrainConfig:
        """A copy with some fields replaced, validated.

        Raises
        ------
        ValueError
            Naming the field, on an unknown field or a value of the wrong type or range.
        """
        known = {f.name for f in dataclasses.fields(self)}
        for key in kw:
            if key not in known:
                raise ValueError(f"unknown training config field {key!r}")
        return dataclasses.replace(self, **kw)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(float(v))  # type: ignore[arg-type]


_FLOAT_FIELDS = (
    "learning_rate",
    "momentum",
    "l2",
    "min_delta",
    "val_fraction",
    "test_fraction",
    "anomaly_fpr",
)


def _validate(c: TrainConfig) -> None:
    def bad(name: str, why: str) -> ValueError:
        return ValueError(f"training config field {name!r} {why}, got {getattr(c, name)!r}")

    if not isinstance(c.source, str) or not c.source:
        raise bad("source", "must be a non-empty string")
    if c.label_column is not None and (not isinstance(c.label_column, str) or not c.label_column):
        raise bad("label_column", "must be a non-empty string or None")
    if not isinstance(c.hidden, tuple) or not all(_is_int(h) and h > 0 for h in c.hidden):
        raise bad("hidden", "must be a sequence of positive integers")
    if c.activation not in ACTIVATIONS:
        raise bad("activation", f"must be one of {', '.join(ACTIVATIONS)}")
    if c.weight_init not in WEIGHT_INITS:
        raise bad("weight_init", f"must be one of {', '.join(WEIGHT_INITS)}")
    if not isinstance(c.nesterov, bool):
        raise bad("nesterov", "must be true or false")
    for name in _FLOAT_FIELDS:
        if not _is_number(getattr(c, name)):
            raise bad(name, "must be a finite number")
    if c.learning_rate <= 0:
        raise bad("learning_rate", "must be > 0")
    for name in ("l2", "min_delta"):
        if getattr(c, name) < 0:
            raise bad(name, "must be >= 0")
    if not 0 <= c.momentum < 1:
        raise bad("momentum", "must be in [0, 1)")
    if c.nesterov and c.momentum == 0:
        raise bad("momentum", "must be > 0 with nesterov = true")
    for name in ("val_fraction", "test_fraction"):
        if not 0 < getattr(c, name) < 1:
            raise bad(name, "must be in (0, 1)")
    if c.val_fraction + c.test_fraction >= 1:
        raise bad("test_fraction", "plus val_fraction must be < 1")
    if not 0 < c.anomaly_fpr < 1:
        raise bad("anomaly_fpr", "must be in (0, 1)")
    for name in ("batch_size", "max_epochs", "log_every", "threads", "calibration_bins"):
        v = getattr(c, name)
        if not _is_int(v) or v < 1:
            raise bad(name, "must be an integer >= 1")
    for name in ("patience", "seed"):
        v = getattr(c, name)
        if not _is_int(v) or v < 0:
            raise bad(name, "must be an integer >= 0")

"""One Settings object, read from the environment (prefix ``ARGUS_``).

Every process of Argus (the CLI, each BentoML worker) builds its Settings from the same
environment, so a value set before ``argus serve`` reaches every worker.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from errors import SettingsError

DEFAULT_MODEL = "argus-digits"


@dataclass(frozen=True)
class Settings:
    """Runtime settings; each field is read from ``ARGUS_<FIELD>`` (upper case).

    ``home`` holds the embedded state (``state.sqlite3``) and, unless ``BENTOML_HOME`` is
    set, BentoML's model store (``home/bentoml``). ``model_source`` is a folder of
    ``.bentomodel`` archives shared by every replica (see docs/operations.md#scaling-out).
    """

    home: Path = Path("~/.argus")
    model: str = DEFAULT_MODEL
    models: str | None = None
    state_url: str | None = None
    admin_token: str | None = field(default=None, repr=False)
    feedback_token: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 3000
    workers: int = 2
    max_batch: int = 1024
    max_body_bytes: int = 8 * 1024 * 1024
    input_window: int = 1000
    label_window: int = 1000
    retention_seconds: float = 7 * 24 * 3600.0
    retention_rows: int = 1_000_000
    store_inputs: bool = False
    poll_seconds: float = 0.5
    metrics_cache_seconds: float = 1.0
    state_busy_timeout: float = 5.0
    spill_max_bytes: int = 256 * 1024 * 1024
    coalesce_wait_ms: float = 2.0
    model_source: Path | None = None
    guard_mode: str = "off"
    guard_file: Path | None = None
    history_seconds: float = 10.0
    history_retention_seconds: float = 7 * 24 * 3600.0
    history_points: int = 10_000

    @property
    def bentoml_home(self) -> Path:
        env = os.environ.get("BENTOML_HOME")
        return Path(env).expanduser() if env else self.home / "bentoml"

    @property
    def onnx_threads(self) -> int:
        """onnxruntime intra-op threads per worker: the cores shared among the workers."""
        return max(1, (os.cpu_count() or 1) // max(1, self.workers))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f"ARGUS_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, str(f.type), raw)
        if "models" in values and "model" not in values:  # the first listed is the default
            values["model"] = str(values["models"]).split(",")[0].strip()
        settings = cls(**values)  # type: ignore[arg-type]
        return settings.validated()

    @property
    def served_models(self) -> tuple[str, ...] | None:
        """The names ``ARGUS_MODELS`` lists, or ``None``: every model in the store."""
        if self.models is None:
            return None
        return tuple(name.strip() for name in self.models.split(","))

    def validated(self) -> Settings:
        home = Path(self.home).expanduser().resolve()
        for name in ("port", "workers", "max_batch", "max_body_bytes", "retention_rows"):
            if int(getattr(self, name)) < 1:
                raise SettingsError(f"ARGUS_{name.upper()} must be >= 1")
        if self.port > 65535:
            raise SettingsError("ARGUS_PORT must be a port number from 1 to 65535")
        for name in ("input_window", "label_window", "spill_max_bytes"):
            if int(getattr(self, name)) < 0:
                raise SettingsError(f"ARGUS_{name.upper()} must be >= 0")
        if self.guard_mode not in ("off", "dry-run", "act"):
            raise SettingsError(f"ARGUS_GUARD_MODE={self.guard_mode!r} must be off, dry-run or act")
        if not self.history_seconds >= 0:
            raise SettingsError("ARGUS_HISTORY_SECONDS must be >= 0 (0 turns the history off)")
        if not self.history_retention_seconds > 0 or self.history_points < 1:
            raise SettingsError(
                "ARGUS_HISTORY_RETENTION_SECONDS must be > 0 and ARGUS_HISTORY_POINTS >= 1"
            )
        if not 0 <= self.coalesce_wait_ms <= 1000:
            raise SettingsError("ARGUS_COALESCE_WAIT_MS must be from 0 (no grouping) to 1000")
        if not self.state_busy_timeout >= 0:
            raise SettingsError("ARGUS_STATE_BUSY_TIMEOUT must be >= 0 (seconds)")
        if not self.model or ":" in self.model:
            raise SettingsError("ARGUS_MODEL must be a model name without ':'")
        served = self.served_models
        if served is not None:
            if any(not name or ":" in name for name in served):
                raise SettingsError(
                    f"ARGUS_MODELS={self.models!r} must list model names without ':', "
                    "separated by commas"
                )
            if self.model not in served:
                raise SettingsError(
                    f"ARGUS_MODEL={self.model!r} (the default model) must be one of "
                    f"ARGUS_MODELS={self.models!r}"
                )
        return Settings(**{**asdict(self), "home": home})

    def apply_bentoml_home(self) -> Path:
        """Point BentoML at this home's model store unless BENTOML_HOME is already set.

        Must run before bentoml resolves its home (it does so lazily, on first store use).
        """
        path = self.bentoml_home
        os.environ.setdefault("BENTOML_HOME", str(path))
        path.mkdir(parents=True, exist_ok=True)
        return path


def _parse(name: str, type_name: str, raw: str) -> object:
    try:
        if "Path" in type_name:
            return Path(raw)
        if type_name.startswith("bool"):
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
    except ValueError:
        raise SettingsError(
            f"ARGUS_{name.upper()}={raw!r} is not a valid {type_name.split()[0]}"
        ) from None
    return raw

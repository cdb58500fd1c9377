"""Argus's versioned model store, a thin layer over BentoML's local model store.

Each version is a BentoML model holding ``model.onnx``, ``profile.json`` (the reference
profile the monitors compare live traffic with) and ``card.json`` (the model card). The
card lists the sha256 of the other files and BentoML's metadata holds the sha256 of the
card, so ``verify`` notices a truncated or tampered file.

BentoML's version strings are not time-ordered, so versions are always sorted by
``info.creation_time``. The store has no locking of its own: writers here take a file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException, NotFound

from errors import ArgusError, ModelNotFoundError, ModelVerificationError
from models.card import CARD_FILE, MODEL_FILE, PROFILE_FILE, ModelCard, sha256_file

CARD_SHA_KEY = "argus_card_sha256"
LABELS = {"argus": "v1"}


@dataclass(frozen=True)
class StoredVersion:
    """One version in the store, with its card already read."""

    name: str
    version: str
    creation_time: datetime
    path: Path
    card: ModelCard
    card_sha256: str

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def profile_path(self) -> Path:
        return self.path / PROFILE_FILE

    def read_profile(self) -> dict[str, Any]:
        return json.loads(self.profile_path.read_text())


def _store_root() -> Path:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.bentoml_home.get())


@contextmanager
def _locked() -> Iterator[None]:
    lock_path = _store_root() / "argus-store.lock"
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _from_bento(model: bentoml.Model) -> StoredVersion:
    path = Path(model.path)
    card_path = path / CARD_FILE
    try:
        card = ModelCard.from_json(card_path.read_text())
    except FileNotFoundError:
        raise ModelVerificationError(f"{model.tag} has no {CARD_FILE}") from None
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelVerificationError(f"{model.tag}: {CARD_FILE} is unreadable ({exc})") from None
    return StoredVersion(
        name=model.tag.name,
        version=str(model.tag.version),
        creation_time=model.info.creation_time,
        path=path,
        card=card,
        card_sha256=str(model.info.metadata.get(CARD_SHA_KEY, "")),
    )


def register(name: str, onnx_bytes: bytes, card: ModelCard, profile_json: str) -> StoredVersion:
    """Add a new version of ``name``; nothing is left behind if any step fails.

    BentoML writes the version into a temporary folder and moves it into the store only
    when the ``create`` block exits cleanly.
    """
    if not name or ":" in name:
        raise ValueError(f"model name {name!r} must be non-empty and contain no ':'")
    with _locked():
        with bentoml.models.create(name, labels=dict(LABELS)) as model:
            path = Path(model.path)
            (path / MODEL_FILE).write_bytes(onnx_bytes)
            (path / PROFILE_FILE).write_text(profile_json)
            files = {f: sha256_file(path / f) for f in (MODEL_FILE, PROFILE_FILE)}
            final = replace(
                card,
                name=name,
                version=str(model.tag.version),
                created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                files=files,
            )
            text = final.to_json()
            (path / CARD_FILE).write_text(text)
            model.info.metadata[CARD_SHA_KEY] = hashlib.sha256(text.encode()).hexdigest()
            if final.accuracy is not None:
                model.info.metadata["accuracy"] = final.accuracy
            model.info.metadata["kind"] = final.kind
            tag = str(model.tag)
    return get_version(tag)


def list_versions(name: str) -> list[StoredVersion]:
    """Every version of ``name``, oldest first (by creation time, not version string)."""
    try:
        found = bentoml.models.list(name)
    except NotFound:
        return []
    versions = [_from_bento(m) for m in found if m.info.labels.get("argus") == LABELS["argus"]]
    return sorted(versions, key=lambda v: v.creation_time)


def store_marker(name: str) -> int:
    """Changes whenever a version of ``name`` is added or removed (the folder's mtime).

    Cheap to poll, unlike ``list_versions``, which parses every version's metadata.
    """
    try:
        return (_store_root() / "models" / name).stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def model_names() -> list[str]:
    """The names with at least one Argus version in the store, sorted."""
    try:
        folders = sorted(p.name for p in (_store_root() / "models").iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
    return [name for name in folders if list_versions(name)]


def names_marker() -> int:
    """Changes whenever a model name is added to or removed from the store."""
    try:
        return (_store_root() / "models").stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def newest(name: str) -> StoredVersion | None:
    versions = list_versions(name)
    return versions[-1] if versions else None


def get_version(tag_or_name: str, version: str | None = None) -> StoredVersion:
    """Look up ``name:version`` (or ``name`` and ``version`` separately)."""
    tag = tag_or_name if version is None else f"{tag_or_name}:{version}"
    if ":" not in tag:
        raise ModelNotFoundError(f"{tag!r} is not a name:version tag")
    try:
        model = bentoml.models.get(tag)
    except (NotFound, BentoMLException, ValueError):
        raise ModelNotFoundError(f"no version {tag} in the model store") from None
    if model.info.labels.get("argus") != LABELS["argus"]:
        raise ModelNotFoundError(f"{tag} is a BentoML model but not an Argus version")
    return _from_bento(model)


def verify(stored: StoredVersion) -> dict[str, str]:
    """Check every stored file against its recorded sha256; raise on any mismatch."""
    problems: list[str] = []
    card_path = stored.path / CARD_FILE
    card_sha = sha256_file(card_path)
    if not stored.card_sha256:
        problems.append(f"{CARD_FILE}: no recorded checksum")
    elif card_sha != stored.card_sha256:
        problems.append(f"{CARD_FILE}: checksum mismatch (tampered)")
    checked = {CARD_FILE: card_sha}
    for fname, expected in stored.card.files.items():
        fpath = stored.path / fname
        if not fpath.is_file():
            problems.append(f"{fname}: missing")
            continue
        actual = sha256_file(fpath)
        checked[fname] = actual
        if actual != expected:
            problems.append(f"{fname}: checksum mismatch (truncated or tampered)")
    if MODEL_FILE not in stored.card.files:
        problems.append(f"{MODEL_FILE}: not listed in the card")
    if problems:
        raise ModelVerificationError(f"{stored.tag} failed verification: " + "; ".join(problems))
    return checked


def delete(stored: StoredVersion) -> None:
    with _locked():
        bentoml.models.delete(stored.tag)


def export_version(stored: StoredVersion, dest: Path) -> Path:
    """Write ``stored`` as a ``.bentomodel`` archive; ``dest`` may be a folder or a file."""
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / f"{stored.name}-{stored.version}.bentomodel"
    if dest.suffix != ".bentomodel":
        dest = dest.with_suffix(".bentomodel")
    if not dest.parent.is_dir():
        raise ArgusError(f"export folder {dest.parent} does not exist")
    verify(stored)
    out = bentoml.models.export_model(stored.tag, str(dest))
    return Path(out)


def import_version(path: Path) -> StoredVersion:
    """Import a ``.bentomodel`` archive made by ``export_version`` and verify it.

    The archive is unpacked and checked in a scratch folder first, so a corrupt archive
    never reaches the store.
    """
    path = Path(path)
    if not path.is_file():
        raise ArgusError(f"no such file: {path}")
    from bentoml._internal.models.model import Model

    try:
        candidate = Model.import_from(str(path))
    except Exception as exc:  # BentoML raises a variety of fs and yaml errors here
        raise ModelVerificationError(f"{path} is not a BentoML model archive ({exc})") from None
    if candidate.info.labels.get("argus") != LABELS["argus"]:
        raise ModelVerificationError(f"{path} is not an Argus version")
    verify(_from_bento(candidate))
    with _locked():
        try:
            bentoml.models.get(str(candidate.tag))
            raise ArgusError(f"{candidate.tag} is already in the store")
        except NotFound:
            pass
        candidate.save(_model_store())
    return get_version(str(candidate.tag))


def archive_name(name: str, version: str) -> str:
    return f"{name}-{version}.bentomodel"


def publish_to(stored: StoredVersion, folder: Path) -> Path:
    """Export ``stored`` into the shared ``folder`` (atomically: written, then renamed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / archive_name(stored.name, stored.version)
    if final.exists():
        return final
    partial = folder / f".{final.name}"  # hidden until complete
    written = export_version(stored, partial)
    written.replace(final)
    return final


def sync_from(folder: Path, name: str) -> tuple[list[StoredVersion], list[str]]:
    """Import every version of ``name`` in the shared ``folder`` that this store lacks.

    Each archive is verified before it enters the store. Returns the imported versions
    and one message per archive that could not be imported (damaged, not Argus's), so
    one bad file never blocks the others.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ArgusError(f"model source {folder} is not a folder")
    have = {v.version for v in list_versions(name)}
    imported, problems = [], []
    for archive in sorted(folder.glob(f"{name}-*.bentomodel")):
        version = archive.name[len(name) + 1 : -len(".bentomodel")]
        if version in have or "-" in version:
            continue
        try:
            imported.append(import_version(archive))
        except ArgusError as exc:
            problems.append(f"{archive.name}: {exc}")
    return imported, problems


def _model_store() -> Any:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return BentoMLContainer.model_store.get()

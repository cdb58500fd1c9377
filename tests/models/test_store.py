"""The versioned store over BentoML's: ordering, verification, export/import, atomicity."""

from __future__ import annotations

import json
import time
from pathlib import Path

import bentoml
import pytest

from errors import ArgusError, ModelNotFoundError, ModelVerificationError
from models import store
from models.card import ModelCard


def make_card(accuracy: float = 0.9) -> ModelCard:
    return ModelCard(
        kind="external-onnx",
        input_name="input",
        output_name="probabilities",
        n_features=2,
        n_classes=2,
        feature_names=("a", "b"),
        class_names=("no", "yes"),
        data={"source": "test"},
        metrics={"accuracy": accuracy},
    )


def test_versions_are_listed_by_creation_time_not_version_string(model_name: str) -> None:
    made = []
    for i in range(4):
        made.append(store.register(model_name, b"onnx-%d" % i, make_card(0.5 + i / 10), "{}"))
        time.sleep(0.01)
    listed = store.list_versions(model_name)
    assert [v.version for v in listed] == [v.version for v in made]
    assert [v.card.accuracy for v in listed] == pytest.approx([0.5, 0.6, 0.7, 0.8])
    assert store.newest(model_name).version == made[-1].version  # type: ignore[union-attr]


def test_card_records_checksums_and_identity(model_name: str) -> None:
    v = store.register(model_name, b"model-bytes", make_card(), '{"x": 1}')
    assert v.card.name == model_name and v.card.version == v.version
    assert v.card.created_at
    assert set(v.card.files) == {"model.onnx", "profile.json"}
    assert v.read_profile() == {"x": 1}
    checked = store.verify(v)
    assert checked["model.onnx"] == v.card.files["model.onnx"]


@pytest.mark.parametrize("damage", ["truncate", "tamper", "delete", "card"])
def test_verify_reports_damaged_files(model_name: str, damage: str) -> None:
    v = store.register(model_name, b"x" * 1000, make_card(), "{}")
    if damage == "truncate":
        v.model_path.write_bytes(b"x" * 10)
    elif damage == "tamper":
        v.model_path.write_bytes(b"y" * 1000)
    elif damage == "delete":
        v.model_path.unlink()
    else:
        card = json.loads((v.path / "card.json").read_text())
        card["metrics"]["accuracy"] = 0.99
        (v.path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelVerificationError, match="failed verification"):
        store.verify(store.get_version(v.tag))


def test_unknown_versions_are_clear_errors(model_name: str) -> None:
    with pytest.raises(ModelNotFoundError, match="no version"):
        store.get_version(model_name, "nosuchversion")
    assert store.list_versions(model_name) == []
    assert store.newest(model_name) is None


def test_failed_registration_leaves_nothing_behind(model_name: str) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with bentoml.models.create(model_name, labels=dict(store.LABELS)):
            raise Boom
    assert store.list_versions(model_name) == []


def test_export_import_round_trip(model_name: str, tmp_path: Path) -> None:
    v = store.register(model_name, b"abc", make_card(), "{}")
    archive = store.export_version(v, tmp_path)
    assert archive.suffix == ".bentomodel" and archive.is_file()
    store.delete(v)
    assert store.list_versions(model_name) == []
    back = store.import_version(archive)
    assert back.version == v.version and back.card == v.card
    with pytest.raises(ArgusError, match="already in the store"):
        store.import_version(archive)


def test_import_refuses_a_corrupt_archive(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bentomodel"
    junk.write_bytes(b"not a tar file")
    with pytest.raises(ModelVerificationError):
        store.import_version(junk)


def test_publish_and_sync_through_a_shared_folder(model_name: str, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    a = store.register(model_name, b"one", make_card(0.7), "{}")
    b = store.register(model_name, b"two", make_card(0.8), "{}")
    for v in (a, b):
        assert store.publish_to(v, shared).name == f"{model_name}-{v.version}.bentomodel"
    (shared / f"{model_name}-broken.bentomodel").write_bytes(b"junk")
    assert not list(shared.glob(".*"))  # no partial files left behind
    store.delete(a)
    store.delete(b)
    imported, problems = store.sync_from(shared, model_name)
    assert sorted(v.version for v in imported) == sorted([a.version, b.version])
    assert len(problems) == 1 and "broken" in problems[0]
    assert [v.version for v in store.list_versions(model_name)] == [a.version, b.version]
    again, _ = store.sync_from(shared, model_name)
    assert again == []  # nothing left to import

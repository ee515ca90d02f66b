"""Unit tests of batch folders: URIs in the contract, local folders, fsspec's memory://."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from champion.training.config import Contract, parse_contract
from champion.training.data import intake, landing_status, load_window, pending_files
from champion.training.demo.simulate import agrawal_frame
from champion.training.errors import ConfigError
from champion.training.manifest import Manifest
from champion.training.storage import (
    Folder,
    LocalFolder,
    ObjectFolder,
    local_path,
    location,
    parse_location,
)
from tests.unit.conftest import make_contract, small_raw_contract

# --- the contract's folders --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("var/landing", Path("var/landing")),
        ("/srv/landing", Path("/srv/landing")),
        ("file:///srv/landing", Path("/srv/landing")),
        ("file://localhost/srv/my%20landing", Path("/srv/my landing")),
        ("s3://my-bucket/champion/landing/", "s3://my-bucket/champion/landing"),
        ("S3://my-bucket", "s3://my-bucket"),
    ],
)
def test_a_folder_is_a_path_or_an_s3_uri(value: str, expected: Path | str) -> None:
    """It reads plain paths and file:// URIs as paths and normalises s3:// URIs."""
    parsed = parse_location(value)
    assert parsed == expected and type(parsed) is type(expected)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("gs://bucket/landing", "unsupported scheme 'gs://'"),
        ("https://example.com/landing", "unsupported scheme 'https://'"),
        ("file://server/share/landing", "file:///path"),
        ("s3://Not_A_Bucket/landing", "not a valid S3 bucket name"),
        ("s3://bucket/a//b", "empty, '.' or '..' segment"),
        ("s3://bucket/landing?versionId=1", "no '?query'"),
    ],
)
def test_an_unsupported_folder_uri_is_a_config_error(value: str, shown: str) -> None:
    """It names the key and what is wrong with the URI."""
    raw = small_raw_contract()
    raw["data"]["landing_zone"] = value
    with pytest.raises(ConfigError) as err:
        parse_contract(raw, base=Path("/proj"))
    assert "data.landing_zone" in str(err.value) and shown in str(err.value)


def test_s3_folders_are_not_resolved_against_the_project_file() -> None:
    """It keeps URIs as given and still resolves relative paths against the project folder."""
    raw = small_raw_contract()
    raw["data"] |= {
        "landing_zone": "s3://bucket/landing",
        "quarantine": "file:///srv/quarantine",
        "store": "s3://bucket/store",
        "manifest": "var/manifest.json",
    }
    data = parse_contract(raw, base=Path("/proj")).data
    assert data.landing_zone == "s3://bucket/landing"
    assert data.store == "s3://bucket/store"
    assert data.quarantine == Path("/srv/quarantine")
    assert data.manifest == Path("/proj/var/manifest.json")


def test_the_shipped_contract_keeps_local_paths(tmp_path: Path) -> None:
    """It gives the embedded default: Path objects under the project folder."""
    data = make_contract(tmp_path).data
    for folder in (data.landing_zone, data.quarantine, data.store):
        assert isinstance(folder, Path) and folder.is_relative_to(tmp_path)
    assert isinstance(location(data.landing_zone), LocalFolder)


def test_commands_that_write_demo_data_need_a_local_landing_zone() -> None:
    assert local_path(Path("/x"), "champion simulate") == Path("/x")
    with pytest.raises(ConfigError, match="champion simulate writes into a local folder"):
        local_path("s3://bucket/landing", "champion simulate")


# --- folder behaviour, local and memory:// ------------------------------------------------


@pytest.fixture
def memory_uri() -> Iterator[str]:
    """A fresh memory:// prefix (the memory file system is one per process)."""
    uri = f"memory://champion-{uuid.uuid4().hex[:8]}"
    yield uri
    folder = location(uri)
    assert isinstance(folder, ObjectFolder)
    if folder.fs.exists(folder.root):
        folder.fs.rm(folder.root, recursive=True)


@pytest.fixture(params=["local", "memory"])
def folder(request: pytest.FixtureRequest, tmp_path: Path, memory_uri: str) -> Folder:
    return location(tmp_path / "zone" if request.param == "local" else f"{memory_uri}/zone")


def test_a_missing_folder_lists_nothing(folder: Folder) -> None:
    assert folder.list() == [] and not folder.exists("a.csv")


def test_files_are_written_listed_read_and_removed(folder: Folder) -> None:
    """It lists the files directly in the folder, by name, with their size."""
    folder.write_bytes("b.csv", b"12345")
    folder.write_text("a.csv", "abc")
    assert [(e.name, e.size) for e in folder.list()] == [("a.csv", 3), ("b.csv", 5)]
    assert folder.exists("a.csv") and folder.read_bytes("b.csv") == b"12345"
    taken = folder.read_whole("a.csv")
    assert taken is not None and taken[0] == b"abc" and taken[1] == folder.stat("a.csv")
    assert folder.sha256("a.csv") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    folder.remove("a.csv")
    folder.remove("a.csv")  # nothing there: no error
    assert [e.name for e in folder.list()] == ["b.csv"]
    with pytest.raises(FileNotFoundError):
        folder.read_bytes("a.csv")
    with pytest.raises(FileNotFoundError):
        folder.read_whole("a.csv")


def test_sub_folders_and_hidden_files_are_not_listed(folder: Folder) -> None:
    folder.write_bytes("a.csv", b"a")
    folder.write_bytes(".a.csv.tmp", b"a write in progress")
    inner = (
        location(folder.path / "inner")
        if isinstance(folder, LocalFolder)
        else location(f"{folder.url}/inner")
    )
    inner.write_bytes("b.csv", b"b")
    assert [e.name for e in folder.list()] == ["a.csv"]


def test_a_file_is_removed_only_when_unchanged(folder: Folder) -> None:
    """It keeps a file rewritten since it was read, and removes one that was not."""
    folder.write_bytes("a.csv", b"first")
    taken = folder.read_whole("a.csv")
    assert taken is not None
    folder.write_bytes("a.csv", b"second, longer")
    assert folder.remove_unchanged("a.csv", taken[1]) is False
    assert folder.read_bytes("a.csv") == b"second, longer"
    again = folder.read_whole("a.csv")
    assert again is not None
    assert folder.remove_unchanged("a.csv", again[1]) is True
    assert not folder.exists("a.csv")
    assert folder.remove_unchanged("a.csv", again[1]) is True  # already gone


def test_local_modification_times_are_the_files(tmp_path: Path) -> None:
    folder = location(tmp_path)
    folder.write_bytes("a.csv", b"a")
    os.utime(tmp_path / "a.csv", (1_000_000, 1_000_000))
    (entry,) = folder.list()
    assert entry.mtime == 1_000_000


# --- intake on a folder that is not local --------------------------------------------------


def _on(contract: Contract, uri: str) -> Contract:
    """The contract with its landing zone, quarantine and store under `uri` (any fsspec URI)."""
    data = contract.data.model_copy(
        update={
            "landing_zone": f"{uri}/landing",
            "quarantine": f"{uri}/quarantine",
            "store": f"{uri}/store",
        }
    )
    return contract.model_copy(update={"data": data})


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def test_intake_and_the_window_work_on_an_fsspec_folder(tmp_path: Path, memory_uri: str) -> None:
    """It takes in, stores, quarantines and trains from memory:// as from local folders."""
    contract = _on(make_contract(tmp_path), memory_uri)
    landing = location(contract.data.landing_zone)
    good = _csv(agrawal_frame(100, function=1, seed=1, label_noise=0.05))
    landing.write_bytes("good.csv", good)
    landing.write_bytes("bad.csv", b"salary,age\nn/a,1\n")
    landing.write_bytes("notes.txt", b"ignored")
    assert pending_files(contract.data.landing_zone) == ["bad.csv", "good.csv"]
    manifest = Manifest(contract.data.manifest)
    report = intake(contract, manifest)
    assert [r.file for r in report.accepted] == ["good.csv"]
    assert [r.file for r in report.quarantined] == ["bad.csv"]
    assert report.ignored == ("notes.txt",)
    store = location(contract.data.store)
    (stored,) = store.list()
    assert store.read_bytes(stored.name) == good
    quarantine = location(contract.data.quarantine)
    assert quarantine.read_bytes("bad.csv") == b"salary,age\nn/a,1\n"
    reason = json.loads(quarantine.read_bytes("bad.csv.reason.json"))
    assert reason["file"] == "bad.csv" and reason["reasons"]
    assert [e.name for e in landing.list()] == ["good.csv", "notes.txt"]
    assert landing_status(contract, manifest).new == ()
    window = load_window(contract, Manifest(contract.data.manifest))
    assert window.rows == 100 and window.batch_ids == (report.accepted[0].batch_id,)

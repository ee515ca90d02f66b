"""Batches on S3: landing zone, quarantine and store as s3:// URIs on a real moto server."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from champion.monitoring.capture import Captured, PredictionLog
from champion.monitoring.watch import Watch
from champion.service.root import watch_settings
from champion.training.config import Contract, Settings, parse_contract
from champion.training.data import intake, landing_status, load_window
from champion.training.demo.simulate import agrawal_frame
from champion.training.errors import DataError
from champion.training.ledger import Ledger
from champion.training.manifest import BatchStatus, Manifest
from champion.training.records import Verdict
from champion.training.storage import ObjectFolder, location
from tests.integration.conftest import make_project, project_raw
from tests.s3 import S3Server, moto_s3

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with moto_s3() as server:
        yield server


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own in the shared bucket."""
    return f"t-{uuid.uuid4().hex[:10]}"


def _data(s3: S3Server, prefix: str, tmp_path: Path, **more: Any) -> dict[str, Any]:
    return project_raw()["data"] | {
        "landing_zone": s3.uri(prefix, "landing"),
        "quarantine": s3.uri(prefix, "quarantine"),
        "store": s3.uri(prefix, "store"),
        "manifest": str(tmp_path / "manifest.json"),
        **more,
    }


def _contract(s3: S3Server, prefix: str, tmp_path: Path, **more: Any) -> Contract:
    raw = project_raw()
    raw["data"] = _data(s3, prefix, tmp_path, **more)
    return parse_contract(raw, base=tmp_path)


def _csv(seed: int, rows: int = 200, *, start: str = "2026-01-01") -> bytes:
    frame = agrawal_frame(
        rows, function=1, seed=seed, label_noise=0.05, start=pd.Timestamp(start, tz="UTC")
    )
    return frame.to_csv(index=False).encode()


def _corrupt() -> bytes:
    frame = agrawal_frame(100, function=1, seed=9, label_noise=0.05)
    frame["salary"] = frame["salary"].astype(object)
    frame.loc[2, "salary"] = "n/a!"
    return frame.to_csv(index=False).encode()


def test_batches_in_an_s3_landing_zone_are_taken_in_stored_and_trained_on(
    s3: S3Server, prefix: str, tmp_path: Path
) -> None:
    """It stores accepted batches by digest on S3, quarantines a bad one with its reasons,
    leaves unknown types, and builds the window from the S3 store."""
    contract = _contract(s3, prefix, tmp_path)
    assert contract.data.landing_zone == f"s3://champion/{prefix}/landing"
    first, second, bad = _csv(1), _csv(2, start="2026-02-01"), _corrupt()
    s3.put(f"{prefix}/landing/b1.csv", first)
    s3.put(f"{prefix}/landing/b2.csv", second)
    s3.put(f"{prefix}/landing/bad.csv", bad)
    s3.put(f"{prefix}/landing/notes.txt", b"not a batch")
    s3.put(f"{prefix}/landing/.hidden.csv", b"never looked at")
    s3.put(f"{prefix}/landing/sub/inner.csv", first)  # a sub-prefix is not the landing zone

    manifest = Manifest(contract.data.manifest)
    report = intake(contract, manifest)

    assert [r.file for r in report.accepted] == ["b1.csv", "b2.csv"]
    assert [r.file for r in report.quarantined] == ["bad.csv"]
    assert report.ignored == ("notes.txt",) and report.waiting == ()
    digests = {hashlib.sha256(first).hexdigest(), hashlib.sha256(second).hexdigest()}
    assert s3.keys(f"{prefix}/store/") == sorted(f"{prefix}/store/{d}.csv" for d in digests)
    for batch_id in manifest.accepted():
        entry = manifest.batches[batch_id]
        assert entry.stored is not None
        stored = s3.get(f"{prefix}/store/{entry.stored}")
        assert hashlib.sha256(stored).hexdigest() == entry.sha256
    # The bad batch moved to quarantine byte for byte, its reasons beside it.
    assert s3.get(f"{prefix}/quarantine/bad.csv") == bad
    reason = json.loads(s3.get(f"{prefix}/quarantine/bad.csv.reason.json"))
    assert reason["file"] == "bad.csv" and "'salary'" in reason["reasons"][0]
    (bad_report,) = report.quarantined
    assert manifest.batches[bad_report.batch_id].status is BatchStatus.QUARANTINED
    assert manifest.batches[bad_report.batch_id].quarantined_as == "bad.csv"
    # Accepted files stay in the inbox; the quarantined one is gone from it.
    assert s3.keys(f"{prefix}/landing/") == [
        f"{prefix}/landing/{n}" for n in (".hidden.csv", "b1.csv", "b2.csv", "notes.txt")
    ] + [f"{prefix}/landing/sub/inner.csv"]
    status = landing_status(contract, manifest)
    assert status.new == () and status.ignored == ("notes.txt",)
    assert intake(contract, Manifest(contract.data.manifest)).accepted == ()  # not retaken

    window = load_window(contract, Manifest(contract.data.manifest))
    assert window.rows == 400
    assert set(window.batch_ids) == {r.batch_id for r in report.accepted}


def test_a_stored_batch_altered_on_s3_is_refused(s3: S3Server, prefix: str, tmp_path: Path) -> None:
    """It checks the digest of every batch read back from the S3 store."""
    contract = _contract(s3, prefix, tmp_path)
    s3.put(f"{prefix}/landing/b1.csv", _csv(1))
    (accepted,) = intake(contract, Manifest(contract.data.manifest)).accepted
    assert load_window(contract, Manifest(contract.data.manifest)).batch_ids == (accepted.batch_id,)
    (key,) = s3.keys(f"{prefix}/store/")
    s3.put(key, _csv(5))
    with pytest.raises(DataError, match=r"stored file s3://champion/.* does not match the digest"):
        load_window(contract, Manifest(contract.data.manifest))
    s3.client.delete_object(Bucket=s3.bucket, Key=key)
    with pytest.raises(DataError, match=f"{accepted.batch_id}: its stored copy s3://.* is missing"):
        load_window(contract, Manifest(contract.data.manifest))


def test_an_object_younger_than_the_settle_time_waits(
    s3: S3Server, prefix: str, tmp_path: Path
) -> None:
    """It leaves an object whose Last-Modified is within the settle time for a later cycle."""
    contract = _contract(s3, prefix, tmp_path, settle_seconds=60)
    s3.put(f"{prefix}/landing/b1.csv", _csv(1))
    manifest = Manifest(contract.data.manifest)
    report = intake(contract, manifest)
    assert report.waiting == ("b1.csv",) and report.accepted == ()
    assert landing_status(contract, manifest).waiting == ("b1.csv",)
    later = intake(contract, manifest, now=time.time() + 120)
    assert [r.file for r in later.accepted] == ["b1.csv"] and later.waiting == ()


def test_a_quarantined_object_rewritten_meanwhile_is_kept(
    s3: S3Server, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It deletes a landing object only while its ETag is the one read (If-Match)."""
    zone = location(s3.uri(prefix, "landing"))
    assert isinstance(zone, ObjectFolder)
    s3.put(f"{prefix}/landing/a.csv", b"first")
    taken = zone.read_whole("a.csv")
    assert taken is not None and taken[0] == b"first"
    seen = taken[1]
    assert seen.version[0] == '"' + hashlib.md5(b"first").hexdigest() + '"'

    s3.put(f"{prefix}/landing/a.csv", b"other")  # same size: only the ETag tells
    assert zone.remove_unchanged("a.csv", seen) is False
    # Rewritten between the HEAD and the DELETE: the conditional delete refuses.
    monkeypatch.setattr(zone, "_head", lambda name: seen)
    assert zone.remove_unchanged("a.csv", seen) is False
    monkeypatch.undo()
    assert s3.get(f"{prefix}/landing/a.csv") == b"other"

    again = zone.read_whole("a.csv")
    assert again is not None
    assert zone.remove_unchanged("a.csv", again[1]) is True
    assert s3.keys(f"{prefix}/landing/") == []


def test_a_missing_bucket_is_an_error_not_an_empty_landing_zone(s3: S3Server) -> None:
    with pytest.raises(FileNotFoundError, match="bucket 'no-such-bucket' does not exist"):
        location("s3://no-such-bucket/landing").list()
    assert location(s3.uri("no-such-prefix")).list() == []


def test_feedback_is_exported_into_an_s3_landing_zone(
    s3: S3Server, prefix: str, tmp_path: Path
) -> None:
    """It writes labelled feedback rows as one batch object, which intake then accepts."""
    contract = _contract(s3, prefix, tmp_path)
    frame = agrawal_frame(40, function=1, seed=4, label_noise=0.05)
    plog = PredictionLog(tmp_path / "predictions.db", max_rows=10_000)
    try:
        now = time.time()
        plog.write(
            [
                Captured("r", i, now + i, "1", {f: row[f] for f in contract.features}, 1, 0.5)
                for i, row in enumerate(frame.to_dict("records"))
            ]
        )
        assert plog.label([("r", i, int(y)) for i, y in enumerate(frame[contract.target])]) == (
            [],
            [],
        )
        watch = Watch(
            contract=contract,
            config=watch_settings(Settings(home=tmp_path / "home")),
            registry=None,  # type: ignore[arg-type]  (export does not ask the registry)
            prediction_log=plog,
            ledger=Ledger(tmp_path / "home" / "ledger.jsonl"),
        )
        written = watch.export_feedback()
        assert written is not None and written.name.startswith("feedback-")
        assert s3.keys(f"{prefix}/landing/") == [f"{prefix}/landing/{written.name}"]
        assert plog.claimed() == []
    finally:
        plog.close()
    report = intake(contract, Manifest(contract.data.manifest))
    assert [r.file for r in report.accepted] == [written.name]
    assert report.accepted[0].rows == 40


def test_file_uris_work_as_local_folders(tmp_path: Path) -> None:
    """It reads file:// URIs as the local folders they name, with the local behaviour."""
    raw = project_raw()
    raw["data"] |= {
        "landing_zone": (tmp_path / "in").as_uri(),
        "quarantine": (tmp_path / "bad").as_uri(),
        "store": (tmp_path / "kept").as_uri(),
        "manifest": "manifest.json",
    }
    contract = parse_contract(raw, base=tmp_path)
    assert contract.data.landing_zone == tmp_path / "in"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "b1.csv").write_bytes(_csv(1))
    (tmp_path / "in" / "bad.csv").write_bytes(_corrupt())
    report = intake(contract, Manifest(contract.data.manifest))
    assert [r.file for r in report.accepted] == ["b1.csv"]
    assert (tmp_path / "bad" / "bad.csv").exists() and not (tmp_path / "in" / "bad.csv").exists()
    assert len(list((tmp_path / "kept").iterdir())) == 1
    assert load_window(contract, Manifest(contract.data.manifest)).rows == 200


@pytest.mark.slow
def test_a_cycle_trains_on_batches_from_s3(
    s3: S3Server, prefix: str, tmp_path: Path, template_db: Path
) -> None:
    """It runs a whole retrain cycle with the landing zone, quarantine and store on S3."""
    project = make_project(tmp_path / "proj", template_db, data=_data(s3, prefix, tmp_path))
    for i in (1, 2):
        s3.put(f"{prefix}/landing/batch-{i}.csv", _csv(i, rows=600, start=f"2026-0{i}-01"))
    result = project.cycle()
    assert result.verdict is Verdict.PROMOTE, result.reason
    manifest = Manifest(project.contract.data.manifest)
    assert len(manifest.accepted()) == 2 and manifest.unconsumed() == []
    assert len(s3.keys(f"{prefix}/store/")) == 2

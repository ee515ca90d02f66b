"""Unit tests of batch validation, landing-zone intake, the manifest and the training window."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from champion.training.checks import validate_batch
from champion.training.config import FLOAT32_MAX, Contract
from champion.training.data import BATCH_COLUMN, intake, load_window
from champion.training.demo.simulate import agrawal_frame
from champion.training.errors import DataError
from champion.training.manifest import MANIFEST_VERSION, Manifest
from tests.unit.conftest import BatchWriter, make_contract, small_raw_contract


def _frame(n: int = 100, seed: int = 1, **kwargs: object) -> pd.DataFrame:
    return agrawal_frame(n, function=1, seed=seed, label_noise=0.05, **kwargs)  # type: ignore[arg-type]


def _reasons(frame: pd.DataFrame, contract: Contract) -> tuple[str, ...]:
    clean, report = validate_batch(frame, contract)
    assert clean is None
    assert not report.accepted
    assert report.reasons
    return report.reasons


def _manifest_json(contract: Contract) -> dict[str, object]:
    body = json.loads(contract.data.manifest.read_text(encoding="utf-8"))
    assert body["version"] == MANIFEST_VERSION
    return body


# --- validate_batch ----------------------------------------------------------------------------


def test_good_batch_passes(contract: Contract) -> None:
    """It accepts a clean batch and returns the contract's columns with coerced dtypes."""
    frame = _frame()
    clean, report = validate_batch(frame, contract)
    assert report.accepted
    assert report.reasons == ()
    assert report.rows == 100
    assert clean is not None
    assert list(clean.columns) == [*contract.features, "approved", "event_time"]
    assert clean["salary"].dtype == np.float64
    assert isinstance(clean["event_time"].dtype, pd.DatetimeTZDtype)


def test_extra_columns_are_dropped(contract: Contract) -> None:
    """It keeps only declared columns, so an extra column never reaches the model."""
    frame = _frame().assign(secret_id=np.arange(100))
    clean, report = validate_batch(frame, contract)
    assert report.accepted
    assert clean is not None
    assert "secret_id" not in clean.columns


def test_out_of_domain_categories_are_counted_not_fatal(contract: Contract) -> None:
    """It counts categories outside the declared domain per column without failing the batch."""
    frame = _frame()
    frame.loc[[1, 2], "elevel"] = "e9"
    frame.loc[3, "car"] = "car99"
    clean, report = validate_batch(frame, contract)
    assert report.accepted
    assert clean is not None
    assert report.unknown_categories == {"elevel": 2, "car": 1}


def test_missing_column_is_named(contract: Contract) -> None:
    """It rejects a batch without a declared column and names the column."""
    reasons = _reasons(_frame().drop(columns=["age"]), contract)
    assert reasons == ("column 'age': missing",)


def test_every_missing_column_is_named(contract: Contract) -> None:
    """It names every missing column, not only a sample of them."""
    frame = _frame().drop(columns=["age", "car", "loan", "approved"])
    reasons = _reasons(frame, contract)
    for name in ("age", "car", "loan", "approved"):
        assert f"column '{name}': missing" in reasons


def test_text_in_numeric_column_is_named(contract: Contract) -> None:
    """It rejects text in a numeric column, naming the column and the offending value."""
    frame = _frame()
    frame["salary"] = frame["salary"].astype(object)
    frame.loc[5, "salary"] = "lots"
    (reason,) = _reasons(frame, contract)
    assert "'salary'" in reason
    assert "wrong type" in reason
    assert "lots" in reason


def test_missing_target_values_are_rejected(contract: Contract) -> None:
    """It rejects a batch whose target has missing values."""
    frame = _frame()
    frame["approved"] = frame["approved"].astype(float)
    frame.loc[5, "approved"] = np.nan
    assert _reasons(frame, contract) == ("column 'approved': target has missing values",)


def test_single_class_batch_is_accepted(contract: Contract) -> None:
    """It accepts a batch holding one class only: the window, not the batch, needs two."""
    clean, report = validate_batch(_frame().assign(approved=1), contract)
    assert report.accepted, report.reasons
    assert clean is not None
    assert report.classes == (1,)


def test_null_rate_over_the_bound_is_named(contract: Contract) -> None:
    """It rejects a column whose null rate exceeds max_null_rate and names the column."""
    frame = _frame()
    frame.loc[:24, "loan"] = np.nan  # 25 % > 20 %
    frame.loc[:24, "zipcode"] = None
    frame.loc[:9, "hvalue"] = np.nan  # 10 % is tolerated
    reasons = _reasons(frame, contract)
    assert reasons == (
        "column 'loan': null rate above 20%",
        "column 'zipcode': null rate above 20%",
    )


def test_non_nullable_feature_rejects_any_null(tmp_path: Path) -> None:
    """It rejects a single missing value in a feature declared `nullable = false`."""
    raw = small_raw_contract()
    raw["features"]["age"]["nullable"] = False
    contract = make_contract(tmp_path, raw)
    frame = _frame()
    frame.loc[0, "age"] = np.nan
    assert _reasons(frame, contract) == ("column 'age': null rate above 0%",)


def test_too_few_rows_are_rejected(contract: Contract) -> None:
    """It rejects a batch with fewer rows than data.min_rows and says how many it has."""
    reasons = _reasons(_frame(19), contract)
    assert reasons == ("only 19 rows; at least 20 needed",)
    assert validate_batch(_frame(20), contract)[1].accepted


def test_too_many_duplicates_are_rejected(contract: Contract) -> None:
    """It rejects a batch with more than max_duplicate_rate fully duplicated rows."""
    base = _frame(30)
    frame = pd.concat([base, base, base], ignore_index=True)
    (reason,) = _reasons(frame, contract)
    assert "60 of 90 rows are duplicates" in reason


def test_tolerated_duplicates_are_dropped(contract: Contract) -> None:
    """It drops tolerated duplicate rows and reports how many."""
    base = _frame(80)
    frame = pd.concat([base, base.head(20)], ignore_index=True)
    clean, report = validate_batch(frame, contract)
    assert report.accepted
    assert report.duplicates_dropped == 20
    assert clean is not None
    assert len(clean) == 80


def test_bad_timestamp_is_rejected(contract: Contract) -> None:
    """It rejects a batch whose timestamp column cannot be read as a time."""
    frame = _frame()
    frame["event_time"] = frame["event_time"].astype(str)
    frame.loc[3, "event_time"] = "yesterday-ish"
    reasons = _reasons(frame, contract)
    assert any("'event_time'" in r for r in reasons)


# --- intake ------------------------------------------------------------------------------------


def _corrupt_frame() -> pd.DataFrame:
    frame = _frame(seed=2)
    frame["salary"] = frame["salary"].astype(object)
    frame.loc[2, "salary"] = "n/a!"
    return frame


def test_corrupt_batch_is_quarantined_unchanged_with_reason(
    contract: Contract, write_batch: BatchWriter
) -> None:
    """It moves a corrupt batch byte-for-byte to quarantine with a reason file beside it."""
    path = write_batch(_corrupt_frame(), "bad")
    content = path.read_bytes()
    report = intake(contract, Manifest(contract.data.manifest))
    assert report.accepted == ()
    (bad,) = report.quarantined
    assert not path.exists()
    moved = contract.data.quarantine / "bad.csv"
    assert moved.read_bytes() == content
    reason = json.loads((contract.data.quarantine / "bad.csv.reason.json").read_text())
    assert reason["file"] == "bad.csv"
    assert reason["batch_id"] == bad.batch_id
    assert len(reason["reasons"]) == 1
    assert "'salary'" in reason["reasons"][0]
    entry = _manifest_json(contract)["batches"][bad.batch_id]  # type: ignore[index]
    assert entry["status"] == "quarantined"
    assert entry["reasons"] == reason["reasons"]


def test_unreadable_batch_is_quarantined(contract: Contract, write_batch: BatchWriter) -> None:
    """It quarantines a file that is not a readable table, without raising."""
    path = contract.data.landing_zone / "junk.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not parquet at all")
    report = intake(contract, Manifest(contract.data.manifest))
    (bad,) = report.quarantined
    assert bad.reasons[0].startswith("unreadable:")
    assert (contract.data.quarantine / "junk.parquet").read_bytes() == b"not parquet at all"


@pytest.mark.parametrize(("sep", "shown"), [(";", "`;`"), ("\t", "tab"), ("|", "`|`")])
def test_a_batch_with_another_delimiter_gets_one_hint_not_every_column_missing(
    contract: Contract, sep: str, shown: str
) -> None:
    """It quarantines a `;`-, tab- or `|`-separated CSV saying so, in place of N missing columns."""
    path = contract.data.landing_zone / "semicolons.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    _frame().to_csv(path, index=False, sep=sep)
    report = intake(contract, Manifest(contract.data.manifest))
    (bad,) = report.quarantined
    (reason,) = bad.reasons
    assert reason.startswith(f"the header looks {shown}-separated (")
    assert repr(f"salary{sep}commission")[:-1] in reason  # the header as read
    assert reason.endswith(": batches must be comma-separated CSV")
    reason_file = contract.data.quarantine / "semicolons.csv.reason.json"
    assert json.loads(reason_file.read_text())["reasons"] == [reason]


def test_a_missing_column_in_a_comma_separated_file_gets_no_delimiter_hint(
    contract: Contract,
) -> None:
    """It names the missing column of a comma CSV whose column names hold a `|`, no hint."""
    frame = _frame().drop(columns=["age"]).rename(columns={"loan": "loan|amount"})
    reasons = _reasons(frame, contract)
    assert reasons == ("column 'age': missing", "column 'loan': missing")


def test_valid_batches_are_accepted_into_the_manifest(
    contract: Contract, write_batch: BatchWriter
) -> None:
    """It accepts valid batches, leaves them in place and records them in the manifest."""
    first = write_batch(_frame(seed=1), "b1")
    write_batch(_frame(seed=3), "b2")
    write_batch(_corrupt_frame(), "b3")
    manifest = Manifest(contract.data.manifest)
    report = intake(contract, manifest)
    assert [r.file for r in report.accepted] == ["b1.csv", "b2.csv"]
    assert [r.file for r in report.quarantined] == ["b3.csv"]
    assert first.exists()
    body = _manifest_json(contract)
    batches = body["batches"]
    assert isinstance(batches, dict)
    accepted = {k for k, v in batches.items() if v["status"] == "accepted"}
    assert accepted == {r.batch_id for r in report.accepted}
    for batch_id in accepted:
        assert batches[batch_id]["consumed_by"] is None
        assert batches[batch_id]["usable_rows"] == 100
    assert Manifest(contract.data.manifest).accepted() == sorted(accepted)


def test_second_intake_does_not_retake_a_batch(
    contract: Contract, write_batch: BatchWriter
) -> None:
    """It skips batches it already accepted when intake runs again."""
    path = write_batch(_frame(), "b1")
    intake(contract, Manifest(contract.data.manifest))
    before = _manifest_json(contract)
    again = intake(contract, Manifest(contract.data.manifest))
    assert again.accepted == ()
    assert again.quarantined == ()
    assert path.exists()
    assert _manifest_json(contract) == before


def test_same_content_under_another_name_is_quarantined_as_duplicate(
    contract: Contract, write_batch: BatchWriter
) -> None:
    """It quarantines a re-dropped batch with known content, naming the original batch."""
    first = write_batch(_frame(), "b1")
    (taken,) = intake(contract, Manifest(contract.data.manifest)).accepted
    copy = contract.data.landing_zone / "b1-again.csv"
    copy.write_bytes(first.read_bytes())
    report = intake(contract, Manifest(contract.data.manifest))
    assert report.accepted == ()
    (dup,) = report.quarantined
    assert taken.batch_id in dup.reasons[0]
    assert "same content" in dup.reasons[0]
    assert (contract.data.quarantine / "b1-again.csv").read_bytes() == first.read_bytes()
    assert first.exists()
    assert Manifest(contract.data.manifest).accepted() == [taken.batch_id]


def test_quarantined_batch_can_be_retaken_after_the_contract_is_relaxed(
    tmp_path: Path,
) -> None:
    """It takes in a once-quarantined batch moved back after the contract was fixed."""
    strict = make_contract(tmp_path)
    _drop(strict, _frame(15), "small")
    (bad,) = intake(strict, Manifest(strict.data.manifest)).quarantined
    assert bad.reasons == ("only 15 rows; at least 20 needed",)
    raw = small_raw_contract()
    raw["data"]["min_rows"] = 10
    relaxed = make_contract(tmp_path, raw)
    (strict.data.quarantine / "small.csv").rename(relaxed.data.landing_zone / "small.csv")
    report = intake(relaxed, Manifest(relaxed.data.manifest))
    # A quarantined batch was never taken in, so its content is not a duplicate of anything.
    assert [q.reasons for q in report.quarantined] == []
    assert [r.file for r in report.accepted] == ["small.csv"]


def test_quarantine_never_overwrites_an_earlier_quarantined_file(
    contract: Contract, write_batch: BatchWriter
) -> None:
    """It keeps both files when two different bad batches share a name."""
    write_batch(_corrupt_frame(), "bad")
    intake(contract, Manifest(contract.data.manifest))
    second = _corrupt_frame().head(10)
    write_batch(second, "bad")
    intake(contract, Manifest(contract.data.manifest))
    files = sorted(p.name for p in contract.data.quarantine.iterdir())
    data_files = [f for f in files if f.endswith(".csv")]
    reasons = [f for f in files if f.endswith(".reason.json")]
    assert len(data_files) == 2
    assert len(reasons) == 2


def test_manifest_is_valid_json_after_each_step(
    contract: Contract, write_batch: BatchWriter
) -> None:
    """It leaves a parseable manifest, and no temp files, after intake and after consumption."""
    write_batch(_frame(seed=1), "b1")
    write_batch(_corrupt_frame(), "b2")
    manifest = Manifest(contract.data.manifest)
    intake(contract, manifest)
    assert len(_manifest_json(contract)["batches"]) == 2  # type: ignore[arg-type]
    write_batch(_frame(seed=4), "b3")
    intake(contract, manifest)
    assert len(_manifest_json(contract)["batches"]) == 3  # type: ignore[arg-type]
    manifest.mark_consumed(manifest.accepted(), "run-1")
    body = _manifest_json(contract)
    assert all(
        e["consumed_by"] == "run-1"
        for e in body["batches"].values()  # type: ignore[attr-defined]
        if e["status"] == "accepted"
    )
    leftovers = [p.name for p in contract.data.manifest.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_manifest_with_wrong_version_is_rejected(contract: Contract) -> None:
    """It refuses a manifest written by another format version."""
    contract.data.manifest.parent.mkdir(parents=True, exist_ok=True)
    contract.data.manifest.write_text(json.dumps({"version": 99, "batches": {}}))
    with pytest.raises(DataError, match="version 99"):
        Manifest(contract.data.manifest)


def test_manifest_that_is_not_json_is_rejected(contract: Contract) -> None:
    """It refuses a manifest that is not valid JSON with a DataError, not a crash."""
    contract.data.manifest.parent.mkdir(parents=True, exist_ok=True)
    contract.data.manifest.write_text('{"version": 1, "batches": {')
    with pytest.raises(DataError, match="not valid JSON"):
        Manifest(contract.data.manifest)


# --- load_window -------------------------------------------------------------------------------


def _window_contract(tmp_path: Path, **window: int) -> Contract:
    raw = small_raw_contract()
    raw["window"] = window
    return make_contract(tmp_path, raw)


def _drop(contract: Contract, frame: pd.DataFrame, name: str) -> Path:
    zone = contract.data.landing_zone
    zone.mkdir(parents=True, exist_ok=True)
    path = zone / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


def test_window_keeps_the_most_recent_max_rows(tmp_path: Path) -> None:
    """It keeps only the newest max_rows rows, in time order, and lists their batches."""
    contract = _window_contract(tmp_path, max_rows=150)
    _drop(contract, _frame(100, seed=1, start=datetime(2026, 1, 1, tzinfo=UTC)), "old")
    _drop(contract, _frame(100, seed=2, start=datetime(2026, 2, 1, tzinfo=UTC)), "new")
    manifest = Manifest(contract.data.manifest)
    report = intake(contract, manifest)
    ids = {r.file: r.batch_id for r in report.accepted}
    data = load_window(contract, manifest)
    assert data.rows == 150
    assert data.frame["event_time"].is_monotonic_increasing
    assert (data.frame[BATCH_COLUMN] == ids["old.csv"]).sum() == 50
    assert data.frame["event_time"].min() > pd.Timestamp("2026-01-01T00:45Z")
    assert set(data.batch_ids) == {ids["old.csv"], ids["new.csv"]}
    assert set(data.new_batch_ids) == set(data.batch_ids)


def test_window_drops_rows_older_than_max_days(tmp_path: Path) -> None:
    """It drops batches older than max_days before the newest row, and does not report them."""
    contract = _window_contract(tmp_path, max_days=30)
    _drop(contract, _frame(60, seed=1, start=datetime(2025, 1, 1, tzinfo=UTC)), "ancient")
    _drop(contract, _frame(60, seed=2, start=datetime(2026, 3, 1, tzinfo=UTC)), "recent")
    manifest = Manifest(contract.data.manifest)
    report = intake(contract, manifest)
    ids = {r.file: r.batch_id for r in report.accepted}
    data = load_window(contract, manifest)
    assert data.rows == 60
    assert data.batch_ids == (ids["recent.csv"],)
    assert data.new_batch_ids == (ids["recent.csv"],)
    assert data.frame["event_time"].min() >= pd.Timestamp("2026-03-01T00:00Z")


def test_consumed_batches_are_not_new(tmp_path: Path) -> None:
    """It reports a batch as new until mark_consumed records a run for it, also after reload."""
    contract = _window_contract(tmp_path, max_rows=1000)
    _drop(contract, _frame(50, seed=1, start=datetime(2026, 1, 1, tzinfo=UTC)), "b1")
    manifest = Manifest(contract.data.manifest)
    intake(contract, manifest)
    first = load_window(contract, manifest)
    assert len(first.new_batch_ids) == 1
    manifest.mark_consumed(first.new_batch_ids, "run-1")
    _drop(contract, _frame(50, seed=2, start=datetime(2026, 1, 2, tzinfo=UTC)), "b2")
    reloaded = Manifest(contract.data.manifest)
    (b2,) = intake(contract, reloaded).accepted
    second = load_window(contract, reloaded)
    assert len(second.batch_ids) == 2
    assert second.new_batch_ids == (b2.batch_id,)
    assert second.rows == 100


def test_empty_manifest_gives_an_empty_window(contract: Contract) -> None:
    """It returns an empty window when no batch was ever accepted."""
    data = load_window(contract, Manifest(contract.data.manifest))
    assert data.rows == 0
    assert data.batch_ids == ()
    assert data.new_batch_ids == ()


# --- the batch store ---------------------------------------------------------------------------


def _accept(contract: Contract, path: Path) -> str:
    """Take the landing zone in and return the batch id accepted from `path`."""
    report = intake(contract, Manifest(contract.data.manifest))
    (taken,) = [r for r in report.accepted if r.file == path.name]
    return taken.batch_id


def test_accepted_batch_is_stored_under_its_digest(
    contract: Contract, write_batch: BatchWriter
) -> None:
    """It writes the exact bytes it judged into the store, named by their SHA-256."""
    path = write_batch(_frame(), "b1")
    content = path.read_bytes()
    batch_id = _accept(contract, path)
    entry = Manifest(contract.data.manifest).batches[batch_id]
    digest = hashlib.sha256(content).hexdigest()
    assert entry.sha256 == digest
    assert entry.stored == f"{digest}.csv"
    assert (contract.data.store / entry.stored).read_bytes() == content
    assert batch_id == f"b1-{digest[:12]}"
    leftovers = [p.name for p in contract.data.store.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_overwritten_accepted_file_is_a_new_batch(
    contract: Contract, write_batch: BatchWriter
) -> None:
    """It keeps training on the old content and takes the new content in as another batch."""
    path = write_batch(_frame(seed=1), "b1")
    first = _accept(contract, path)
    write_batch(_frame(seed=5), "b1")  # same name, new content
    manifest = Manifest(contract.data.manifest)
    (second,) = intake(contract, manifest).accepted
    assert second.batch_id != first
    assert second.file == "b1.csv"
    data = load_window(contract, manifest)
    assert set(data.batch_ids) == {first, second.batch_id}
    assert data.rows == 200
    assert manifest.batches[first].status == "accepted"


def test_deleted_landing_file_leaves_the_window_unchanged(
    contract: Contract, write_batch: BatchWriter
) -> None:
    """It reads accepted batches from the store, so deleting the landing file changes nothing."""
    path = write_batch(_frame(), "b1")
    batch_id = _accept(contract, path)
    manifest = Manifest(contract.data.manifest)
    before = load_window(contract, manifest)
    path.unlink()
    after = load_window(contract, Manifest(contract.data.manifest))
    assert after.batch_ids == before.batch_ids == (batch_id,)
    pd.testing.assert_frame_equal(after.frame, before.frame)


def test_renamed_landing_file_is_not_taken_in_twice(
    contract: Contract, write_batch: BatchWriter
) -> None:
    """It quarantines a renamed accepted file as a duplicate; the window keeps one copy."""
    path = write_batch(_frame(), "b1")
    batch_id = _accept(contract, path)
    path.rename(path.with_name("renamed.csv"))
    manifest = Manifest(contract.data.manifest)
    report = intake(contract, manifest)
    (dup,) = report.quarantined
    assert batch_id in dup.reasons[0]
    assert load_window(contract, manifest).batch_ids == (batch_id,)


def test_tampered_stored_file_is_refused(contract: Contract, write_batch: BatchWriter) -> None:
    """It raises DataError naming the stored file when its bytes no longer match the digest."""
    path = write_batch(_frame(), "b1")
    batch_id = _accept(contract, path)
    manifest = Manifest(contract.data.manifest)
    stored = contract.data.store / manifest.batches[batch_id].stored
    altered = _frame()
    altered["salary"] = altered["salary"] + 1.0  # still a valid batch, but not the one taken in
    altered.to_csv(stored, index=False)
    with pytest.raises(DataError, match="does not match the digest") as caught:
        load_window(contract, manifest)
    assert batch_id in str(caught.value) and stored.name in str(caught.value)


def test_missing_stored_file_is_refused(contract: Contract, write_batch: BatchWriter) -> None:
    """It raises DataError naming the batch when its stored copy has disappeared."""
    path = write_batch(_frame(), "b1")
    batch_id = _accept(contract, path)
    manifest = Manifest(contract.data.manifest)
    (contract.data.store / manifest.batches[batch_id].stored).unlink()
    with pytest.raises(DataError, match="missing") as caught:
        load_window(contract, manifest)
    assert batch_id in str(caught.value)


def _as_legacy(contract: Contract) -> None:
    """Rewrite the manifest as a version without the store and the classes wrote it."""
    body = json.loads(contract.data.manifest.read_text(encoding="utf-8"))
    for entry in body["batches"].values():
        entry.pop("stored", None)
    body.pop("classes")
    contract.data.manifest.write_text(json.dumps(body), encoding="utf-8")
    for stored in contract.data.store.iterdir():
        stored.unlink()


def test_legacy_batch_is_copied_into_the_store_on_first_use(
    contract: Contract, write_batch: BatchWriter
) -> None:
    """It copies a batch accepted before the store existed, when its file still matches."""
    path = write_batch(_frame(), "b1")
    batch_id = _accept(contract, path)
    _as_legacy(contract)
    data = load_window(contract, Manifest(contract.data.manifest))
    assert data.batch_ids == (batch_id,)
    entry = Manifest(contract.data.manifest).batches[batch_id]
    assert (contract.data.store / entry.stored).read_bytes() == path.read_bytes()
    path.unlink()
    assert load_window(contract, Manifest(contract.data.manifest)).batch_ids == (batch_id,)


@pytest.mark.parametrize("change", ["rewrite", "delete"])
def test_legacy_batch_whose_file_changed_must_be_retired(
    contract: Contract, write_batch: BatchWriter, change: str
) -> None:
    """It raises DataError naming the batch and the retire command when the file is gone."""
    path = write_batch(_frame(), "b1")
    batch_id = _accept(contract, path)
    _as_legacy(contract)
    if change == "delete":
        path.unlink()
    else:
        write_batch(_frame(seed=9), "b1")
    with pytest.raises(DataError, match="champion batches retire") as caught:
        load_window(contract, Manifest(contract.data.manifest))
    assert batch_id in str(caught.value)


# --- settle time and file types ----------------------------------------------------------------


def _settling(contract: Contract, seconds: float) -> Contract:
    data = contract.data.model_copy(update={"settle_seconds": seconds})
    return contract.model_copy(update={"data": data})


def test_file_younger_than_the_settle_time_is_left_for_later(
    contract: Contract, write_batch: BatchWriter
) -> None:
    """It leaves a just-written file in the landing zone, reports it waiting, takes it later."""
    slow = _settling(contract, 60)
    old = write_batch(_frame(seed=1), "old")
    past = time.time() - 120
    os.utime(old, (past, past))
    fresh = write_batch(_frame(seed=2), "fresh")
    manifest = Manifest(slow.data.manifest)
    report = intake(slow, manifest)
    assert [r.file for r in report.accepted] == ["old.csv"]
    assert report.waiting == ("fresh.csv",)
    assert fresh.exists()
    assert all(e.file != "fresh.csv" for e in manifest.batches.values())
    later = intake(slow, manifest, now=time.time() + 61)
    assert [r.file for r in later.accepted] == ["fresh.csv"]
    assert later.waiting == ()


def test_batch_file_types_are_matched_case_insensitively(contract: Contract) -> None:
    """It reads .CSV, .Csv.GZ and .parquet files and reports other files as ignored."""
    zone = contract.data.landing_zone
    zone.mkdir(parents=True)
    _frame(seed=1).to_csv(zone / "upper.CSV", index=False)
    _frame(seed=2).to_csv(zone / "daily.Csv.GZ", index=False, compression="gzip")
    _frame(seed=3).to_parquet(zone / "columnar.parquet", index=False)
    (zone / "notes.txt").write_text("not a batch")
    (zone / ".hidden.csv").write_text("x")
    (zone / "download.csv.part").write_text("x")
    manifest = Manifest(contract.data.manifest)
    report = intake(contract, manifest)
    assert sorted(r.file for r in report.accepted) == [
        "columnar.parquet",
        "daily.Csv.GZ",
        "upper.CSV",
    ]
    assert report.quarantined == ()
    assert report.ignored == ("notes.txt",)
    assert (zone / "notes.txt").exists()
    stored = sorted(e.stored[64:] for e in manifest.batches.values())
    assert stored == [".csv", ".csv.gz", ".parquet"]
    ids = {r.file: r.batch_id for r in report.accepted}
    assert ids["daily.Csv.GZ"].startswith("daily-")
    assert load_window(contract, manifest).rows == 300


def test_unknown_file_types_are_logged_by_name(
    contract: Contract, caplog: pytest.LogCaptureFixture
) -> None:
    """It warns about files it does not read, naming them and the types it does read."""
    zone = contract.data.landing_zone
    zone.mkdir(parents=True)
    (zone / "notes.txt").write_text("not a batch")
    with caplog.at_level(logging.WARNING, logger="champion.training.data"):
        intake(contract, Manifest(contract.data.manifest))
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert record.files == ["notes.txt"]  # type: ignore[attr-defined]
    assert ".csv.gz" in record.accepted_types  # type: ignore[attr-defined]


# --- typed targets -----------------------------------------------------------------------------


def _with_target(values: list[object], n: int = 100) -> pd.DataFrame:
    frame = _frame(n)
    frame["approved"] = pd.Series([values[i % len(values)] for i in range(n)], dtype=object)
    return frame


@pytest.mark.parametrize(
    ("bad", "shown"),
    [(True, "True"), ("1", "'1'"), (1.5, "1.5"), ("yes", "'yes'")],
)
def test_integer_classes_refuse_other_types(contract: Contract, bad: object, shown: str) -> None:
    """It refuses a target value that is not an integer among the declared classes."""
    (reason,) = _reasons(_with_target([0, 1, bad]), contract)
    assert reason == (
        f"column 'approved': values [{shown}] are not among the declared classes [0, 1]"
    )


def test_integer_classes_refuse_a_boolean_column(
    contract: Contract, write_batch: BatchWriter
) -> None:
    """It quarantines a CSV whose target reads as booleans, naming the values and classes."""
    write_batch(_frame().assign(approved=lambda f: f["approved"] == 1), "bools")
    (bad,) = intake(contract, Manifest(contract.data.manifest)).quarantined
    assert bad.reasons == (
        "column 'approved': values [False, True] are not among the declared classes [0, 1]",
    )


def test_integer_classes_name_text_values(contract: Contract, write_batch: BatchWriter) -> None:
    """It names the values of a CSV target that reads as text, as text."""
    frame = _frame().assign(approved=lambda f: f["approved"].map({0: "0", 1: "True"}))
    write_batch(frame, "texts")
    (bad,) = intake(contract, Manifest(contract.data.manifest)).quarantined
    assert bad.reasons == (
        "column 'approved': values ['0', 'True'] are not among the declared classes [0, 1]",
    )


def test_integer_classes_give_an_int64_target(contract: Contract) -> None:
    """It accepts integer-valued numbers and hands the target on as int64."""
    clean, report = validate_batch(_with_target([0.0, 1.0]), contract)
    assert report.accepted, report.reasons
    assert clean is not None
    assert clean["approved"].dtype == np.int64


def _text_classes(tmp_path: Path, classes: list[str]) -> Contract:
    raw = small_raw_contract()
    raw["classes"] = classes
    return make_contract(tmp_path, raw)


def test_text_classes_are_compared_exactly(tmp_path: Path) -> None:
    """It accepts No/Yes against classes ["No", "Yes"] and refuses no/yes (case matters)."""
    contract = _text_classes(tmp_path, ["No", "Yes"])
    good = _drop(
        contract,
        _frame(seed=1).assign(approved=lambda f: f["approved"].map({0: "No", 1: "Yes"})),
        "good",
    )
    _drop(
        contract,
        _frame(seed=2).assign(approved=lambda f: f["approved"].map({0: "no", 1: "yes"})),
        "lower",
    )
    manifest = Manifest(contract.data.manifest)
    report = intake(contract, manifest)
    assert [r.file for r in report.accepted] == [good.name]
    (bad,) = report.quarantined
    assert bad.reasons == (
        "column 'approved': values ['no', 'yes'] are not among the declared classes ['No', 'Yes']",
    )
    target = load_window(contract, manifest).frame["approved"]
    assert set(target) == {"No", "Yes"}
    assert all(isinstance(v, str) for v in target)


def test_text_classes_read_the_target_as_text(tmp_path: Path) -> None:
    """It keeps "01" as "01" in a CSV target when the classes are strings."""
    contract = _text_classes(tmp_path, ["01", "10"])
    _drop(contract, _frame().assign(approved=lambda f: f["approved"].map({0: "01", 1: "10"})), "b")
    manifest = Manifest(contract.data.manifest)
    (taken,) = intake(contract, manifest).accepted
    assert set(load_window(contract, manifest).frame["approved"]) == {"01", "10"}
    assert set(taken.classes) == {"01", "10"}


def _undeclared(tmp_path: Path) -> Contract:
    raw = small_raw_contract()
    del raw["classes"]
    return make_contract(tmp_path, raw)


def test_undeclared_classes_are_locked_after_the_first_batch(tmp_path: Path) -> None:
    """It records the classes of the first batch and refuses a later batch with a new one."""
    contract = _undeclared(tmp_path)
    _drop(contract, _frame(seed=1), "first")
    manifest = Manifest(contract.data.manifest)
    assert len(intake(contract, manifest).accepted) == 1
    assert _manifest_json(contract)["classes"] == [0, 1]
    _drop(contract, _frame(seed=2).assign(approved=lambda f: f["approved"].replace(1, 2)), "new")
    _drop(
        contract,
        _frame(seed=3).assign(approved=lambda f: f["approved"].map({0: "no", 1: "yes"})),
        "text",
    )
    _drop(contract, _frame(seed=4).assign(approved=1), "same")
    report = intake(contract, Manifest(contract.data.manifest))
    assert [r.file for r in report.accepted] == ["same.csv"]
    reasons = {r.file: r.reasons for r in report.quarantined}
    (new,) = reasons["new.csv"]
    assert new.startswith("column 'approved': values [2] are not among the classes")
    assert "declare every class in champion.toml" in new
    assert "values ['no', 'yes']" in reasons["text.csv"][0]
    assert _manifest_json(contract)["classes"] == [0, 1]


def test_legacy_manifest_learns_its_classes_from_the_accepted_batches(tmp_path: Path) -> None:
    """It derives the locked classes from accepted batches when the manifest has none."""
    contract = _undeclared(tmp_path)
    _drop(contract, _frame(seed=1), "first")
    intake(contract, Manifest(contract.data.manifest))
    _as_legacy(contract)
    assert Manifest(contract.data.manifest).classes is None
    _drop(contract, _frame(seed=2).assign(approved=lambda f: f["approved"].replace(1, 2)), "new")
    (bad,) = intake(contract, Manifest(contract.data.manifest)).quarantined
    assert "values [2]" in bad.reasons[0]
    assert _manifest_json(contract)["classes"] == [0, 1]


def _regression(tmp_path: Path) -> Contract:
    raw = small_raw_contract()
    del raw["classes"]
    raw["task"] = "regression"
    raw["metrics"] = {"primary": "rmse", "guardrails": {}}
    raw["search"]["families"] = ["linear"]
    raw["search"]["space"] = {}
    return make_contract(tmp_path, raw)


@pytest.mark.parametrize(("bad", "shown"), [(True, "True"), ("abc", "'abc'")])
def test_regression_target_must_be_numbers(tmp_path: Path, bad: object, shown: str) -> None:
    """It refuses booleans and text in a regression target, naming them."""
    contract = _regression(tmp_path)
    (reason,) = _reasons(_with_target([0.5, 2, bad]), contract)
    assert reason == f"column 'approved': values [{shown}] are not numbers"
    frame = _frame().assign(approved=lambda f: f["approved"] == 1)
    assert _reasons(frame, contract) == ("column 'approved': values [False, True] are not numbers",)
    clean, report = validate_batch(_with_target([0.5, 2]), contract)
    assert report.accepted and clean is not None
    assert clean["approved"].dtype == np.float64


# --- numeric range -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1e300, -1e39, np.inf])
def test_values_beyond_float32_are_refused(contract: Contract, value: float) -> None:
    """It refuses a numeric value beyond the 32-bit float range, naming column and value."""
    frame = _frame()
    frame.loc[7, "salary"] = value
    (reason,) = _reasons(frame, contract)
    assert reason.startswith("column 'salary': 1 values beyond the 32-bit float range")
    assert repr(float(value)) in reason
    frame.loc[7, "salary"] = 3.0e38  # inside the range
    assert validate_batch(frame, contract)[1].accepted


def test_float32_limit_is_numpys() -> None:
    """It uses float32's own maximum, the number serving checks against too."""
    assert float(np.finfo(np.float32).max) == FLOAT32_MAX


# --- retiring ----------------------------------------------------------------------------------


def test_retired_batch_leaves_the_window_and_is_not_taken_in_again(
    contract: Contract, write_batch: BatchWriter
) -> None:
    """It drops a retired batch from the window, keeps its stored file, and never retakes it."""
    keep = write_batch(_frame(seed=1), "keep")
    drop = write_batch(_frame(seed=2), "drop")
    manifest = Manifest(contract.data.manifest)
    ids = {r.file: r.batch_id for r in intake(contract, manifest).accepted}
    manifest.retire(ids[drop.name], reason="labels were wrong", who="tester")
    reloaded = Manifest(contract.data.manifest)
    assert reloaded.accepted() == [ids[keep.name]]
    entry = reloaded.batches[ids[drop.name]]
    assert entry.status == "retired" and entry.retired_reason == "labels were wrong"
    assert (contract.data.store / entry.stored).exists()
    assert load_window(contract, reloaded).batch_ids == (ids[keep.name],)
    assert intake(contract, reloaded).accepted == ()
    copy = drop.with_name("drop-again.csv")
    copy.write_bytes(drop.read_bytes())
    (dup,) = intake(contract, reloaded).quarantined
    assert "retired" in dup.reasons[0]
    with pytest.raises(DataError, match="not accepted"):
        reloaded.retire(ids[drop.name], reason="again", who="tester")
    with pytest.raises(DataError, match="no batch 'nope'"):
        reloaded.retire("nope", reason="x", who="tester")

"""Unit tests of batch validation, landing-zone intake, the manifest and the training window."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.unit.conftest import BatchWriter, make_contract, small_raw_contract
from training.config import Contract
from training.data import (
    BATCH_COLUMN,
    MANIFEST_VERSION,
    Manifest,
    intake,
    load_window,
    validate_batch,
)
from training.errors import DataError
from training.simulate import agrawal_frame


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


def test_single_class_target_is_rejected(contract: Contract) -> None:
    """It rejects a classification batch whose target has a single class."""
    frame = _frame().assign(approved=1)
    assert _reasons(frame, contract) == ("column 'approved': target has a single class",)


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


def test_window_refuses_a_batch_modified_after_intake(
    contract: Contract, write_batch: BatchWriter
) -> None:
    """It raises DataError when an accepted batch file changed after it was taken in."""
    path = write_batch(_frame(), "b1")
    manifest = Manifest(contract.data.manifest)
    intake(contract, manifest)
    altered = _frame()
    altered["salary"] = altered["salary"] + 1.0  # still a valid batch, but not the one taken in
    altered.to_csv(path, index=False)
    with pytest.raises(DataError, match="changed after intake"):
        load_window(contract, manifest)


def test_window_refuses_a_missing_accepted_batch(
    contract: Contract, write_batch: BatchWriter
) -> None:
    """It raises DataError when an accepted batch file has disappeared."""
    path = write_batch(_frame(), "b1")
    manifest = Manifest(contract.data.manifest)
    intake(contract, manifest)
    path.unlink()
    with pytest.raises(DataError, match="missing"):
        load_window(contract, manifest)

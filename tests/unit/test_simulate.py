"""Unit tests of the Agrawal demo-stream generator and the batch writer."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from champion.training.demo import simulate
from champion.training.demo.simulate import (
    FEATURES_CATEGORICAL,
    FEATURES_NUMERIC,
    TARGET,
    TIMESTAMP,
    SimulationPlan,
    agrawal_frame,
    simulate_batches,
)

FEATURES = [*FEATURES_NUMERIC, *FEATURES_CATEGORICAL]


def test_same_arguments_give_identical_frames() -> None:
    """It returns the identical frame for identical arguments and a different one for a new seed."""
    first = agrawal_frame(500, function=3, seed=11, label_noise=0.1)
    second = agrawal_frame(500, function=3, seed=11, label_noise=0.1)
    pd.testing.assert_frame_equal(first, second)
    other = agrawal_frame(500, function=3, seed=12, label_noise=0.1)
    assert not first[FEATURES].equals(other[FEATURES])


def test_label_noise_flips_the_requested_fraction() -> None:
    """It flips about `label_noise` of the labels and leaves the features alone."""
    clean = agrawal_frame(4000, function=1, seed=5)
    noisy = agrawal_frame(4000, function=1, seed=5, label_noise=0.1)
    pd.testing.assert_frame_equal(clean[FEATURES], noisy[FEATURES])
    flipped = (clean[TARGET] != noisy[TARGET]).mean()
    assert flipped == pytest.approx(0.1, abs=0.005)


def test_columns_dtypes_and_domains() -> None:
    """It gives float64 numerics, prefixed string categoricals, a 0/1 label and UTC times."""
    frame = agrawal_frame(3000, function=9, seed=3)
    assert list(frame.columns) == list(simulate.COLUMNS)
    for column in FEATURES_NUMERIC:
        assert frame[column].dtype == np.float64, column
    domains = {
        "elevel": {f"e{i}" for i in range(5)},
        "car": {f"car{i}" for i in range(1, 21)},
        "zipcode": {f"z{i}" for i in range(9)},
    }
    for column, domain in domains.items():
        assert pd.api.types.is_string_dtype(frame[column]), column
        assert all(isinstance(value, str) for value in frame[column]), column
        assert set(frame[column]) == domain, column
    assert frame[TARGET].dtype == np.int64
    assert set(frame[TARGET]) == {0, 1}
    assert str(frame[TIMESTAMP].dt.tz) == "UTC"
    assert frame[TIMESTAMP].iloc[0] == pd.Timestamp("2026-01-01T00:00:00Z")
    assert (frame[TIMESTAMP].diff().dropna() == pd.Timedelta(seconds=60)).all()
    assert frame["salary"].between(20_000, 150_000).all()
    rich = frame["salary"] >= 75_000
    assert (frame.loc[rich, "commission"] == 0).all()
    assert frame.loc[~rich, "commission"].between(10_000, 75_000).all()
    assert frame["age"].between(20, 80).all()
    assert frame["hyears"].between(1, 30).all()
    assert frame["loan"].between(0, 500_000).all()
    k = 9 - frame["zipcode"].str[1:].astype(int)
    assert frame["hvalue"].between(0.5 * k * 100_000, 1.5 * k * 100_000).all()


def test_start_and_step_are_honoured() -> None:
    """It spaces event_time by step_seconds from start, reading a naive start as UTC."""
    frame = agrawal_frame(3, function=1, seed=0, start=datetime(2030, 5, 1, 12), step_seconds=0.5)
    expected = pd.Timestamp("2030-05-01T12:00:00Z") + pd.to_timedelta([0.0, 0.5, 1.0], unit="s")
    assert list(frame[TIMESTAMP]) == list(expected)


def test_concept_change_changes_labels() -> None:
    """It labels the same rows differently enough after the concept change, yet still balanced."""
    plan = SimulationPlan(batches=1, rows=10, drift_at=0, seed=0)
    before = agrawal_frame(20_000, function=plan.function_before, seed=21)
    after = agrawal_frame(20_000, function=plan.function_after, seed=21)
    pd.testing.assert_frame_equal(before[FEATURES], after[FEATURES])
    agreement = (before[TARGET] == after[TARGET]).mean()
    assert 0.45 <= agreement <= 0.70
    assert 0.30 <= after[TARGET].mean() <= 0.70


def test_batches_follow_the_drift_point(tmp_path: Path) -> None:
    """It labels batches before drift_at with function_before and later ones with function_after."""
    plan = SimulationPlan(batches=4, rows=50, drift_at=2, seed=7, label_noise=0.0)
    paths = simulate_batches(plan, landing_zone=tmp_path)
    for index, path in enumerate(paths):
        written = pd.read_csv(path)
        function = 1 if index < 2 else plan.function_after
        expected = agrawal_frame(50, function=function, seed=7 * 100_003 + index)
        np.testing.assert_array_equal(written[TARGET].to_numpy(), expected[TARGET].to_numpy())
        np.testing.assert_allclose(written["salary"].to_numpy(), expected["salary"].to_numpy())


def test_event_time_continues_across_batches(tmp_path: Path) -> None:
    """It starts batch k at start + k * rows * step so time runs on across batches."""
    plan = SimulationPlan(batches=3, rows=4, drift_at=None, seed=1, fmt="parquet")
    paths = simulate_batches(plan, landing_zone=tmp_path)
    times = pd.concat([pd.read_parquet(path)[TIMESTAMP] for path in paths], ignore_index=True)
    expected = pd.Timestamp("2026-01-01T00:00:00Z") + pd.to_timedelta(np.arange(12), unit="min")
    assert list(times) == list(expected)


def test_numbering_continues_and_never_overwrites(tmp_path: Path) -> None:
    """It numbers new batches after the highest existing one and refuses to overwrite any."""
    landing = tmp_path / "landing" / "zone"
    landing.mkdir(parents=True)
    (landing / "batch-00003.parquet").write_text("keep me")
    plan = SimulationPlan(batches=2, rows=5, drift_at=None, seed=2)
    first = simulate_batches(plan, landing_zone=landing)
    second = simulate_batches(plan, landing_zone=landing)
    assert [p.name for p in first] == ["batch-00004.csv", "batch-00005.csv"]
    assert [p.name for p in second] == ["batch-00006.csv", "batch-00007.csv"]
    assert (landing / "batch-00003.parquet").read_text() == "keep me"
    with pytest.raises(FileExistsError, match="first_index"):
        simulate_batches(plan, landing_zone=landing, first_index=4)
    explicit = simulate_batches(plan, landing_zone=landing, first_index=0)
    assert [p.name for p in explicit] == ["batch-00001.csv", "batch-00002.csv"]
    assert len(list(landing.iterdir())) == 7


def test_creates_a_missing_landing_zone(tmp_path: Path) -> None:
    """It creates the landing zone, parents included, when it does not exist."""
    landing = tmp_path / "a" / "b"
    paths = simulate_batches(SimulationPlan(1, 3, None, 0), landing_zone=landing)
    assert paths == [landing / "batch-00001.csv"]


def test_atomic_write_leaves_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It renames a hidden temp file from the same folder into place and cleans up on failure."""
    renamed: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def recording_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        renamed.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(simulate.os, "replace", recording_replace)
    paths = simulate_batches(SimulationPlan(2, 20, None, 3), landing_zone=tmp_path)
    assert sorted(tmp_path.iterdir()) == paths
    for src, dst in renamed:
        assert src.parent == tmp_path
        assert src.name.startswith(".")
        assert dst in paths

    def broken_to_csv(self: pd.DataFrame, path: Path, **_: object) -> None:
        Path(path).write_text("salary,commiss")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken_to_csv)
    with pytest.raises(OSError, match="disk full"):
        simulate_batches(SimulationPlan(1, 20, None, 3), landing_zone=tmp_path)
    assert sorted(tmp_path.iterdir()) == paths


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_rows": 0}, "n_rows"),
        ({"function": 0}, "function"),
        ({"function": 11}, "function"),
        ({"label_noise": 1.0}, "label_noise"),
        ({"label_noise": -0.1}, "label_noise"),
        ({"seed": -1}, "seed"),
        ({"step_seconds": 0.0}, "step_seconds"),
    ],
)
def test_bad_frame_arguments_raise(kwargs: dict[str, object], name: str) -> None:
    """It raises ValueError naming the bad argument of agrawal_frame."""
    arguments: dict[str, object] = {"n_rows": 10, "function": 1, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=name):
        agrawal_frame(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"batches": 0}, "batches"),
        ({"rows": 0}, "rows"),
        ({"drift_at": -1}, "drift_at"),
        ({"fmt": "json"}, "fmt"),
        ({"function_after": 12}, "function_after"),
        ({"function_before": 0}, "function_before"),
        ({"label_noise": 1.5}, "label_noise"),
    ],
)
def test_bad_plan_values_raise(kwargs: dict[str, object], name: str) -> None:
    """It raises ValueError naming the bad field of a SimulationPlan."""
    fields: dict[str, object] = {"batches": 1, "rows": 5, "drift_at": None, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=name):
        SimulationPlan(**fields)  # type: ignore[arg-type]


def test_bad_first_index_raises(tmp_path: Path) -> None:
    """It raises ValueError naming first_index when it is negative."""
    with pytest.raises(ValueError, match="first_index"):
        simulate_batches(SimulationPlan(1, 5, None, 0), landing_zone=tmp_path, first_index=-1)
    assert list(tmp_path.iterdir()) == []


def test_parquet_round_trip(tmp_path: Path) -> None:
    """It writes parquet batches that read back equal to the generated frame, dtypes included."""
    plan = SimulationPlan(batches=2, rows=30, drift_at=1, seed=9, fmt="parquet")
    paths = simulate_batches(plan, landing_zone=tmp_path)
    assert [p.name for p in paths] == ["batch-00001.parquet", "batch-00002.parquet"]
    read_back = pd.read_parquet(paths[1])
    expected = agrawal_frame(
        30,
        function=plan.function_after,
        seed=plan.seed_for(1),
        label_noise=plan.label_noise,
        start=datetime(2026, 1, 1, 0, 30, tzinfo=UTC),
    )
    pd.testing.assert_frame_equal(read_back, expected)

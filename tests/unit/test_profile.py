"""Unit tests for the reference profile built from training data."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from champion.monitoring.profile import (
    PROFILE_VERSION,
    bin_frequencies,
    build_profile,
    load_profile,
    save_profile,
)


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 200
    income = rng.lognormal(10, 1, n)
    income[::17] = np.nan
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, n),
            "income": income,
            "children": rng.integers(0, 3, n),
            "constant": np.full(n, 7.5),
            "empty": np.full(n, np.nan),
            "city": rng.choice(np.array(["paris", "lyon", "nice", None], dtype=object), n),
            "flag": rng.choice([True, False], n),
        }
    )


NUMERIC = ["age", "income", "children", "constant", "empty"]
CATEGORICAL = ["city", "flag"]


def _profile(frame: pd.DataFrame, **kwargs: Any) -> dict[str, Any]:
    return build_profile(frame, numeric=NUMERIC, categorical=CATEGORICAL, **kwargs)


def _walk(value: Any) -> list[Any]:
    if isinstance(value, dict):
        assert all(isinstance(key, str) for key in value)
        return [leaf for item in value.values() for leaf in _walk(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _walk(item)]
    return [value]


def _assert_json_safe(profile: dict[str, Any]) -> None:
    json.dumps(profile, allow_nan=False)
    for leaf in _walk(profile):
        # Exact types: numpy scalars subclass float/int and would hide a leak.
        assert leaf is None or type(leaf) in (str, int, float, bool), (leaf, type(leaf))


def test_top_level_layout(frame: pd.DataFrame) -> None:
    profile = _profile(frame, bins=5)
    assert profile["version"] == PROFILE_VERSION
    assert profile["rows"] == len(frame)
    assert profile["bins"] == 5
    assert set(profile["features"]) == set(NUMERIC) | set(CATEGORICAL)
    assert profile["prediction"] is None


@pytest.mark.parametrize("name", ["age", "income", "children"])
def test_numeric_edges_and_frequencies(frame: pd.DataFrame, name: str) -> None:
    feature = _profile(frame)["features"][name]
    edges, frequencies = feature["edges"], feature["frequencies"]
    assert feature["type"] == "numeric"
    assert len(edges) <= 11
    assert all(low < high for low, high in pairwise(edges))
    assert len(frequencies) == len(edges) - 1
    assert sum(frequencies) == pytest.approx(1.0)
    values = frame[name].dropna()
    assert feature["min"] == values.min()
    assert feature["max"] == values.max()
    assert feature["mean"] == pytest.approx(values.mean())
    assert feature["null_rate"] == pytest.approx(frame[name].isna().mean())


def test_low_cardinality_column_drops_duplicate_edges(frame: pd.DataFrame) -> None:
    feature = _profile(frame)["features"]["children"]
    assert feature["edges"] == sorted(set(feature["edges"]))
    assert len(feature["edges"]) <= 3


def test_constant_column_has_single_bin(frame: pd.DataFrame) -> None:
    feature = _profile(frame)["features"]["constant"]
    assert feature["edges"] == [7.5, 7.5]
    assert feature["frequencies"] == [1.0]
    assert feature["std"] == 0.0
    assert feature["null_rate"] == 0.0


def test_all_null_column(frame: pd.DataFrame) -> None:
    feature = _profile(frame)["features"]["empty"]
    assert feature == {
        "type": "numeric",
        "edges": [],
        "frequencies": [],
        "null_rate": 1.0,
        "mean": None,
        "std": None,
        "min": None,
        "max": None,
    }


def test_infinite_values_count_as_missing() -> None:
    data = pd.DataFrame({"x": [1.0, 2.0, np.inf, -np.inf]})
    feature = build_profile(data, numeric=["x"], categorical=[])["features"]["x"]
    assert feature["null_rate"] == 0.5
    assert feature["max"] == 2.0


def test_categorical_with_nulls(frame: pd.DataFrame) -> None:
    feature = _profile(frame)["features"]["city"]
    present = frame["city"].dropna()
    assert feature["type"] == "categorical"
    assert list(feature["frequencies"]) == sorted(present.unique())
    assert sum(feature["frequencies"].values()) == pytest.approx(1.0)
    assert feature["frequencies"]["lyon"] == pytest.approx((present == "lyon").mean())
    assert feature["null_rate"] == pytest.approx(frame["city"].isna().mean())


def test_categorical_keys_are_strings(frame: pd.DataFrame) -> None:
    feature = _profile(frame)["features"]["flag"]
    assert set(feature["frequencies"]) == {"False", "True"}


def test_all_null_categorical() -> None:
    data = pd.DataFrame({"c": [None, None]})
    feature = build_profile(data, numeric=[], categorical=["c"])["features"]["c"]
    assert feature == {"type": "categorical", "frequencies": {}, "null_rate": 1.0}


def test_edges_bin_future_data_including_out_of_range(frame: pd.DataFrame) -> None:
    edges = _profile(frame)["features"]["age"]["edges"]
    frequencies = bin_frequencies(np.array([-1000.0, 1000.0, np.nan]), edges)
    assert frequencies[0] == 0.5
    assert frequencies[-1] == 0.5
    assert bin_frequencies(np.array([np.nan]), edges) == []


def test_classification_prediction(frame: pd.DataFrame) -> None:
    rng = np.random.default_rng(1)
    positive = rng.uniform(size=len(frame))
    probabilities = np.column_stack([1 - positive, positive])
    prediction = _profile(frame, probabilities=probabilities, classes=[0, 1])["prediction"]
    assert prediction["kind"] == "classification"
    assert prediction["classes"] == ["0", "1"]
    assert prediction["class_frequencies"]["1"] == pytest.approx((positive > 0.5).mean())
    assert sum(prediction["class_frequencies"].values()) == pytest.approx(1.0)
    edges = prediction["score_edges"]
    assert edges[0] == positive.min()
    assert edges[-1] == positive.max()
    assert len(prediction["score_frequencies"]) == len(edges) - 1
    assert sum(prediction["score_frequencies"]) == pytest.approx(1.0)


def test_classification_uses_given_predictions_and_lists_every_class(
    frame: pd.DataFrame,
) -> None:
    probabilities = np.tile([0.2, 0.3, 0.5], (len(frame), 1))
    predictions = np.array(["a"] * (len(frame) - 1) + ["b"])
    prediction = _profile(
        frame, predictions=predictions, probabilities=probabilities, classes=["a", "b", "c"]
    )["prediction"]
    assert prediction["class_frequencies"] == {
        "a": pytest.approx(1 - 1 / len(frame)),
        "b": pytest.approx(1 / len(frame)),
        "c": 0.0,
    }
    assert prediction["score_edges"] == [0.5, 0.5]
    assert prediction["score_frequencies"] == [1.0]


def test_classification_rejects_mismatched_shapes(frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="probabilities"):
        _profile(frame, probabilities=np.ones((len(frame), 3)), classes=[0, 1])
    with pytest.raises(ValueError, match="classes"):
        _profile(frame, probabilities=np.ones((len(frame), 2)))


def test_regression_prediction(frame: pd.DataFrame) -> None:
    predictions = np.linspace(0.0, 100.0, len(frame))
    prediction = _profile(frame, predictions=predictions)["prediction"]
    assert prediction["kind"] == "regression"
    assert prediction["edges"][0] == 0.0
    assert prediction["edges"][-1] == 100.0
    assert len(prediction["edges"]) == 11
    assert prediction["frequencies"] == pytest.approx([0.1] * 10)
    assert prediction["mean"] == pytest.approx(50.0)
    assert prediction["null_rate"] == 0.0


def test_profile_is_json_safe(frame: pd.DataFrame) -> None:
    rng = np.random.default_rng(2)
    positive = rng.uniform(size=len(frame))
    probabilities = np.column_stack([1 - positive, positive])
    _assert_json_safe(_profile(frame))
    _assert_json_safe(_profile(frame, probabilities=probabilities, classes=np.array([0, 1])))
    _assert_json_safe(_profile(frame, predictions=rng.normal(size=len(frame))))


def test_nullable_dtypes_are_json_safe() -> None:
    data = pd.DataFrame(
        {
            "n": pd.array([1, None, 3], dtype="Int64"),
            "c": pd.array(["x", None, "y"], dtype="string"),
            "k": pd.Categorical(["u", "v", None]),
        }
    )
    profile = build_profile(data, numeric=["n"], categorical=["c", "k"])
    _assert_json_safe(profile)
    assert profile["features"]["n"]["null_rate"] == pytest.approx(1 / 3)
    assert profile["features"]["k"]["frequencies"] == {"u": 0.5, "v": 0.5}


def test_round_trip(frame: pd.DataFrame, tmp_path: Path) -> None:
    profile = _profile(frame, predictions=np.arange(len(frame), dtype=float))
    path = tmp_path / "nested" / "profile.json"
    save_profile(profile, path)
    assert load_profile(path) == profile
    assert list(path.parent.iterdir()) == [path]


def test_saved_json_has_sorted_keys(frame: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    save_profile(_profile(frame), path)
    text = path.read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=1) + "\n"


def test_load_rejects_other_versions(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    for content in ({"version": 2}, {"version": True}, {}, [1]):
        path.write_text(json.dumps(content))
        with pytest.raises(ValueError):
            load_profile(path)
    path.write_text("{not json")
    with pytest.raises(ValueError):
        load_profile(path)


def test_deterministic(frame: pd.DataFrame) -> None:
    first = json.dumps(_profile(frame), sort_keys=True)
    second = json.dumps(_profile(frame.copy()), sort_keys=True)
    assert first == second


def test_rejects_bad_arguments(frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="missing"):
        build_profile(frame, numeric=["nope"], categorical=[])
    with pytest.raises(ValueError, match="both"):
        build_profile(frame, numeric=["age"], categorical=["age"])
    with pytest.raises(ValueError, match="empty"):
        build_profile(frame.iloc[:0], numeric=["age"], categorical=[])
    with pytest.raises(ValueError, match="not numeric"):
        build_profile(frame, numeric=["city"], categorical=[])
    with pytest.raises(TypeError):
        build_profile(frame, numeric="age", categorical=[])

"""Ordinal and boolean features, and the columns a contract drops, from intake through the
pipeline and its compiled form to the API's validation, schema and drift profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from champion.monitoring.profile import build_profile
from champion.service.runtime import RUNTIME_ONNX, CompiledModel, Encoder
from champion.service.validation import (
    RequestInvalid,
    openapi_request_schema,
    validate_instances,
)
from champion.training.checks import validate_batch
from champion.training.compile import compile_pipeline
from champion.training.config import Contract
from champion.training.demo.simulate import agrawal_frame
from champion.training.errors import ConfigError
from champion.training.pipeline import Candidate, build_pipeline, prepare_features
from tests.unit.conftest import make_contract, small_raw_contract

GRADES = ["low", "mid", "high"]


def _raw() -> dict[str, Any]:
    raw = small_raw_contract()
    raw["features"]["grade"] = {"type": "ordinal", "values": GRADES}
    raw["features"]["owner"] = {"type": "boolean"}
    raw["ignore"] = ["customer_id"]
    return raw


@pytest.fixture
def contract(tmp_path: Path) -> Contract:
    return make_contract(tmp_path, _raw())


def _frame(n: int = 400, seed: int = 5) -> pd.DataFrame:
    """Demo rows plus a grade and an ownership flag the label depends on."""
    frame = agrawal_frame(n, function=1, seed=seed, label_noise=0.05)
    rng = np.random.default_rng(seed)
    frame["grade"] = rng.choice(GRADES, n)
    frame["owner"] = rng.random(n) < 0.5
    frame["customer_id"] = [f"c{i}" for i in range(n)]
    lift = (frame["grade"] == "high") & frame["owner"]
    frame.loc[lift, "approved"] = 1
    return frame


# -- the contract -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("feature", "message"),
    [
        ({"type": "ordinal"}, "lists its 'values'"),
        ({"type": "boolean", "values": ["y", "n"]}, "only allowed for categorical and ordinal"),
    ],
)
def test_a_feature_type_missing_what_it_needs_is_refused(tmp_path, feature, message):
    raw = small_raw_contract()
    raw["features"]["extra"] = feature
    with pytest.raises(ConfigError, match=message):
        make_contract(tmp_path, raw)


def test_an_ignored_column_that_is_also_a_feature_is_refused(tmp_path):
    raw = small_raw_contract()
    raw["ignore"] = ["salary"]
    with pytest.raises(ConfigError, match=r"ignore: \['salary'\]"):
        make_contract(tmp_path, raw)


# -- intake -------------------------------------------------------------------------------------


def test_intake_reads_boolean_text_in_any_case_and_counts_unknown_grades(contract):
    """true/false/1/0 in any case become booleans; an unknown ordinal value is counted."""
    frame = _frame(60)
    raw = frame.astype({"owner": object})
    raw["owner"] = ["TRUE", "false", "1", "0", "True", "False"] * 10
    raw.loc[0, "grade"] = "top"
    clean, report = validate_batch(raw, contract)
    assert report.accepted, report.reasons
    assert clean is not None and clean["owner"].dtype == "boolean"
    assert clean["owner"].tolist()[:6] == [True, False, True, False, True, False]
    assert report.unknown_categories == {"grade": 1}
    assert "customer_id" not in clean.columns  # an ignored column is not kept


def test_a_boolean_column_holding_other_values_is_quarantined_naming_them(contract):
    raw = _frame(60).astype({"owner": object})
    raw.loc[:2, "owner"] = "maybe"
    clean, report = validate_batch(raw, contract)
    assert clean is None and not report.accepted
    assert report.reasons[0].startswith("column 'owner': 3 values are not booleans")
    assert "'maybe'" in report.reasons[0]


def test_features_are_encoded_as_positions_and_ones_and_zeros(contract):
    frame = pd.DataFrame(
        {
            **{n: [1.0] * 4 for n in contract.numeric},
            **{n: ["z0"] * 4 for n in contract.categorical},
        }
    )
    frame["grade"] = ["low", "high", "top", None]
    frame["owner"] = pd.array([True, False, None, True], dtype="boolean")
    X = prepare_features(frame, contract)
    assert X["grade"].tolist()[:2] == [0.0, 2.0] and X["grade"].isna().tolist()[2:] == [True] * 2
    assert X["owner"].tolist()[:2] == [1.0, 0.0] and np.isnan(X["owner"].iloc[2])


# -- train -> compile -> serve ------------------------------------------------------------------


@pytest.mark.parametrize("family", ["logistic", "hist_gradient_boosting"])
def test_ordinal_and_boolean_features_train_compile_and_serve_alike(contract, family):
    """The compiled form, fed the API's validated columns, answers as the pipeline does on
    the training frame: the two encodings of a grade and a flag agree."""
    frame = _frame()
    clean, report = validate_batch(frame, contract)
    assert report.accepted and clean is not None, report.reasons
    X = prepare_features(clean, contract)
    y = clean["approved"].to_numpy()
    params = {"max_iter": 20} if family == "hist_gradient_boosting" else {}
    pipeline = build_pipeline(contract, Candidate(family, params), seed=0).fit(X, y)
    compiled = compile_pipeline(pipeline, contract, X.tail(100))
    assert compiled.runtime == RUNTIME_ONNX, compiled.reason
    assert compiled.onnx is not None
    model = CompiledModel(Encoder.from_pipeline(pipeline), compiled.onnx, classes=[0, 1])

    rows = [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
        for r in frame.head(50)[[*contract.features, "customer_id", "approved"]].to_dict("records")
    ]
    batch = validate_instances({"instances": rows}, contract=contract, max_rows=50)
    got = model.run(batch.columns, batch.n)
    want = pipeline.predict_proba(X.head(50))
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(pipeline.predict_proba(batch.frame), want, atol=1e-12)


# -- the API ------------------------------------------------------------------------------------


def _row(**changes: Any) -> dict[str, Any]:
    row = {k: (v.item() if hasattr(v, "item") else v) for k, v in _frame(1).iloc[0].items()}
    row.pop("ts", None)
    return row | changes


def test_the_api_takes_booleans_and_grades_and_drops_the_target_and_ignored_columns(contract):
    rows = [_row(grade="high", owner=True), _row(grade="top", owner=False)]
    batch = validate_instances({"instances": rows}, contract=contract, max_rows=5)
    assert batch.columns["grade"] == [2.0, None] and batch.unseen == {"grade": 1}
    assert batch.columns["owner"] == [1.0, 0.0]
    assert "approved" not in batch.columns and "customer_id" not in batch.columns
    assert batch.rows[0]["customer_id"] == rows[0]["customer_id"]  # captured as sent


@pytest.mark.parametrize(
    ("changes", "field", "kind"),
    [
        ({"owner": "true"}, "owner", "wrong_type"),
        ({"owner": 1}, "owner", "wrong_type"),
        ({"grade": 2}, "grade", "wrong_type"),
        ({"colour": "red"}, "colour", "unexpected"),
    ],
)
def test_the_api_names_what_is_wrong_with_a_boolean_a_grade_or_a_key(
    contract, changes, field, kind
):
    with pytest.raises(RequestInvalid) as info:
        validate_instances({"instances": [_row(), _row(**changes)]}, contract=contract, max_rows=5)
    [problem] = info.value.problems
    assert (problem.row, problem.field, problem.kind) == (1, field, kind)


def test_the_schema_types_booleans_and_lists_grades_lowest_first(contract):
    props = openapi_request_schema(contract, max_rows=5)["properties"]["instances"]["items"]
    props = props["properties"]
    assert {"type": "boolean"} in props["owner"]["anyOf"]
    grade = next(s for s in props["grade"]["anyOf"] if s.get("type") == "string")
    assert grade["examples"] == GRADES and "lowest first" in props["grade"]["description"]
    assert "ignored" in props["customer_id"]["description"]


def test_drift_profiles_grades_and_flags_by_their_values(contract):
    """Live rows carry the values as sent (true, "high"); the profile keys them the same way."""
    frame = _frame(100)
    clean, _ = validate_batch(frame, contract)
    assert clean is not None
    profile = build_profile(
        clean, numeric=contract.numeric, categorical=contract.profiled_categorical
    )
    assert set(profile["features"]["owner"]["frequencies"]) == {"True", "False"}
    assert set(profile["features"]["grade"]["frequencies"]) == set(GRADES)


# -- high-cardinality categoricals: cross-fitted target encoding ---------------------------------


@pytest.mark.parametrize(
    ("classes", "family"),
    [([0, 1], "hist_gradient_boosting"), ([0, 1], "logistic"), ([0, 1, 2], "logistic")],
    ids=["binary-boosting", "binary-logistic", "multiclass-logistic"],
)
def test_target_encoded_levels_train_compile_and_serve_alike(tmp_path, classes, family):
    """A 150-level categorical encoded by its cross-fitted mean target (one column, or one per
    class) compiles, and the compiled lookup answers as scikit-learn does, unknown and
    missing levels included."""
    raw = small_raw_contract()
    raw["classes"] = classes
    raw["metrics"]["guardrails"] = {}
    raw["features"]["shop"] = {"type": "categorical", "encoding": "target"}
    contract = make_contract(tmp_path, raw)
    frame = agrawal_frame(600, function=1, seed=8, label_noise=0.05)
    rng = np.random.default_rng(8)
    frame["shop"] = [f"s{i}" for i in rng.integers(0, 150, len(frame))]
    if len(classes) == 3:
        frame["approved"] = (frame["shop"].str[1:].astype(int) % 3).where(rng.random(600) < 0.7, 0)
    X = prepare_features(frame, contract)
    y = frame["approved"].to_numpy()
    params = {"max_iter": 20} if family == "hist_gradient_boosting" else {}
    pipeline = build_pipeline(contract, Candidate(family, params), seed=0).fit(X, y)
    width = pipeline.named_steps["features"].transform(X.head(2)).shape[1]
    onehot = sum(
        len(contract.features[n].values or ()) for n in contract.categorical if n != "shop"
    )
    assert width == len(contract.numeric) + onehot + (3 if len(classes) == 3 else 1)
    compiled = compile_pipeline(pipeline, contract, X.tail(150))
    assert compiled.runtime == RUNTIME_ONNX, compiled.reason
    assert compiled.onnx is not None
    model = CompiledModel(Encoder.from_pipeline(pipeline), compiled.onnx, classes=classes)
    rows = [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
        for r in frame.head(40)[list(contract.features)].to_dict("records")
    ]
    rows[0]["shop"], rows[1]["shop"] = "never-seen", None
    batch = validate_instances({"instances": rows}, contract=contract, max_rows=40)
    want = pipeline.predict_proba(batch.frame)
    np.testing.assert_allclose(model.run(batch.columns, batch.n), want, atol=1e-5)
    one = validate_instances({"instances": rows[:1]}, contract=contract, max_rows=1)
    np.testing.assert_allclose(model.run(one.columns, 1), want[:1], atol=1e-5)


def test_encoding_applies_to_categorical_features_only(tmp_path):
    raw = small_raw_contract()
    raw["features"]["salary"]["encoding"] = "target"
    with pytest.raises(ConfigError, match="'encoding' is only allowed for categorical"):
        make_contract(tmp_path, raw)

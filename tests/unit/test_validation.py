"""Unit tests of the prediction request checks: every problem, by row and field, and the schema."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from champion.service.validation import (
    Batch,
    RequestInvalid,
    openapi_request_schema,
    parse_body,
    validate_instances,
)
from champion.training.config import FLOAT32_MAX, Contract, load_contract, parse_contract
from tests.unit.conftest import PROJECT_FILE, raw_contract

MAX_ROWS = 5

GOOD_ROW: dict[str, Any] = {
    "salary": 61000.0,
    "commission": 20000,
    "age": 45,
    "hvalue": 250000.5,
    "hyears": 12,
    "loan": 150000.0,
    "elevel": "e2",
    "car": "car4",
    "zipcode": "z3",
}


@pytest.fixture(scope="module")
def shipped() -> Contract:
    """The shipped champion.toml: every feature nullable (the default)."""
    return load_contract(PROJECT_FILE)


@pytest.fixture(scope="module")
def strict() -> Contract:
    """The shipped contract with `salary` (numeric) and `car` (categorical) not nullable."""
    raw = raw_contract()
    raw["features"]["salary"]["nullable"] = False
    raw["features"]["car"]["nullable"] = False
    return parse_contract(raw)


def _row(**changes: Any) -> dict[str, Any]:
    """GOOD_ROW with values replaced; a value of `...` removes the feature."""
    row = dict(GOOD_ROW)
    for key, value in changes.items():
        if value is ...:
            row.pop(key, None)
        else:
            row[key] = value
    return row


def _validate(contract: Contract, rows: Any, *, max_rows: int = MAX_ROWS) -> Batch:
    return validate_instances({"instances": rows}, contract=contract, max_rows=max_rows)


def _refused(contract: Contract, payload: Any, *, max_rows: int = MAX_ROWS) -> RequestInvalid:
    with pytest.raises(RequestInvalid) as info:
        validate_instances(payload, contract=contract, max_rows=max_rows)
    return info.value


def _where(exc: RequestInvalid) -> list[tuple[int | None, str | None, str]]:
    return [(p.row, p.field, p.kind) for p in exc.problems]


def _types(prop: dict[str, Any]) -> set[str]:
    """The JSON types a property schema admits, whether plain or wrapped in anyOf."""
    if "anyOf" in prop:
        return {alt["type"] for alt in prop["anyOf"]}
    return {prop["type"]}


# -- good rows ----------------------------------------------------------------------------------


def test_good_row_builds_a_typed_frame_in_contract_order(shipped):
    """It accepts a good row and builds float64 numeric and object categorical columns in order."""
    shuffled = dict(reversed(list(GOOD_ROW.items())))
    batch = _validate(shipped, [shuffled, GOOD_ROW])
    frame = batch.frame
    assert list(frame.columns) == list(shipped.features)
    assert len(frame) == 2
    for name in shipped.numeric:
        assert frame[name].dtype == np.dtype("float64"), name
    assert frame.loc[0, "age"] == 45.0 and isinstance(frame.loc[0, "age"], np.floating)
    assert frame.loc[1, "hvalue"] == 250000.5
    assert list(frame["car"]) == ["car4", "car4"]
    assert dict(batch.unseen) == {}


def test_categorical_columns_are_object_dtype_like_training(shipped):
    """It builds categorical columns as object dtype, as prepare_features does for training."""
    batch = _validate(shipped, [GOOD_ROW, _row(elevel=None)])
    for name in shipped.categorical:
        assert batch.frame[name].dtype == np.dtype(object), (name, batch.frame[name].dtype)


def test_nulls_in_nullable_features_become_nan(shipped):
    """It accepts null where the contract allows it, as NaN in numeric and categorical columns."""
    batch = _validate(shipped, [_row(salary=None, zipcode=None)])
    assert batch.frame["salary"].dtype == np.dtype("float64")
    assert math.isnan(batch.frame.loc[0, "salary"])
    assert isinstance(batch.frame.loc[0, "zipcode"], float)
    assert math.isnan(batch.frame.loc[0, "zipcode"])


def test_unknown_category_is_accepted_and_counted_as_unseen(shipped):
    """It serves a category outside the contract's domain and counts it per feature."""
    rows = [_row(elevel="e9"), _row(elevel="e7", car="spaceship"), _row()]
    batch = _validate(shipped, rows)
    assert list(batch.frame["elevel"]) == ["e9", "e7", "e2"]
    assert dict(batch.unseen) == {"elevel": 2, "car": 1}


def test_category_without_a_domain_is_never_unseen():
    """It accepts any text for a categorical feature that lists no values, counting nothing."""
    raw = raw_contract()
    del raw["features"]["zipcode"]["values"]
    contract = parse_contract(raw)
    batch = _validate(contract, [_row(zipcode="anywhere")])
    assert batch.frame.loc[0, "zipcode"] == "anywhere"
    assert dict(batch.unseen) == {}


def test_exactly_max_rows_is_accepted(shipped):
    """It accepts a batch of exactly max_rows rows (the limit is inclusive)."""
    assert len(_validate(shipped, [GOOD_ROW] * MAX_ROWS).frame) == MAX_ROWS


def test_large_but_finite_integer_is_accepted(shipped):
    """It accepts a JSON integer larger than 2**63 that still fits a float."""
    batch = _validate(shipped, [_row(loan=10**20)])
    assert batch.frame.loc[0, "loan"] == 1e20


# -- one problem at a time ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field", "kind", "words"),
    [
        ({"age": ...}, "age", "missing", "missing feature"),
        ({"elevel": ...}, "elevel", "missing", "missing feature"),
        ({"colour": "red"}, "colour", "unexpected", "not in the contract"),
        ({"salary": "lots"}, "salary", "wrong_type", "expected a number, got str"),
        ({"hyears": "12"}, "hyears", "wrong_type", "expected a number, got str"),
        ({"loan": True}, "loan", "wrong_type", "expected a number, got bool"),
        ({"age": False}, "age", "wrong_type", "expected a number, got bool"),
        ({"hvalue": [1.0]}, "hvalue", "wrong_type", "expected a number, got list"),
        ({"commission": {"v": 1}}, "commission", "wrong_type", "expected a number, got dict"),
        ({"elevel": 3}, "elevel", "wrong_type", "expected text, got int"),
        ({"zipcode": 1.5}, "zipcode", "wrong_type", "expected text, got float"),
        ({"car": True}, "car", "wrong_type", "expected text, got bool"),
        ({"salary": float("nan")}, "salary", "not_finite", "finite"),
        ({"salary": float("inf")}, "salary", "not_finite", "finite"),
        ({"loan": float("-inf")}, "loan", "not_finite", "finite"),
    ],
)
def test_each_problem_is_refused_with_its_row_field_and_kind(shipped, changes, field, kind, words):
    """It refuses a single bad value with 422, the right reason, row, field and wording."""
    exc = _refused(shipped, {"instances": [GOOD_ROW, _row(**changes)]})
    assert exc.status == 422
    assert exc.reason == kind
    assert _where(exc) == [(1, field, kind)]
    assert words in exc.problems[0].problem
    body = exc.body()
    assert body["problems"] == [
        {"row": 1, "field": field, "kind": kind, "problem": exc.problems[0].problem}
    ]
    assert "1 problem(s)" in body["error"]


@pytest.mark.parametrize("field", ["salary", "car"])
def test_null_where_not_allowed_is_refused(strict, field):
    """It refuses null for a feature declared `nullable = false`, numeric or categorical."""
    exc = _refused(strict, {"instances": [_row(**{field: None})]})
    assert (exc.status, exc.reason) == (422, "null")
    assert _where(exc) == [(0, field, "null")]
    assert "null is not allowed" in exc.problems[0].problem


def test_null_in_a_nullable_feature_is_not_a_problem_in_a_strict_contract(strict):
    """It still accepts null for the features the strict contract leaves nullable."""
    batch = _validate(strict, [_row(age=None, elevel=None)])
    assert math.isnan(batch.frame.loc[0, "age"])


def test_infinity_written_as_an_overflowing_number_is_not_finite(shipped):
    """It parses 1e400 (a legal JSON number) to infinity, then refuses it as not finite."""
    payload = parse_body(
        b'{"instances": [{"salary": 1e400, "commission": 0, "age": 30, "hvalue": 1, '
        b'"hyears": 1, "loan": 1, "elevel": "e0", "car": "car1", "zipcode": "z0"}]}',
        max_bytes=10_000,
    )
    assert payload["instances"][0]["salary"] == math.inf
    exc = _refused(shipped, payload)
    assert (exc.status, exc.reason) == (422, "not_finite")
    assert _where(exc) == [(0, "salary", "not_finite")]


def test_integer_too_large_for_a_float_is_refused_not_raised(shipped):
    """It refuses a JSON integer beyond float range with a 422 problem, not an OverflowError."""
    payload = parse_body(
        json.dumps({"instances": [_row(salary=10**400)]}).encode(), max_bytes=10_000
    )
    exc = _refused(shipped, payload)
    assert exc.status == 422
    assert [(p.row, p.field) for p in exc.problems] == [(0, "salary")]
    assert exc.problems[0].kind in ("not_finite", "wrong_type")


@pytest.mark.parametrize("row", [1, "row", None, [1, 2], True])
def test_a_row_that_is_not_an_object_is_refused(shipped, row):
    """It refuses an instance that is not a JSON object, naming its row."""
    exc = _refused(shipped, {"instances": [GOOD_ROW, row]})
    assert (exc.status, exc.reason) == (422, "not_object")
    assert _where(exc) == [(1, None, "not_object")]


# -- every problem at once ----------------------------------------------------------------------


def test_every_problem_in_every_row_is_listed(strict):
    """It lists every problem of every row, in row then contract order, not just the first."""
    rows = [
        GOOD_ROW,
        _row(age=..., salary="lots", colour="red", bogus=1),
        _row(hvalue=True, elevel=3, salary=None, car=None),
        [GOOD_ROW],
        _row(commission=float("inf"), loan=float("nan"), zipcode=..., hyears="x"),
        _row(elevel="e42"),
    ]
    exc = _refused(strict, {"instances": rows}, max_rows=len(rows))
    assert exc.status == 422
    assert exc.reason == "wrong_type"  # the first problem's kind
    assert _where(exc) == [
        (1, "salary", "wrong_type"),
        (1, "age", "missing"),
        (1, "bogus", "unexpected"),
        (1, "colour", "unexpected"),
        (2, "salary", "null"),
        (2, "hvalue", "wrong_type"),
        (2, "elevel", "wrong_type"),
        (2, "car", "null"),
        (3, None, "not_object"),
        (4, "commission", "not_finite"),
        (4, "hyears", "wrong_type"),
        (4, "loan", "not_finite"),
        (4, "zipcode", "missing"),
    ]
    body = exc.body()
    assert body["error"] == "13 problem(s) in the instances"
    assert len(body["problems"]) == 13
    assert all(set(p) == {"row", "field", "kind", "problem"} for p in body["problems"])
    assert all(p["problem"] for p in body["problems"])


# -- the envelope -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [[GOOD_ROW], "instances", 3, None, {}, {"rows": [GOOD_ROW]}, {"Instances": [GOOD_ROW]}],
)
def test_body_without_an_instances_object_is_refused(shipped, payload):
    """It refuses a body that is not an object holding `instances`, with bad_envelope."""
    exc = _refused(shipped, payload)
    assert (exc.status, exc.reason) == (422, "bad_envelope")
    assert '{"instances": [...]}' in exc.message
    assert exc.problems == []


@pytest.mark.parametrize("instances", [GOOD_ROW, "rows", 1, None])
def test_instances_that_is_not_a_list_is_refused(shipped, instances):
    """It refuses `instances` that is not a list, with bad_envelope."""
    exc = _refused(shipped, {"instances": instances})
    assert (exc.status, exc.reason) == (422, "bad_envelope")
    assert "must be a list" in exc.message


def test_extra_top_level_keys_are_refused_by_name(shipped):
    """It refuses top-level keys besides `instances` and names them."""
    exc = _refused(shipped, {"instances": [GOOD_ROW], "model": "v2", "debug": True})
    assert (exc.status, exc.reason) == (422, "bad_envelope")
    assert "['debug', 'model']" in exc.message


def test_empty_instances_is_refused(shipped):
    """It refuses an empty list of instances and says how many rows it takes."""
    exc = _refused(shipped, {"instances": []})
    assert (exc.status, exc.reason) == (422, "empty")
    assert f"1 to {MAX_ROWS}" in exc.message


def test_more_than_max_rows_is_refused(shipped):
    """It refuses a batch over max_rows before looking at any row."""
    exc = _refused(shipped, {"instances": [GOOD_ROW] * (MAX_ROWS + 1)})
    assert (exc.status, exc.reason) == (422, "too_many_rows")
    assert f"{MAX_ROWS + 1} rows; at most {MAX_ROWS}" in exc.message


# -- parsing the body ---------------------------------------------------------------------------


def test_parse_body_reads_strict_json():
    """It parses a valid JSON body into Python values."""
    assert parse_body(b'{"instances": [{"a": 1.5, "b": null}]}', max_bytes=100) == {
        "instances": [{"a": 1.5, "b": None}]
    }


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_tokens_are_malformed_json(token):
    """It refuses the non-standard NaN/Infinity tokens Python's json would accept, with 400."""
    body = b'{"instances": [{"salary": ' + token + b"}]}"
    with pytest.raises(RequestInvalid) as info:
        parse_body(body, max_bytes=10_000)
    assert (info.value.status, info.value.reason) == (400, "malformed_json")
    assert token.decode().lstrip("-") in info.value.message


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b'{"instances": [', b"{'instances': []}", b"instances", b"\xff\xfe\xfd{}"],
)
def test_malformed_json_is_refused_with_400(body):
    """It refuses a body that is not JSON (truncated, empty, single quotes, bad bytes) with 400."""
    with pytest.raises(RequestInvalid) as info:
        parse_body(body, max_bytes=10_000)
    assert (info.value.status, info.value.reason) == (400, "malformed_json")
    assert info.value.message.startswith("malformed JSON")


def test_body_over_max_bytes_is_refused_with_413():
    """It refuses a body longer than max_bytes with 413 before parsing it."""
    body = json.dumps({"instances": [GOOD_ROW]}).encode()
    assert parse_body(body, max_bytes=len(body)) == {"instances": [GOOD_ROW]}
    with pytest.raises(RequestInvalid) as info:
        parse_body(body + b" ", max_bytes=len(body))
    assert (info.value.status, info.value.reason) == (413, "too_large")
    assert f"{len(body) + 1} bytes, limit {len(body)}" in info.value.message


# -- the OpenAPI request schema -----------------------------------------------------------------


def test_openapi_schema_lists_every_feature_with_its_type(strict):
    """It describes each contract feature with its JSON type, nullability and title."""
    schema = openapi_request_schema(strict, max_rows=MAX_ROWS)
    instances = schema["properties"]["instances"]
    assert schema["required"] == ["instances"]
    assert (instances["type"], instances["minItems"], instances["maxItems"]) == ("array", 1, 5)
    row = instances["items"]
    features = list(strict.features)
    assert list(row["properties"])[: len(features)] == features
    # Then the keys accepted and dropped: the target (a client copying CSV rows) and so on.
    assert set(list(row["properties"])[len(features) :]) == strict.droppable
    assert row["required"] == features
    assert row["additionalProperties"] is False
    props = row["properties"]
    assert props["salary"]["type"] == "number" and props["salary"]["title"] == "Yearly salary"
    assert _types(props["age"]) == {"number", "null"}
    for name in strict.numeric:
        assert "number" in _types(props[name]), name
    for name in strict.categorical:
        assert "string" in _types(props[name]), name
    assert props["hvalue"]["title"] == "House value"


def test_openapi_schema_lists_known_values_without_forbidding_others(strict):
    """It gives each categorical's known values as examples, never as an enum: the validator
    accepts unseen categories, so a schema forbidding them would mislead generated clients."""
    props = openapi_request_schema(strict, max_rows=MAX_ROWS)["properties"]["instances"]["items"][
        "properties"
    ]
    car = props["car"]  # not nullable: a plain string schema
    assert car["type"] == "string" and "enum" not in car
    assert car["examples"] == list(strict.features["car"].values)
    assert "unseen" in car["description"]
    elevel = next(alt for alt in props["elevel"]["anyOf"] if alt["type"] == "string")
    assert "enum" not in elevel and elevel["examples"] == ["e0", "e1", "e2", "e3", "e4"]
    batch = validate_instances(
        {"instances": [_row(car="AAA", elevel="AAA")]}, contract=strict, max_rows=MAX_ROWS
    )
    assert batch.unseen == {"car": 1, "elevel": 1}  # what the schema promises: accepted


def test_openapi_schema_bounds_numbers_as_the_validator_does(strict):
    """It states the float32 range the validator enforces, and which features may be null."""
    props = openapi_request_schema(strict, max_rows=MAX_ROWS)["properties"]["instances"]["items"][
        "properties"
    ]
    salary = props["salary"]
    assert salary["maximum"] == FLOAT32_MAX and salary["minimum"] == -FLOAT32_MAX
    assert "Must not be null" in salary["description"]
    assert "May be null" in props["age"]["description"]
    with pytest.raises(RequestInvalid) as caught:
        validate_instances({"instances": [_row(salary=1e300)]}, contract=strict, max_rows=MAX_ROWS)
    assert caught.value.problems[0].kind == "out_of_range"


@pytest.mark.parametrize("which", ["shipped", "strict"])
def test_openapi_example_itself_validates(request, which):
    """It gives an example request that passes validation with no unseen categories."""
    contract = request.getfixturevalue(which)
    schema = openapi_request_schema(contract, max_rows=MAX_ROWS)
    example = schema["example"]
    assert list(example) == ["instances"] and len(example["instances"]) == 1
    assert list(example["instances"][0]) == list(contract.features)
    batch = validate_instances(
        json.loads(json.dumps(example)), contract=contract, max_rows=MAX_ROWS
    )
    assert len(batch.frame) == 1
    assert dict(batch.unseen) == {}


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 5_000,  # orjson stops at depth 1024; the stdlib parser would recurse and crash
        b"[" * 40_000 + b"]" * 40_000,
        b'{"instances": [{"car": "\\ud800"}]}',  # a lone surrogate: not encodable text
        b'{"a": [1, 2',
    ],
    ids=["deep", "deep-balanced", "lone-surrogate", "truncated"],
)
def test_bodies_json_cannot_carry_are_a_400_not_a_crash(body):
    """It refuses deep nesting, lone surrogates and broken syntax as malformed JSON (400)."""
    with pytest.raises(RequestInvalid) as caught:
        parse_body(body, max_bytes=1 << 20)
    assert caught.value.status == 400 and caught.value.reason == "malformed_json"


def test_only_an_overflowing_number_takes_the_slow_parse():
    """It still parses 1e400 (valid JSON) so validation can name the row and field."""
    assert parse_body(b'{"x": 1e400}', max_bytes=100) == {"x": math.inf}


@pytest.mark.parametrize("value", [1e300, -1e39, 10**39])
def test_numbers_beyond_float32_are_refused_naming_the_field(shipped, value):
    """It refuses magnitudes the models' 32-bit inputs cannot hold (a forest would fail)."""
    exc = _refused(shipped, {"instances": [_row(loan=value)]})
    assert _where(exc) == [(0, "loan", "out_of_range")]
    assert _validate(shipped, [_row(loan=FLOAT32_MAX)]).columns["loan"] == [FLOAT32_MAX]


def _slow(rows: list[Any], contract: Contract) -> tuple[dict[str, list[Any]], dict[str, int]]:
    """What the row-by-row checks make of rows (every problem raises through them)."""
    from champion.service.validation import _check_row, _specs

    specs = _specs(contract)
    columns: dict[str, list[Any]] = {name: [] for name in contract.features}
    unseen: dict[str, int] = {}
    problems: list[Any] = []
    for i, row in enumerate(rows):
        _check_row(i, row, specs, columns, unseen, problems)
    assert problems == []
    return columns, unseen


def _known(contract: Contract) -> frozenset[str]:
    return frozenset(contract.features) | contract.droppable


@pytest.mark.parametrize("seed", range(40))
def test_the_column_fast_path_builds_what_the_row_checks_build(shipped, strict, seed):
    """It builds the same columns (values and their types) and unseen counts column by column
    as row by row, for clean rows with ints, nulls and unseen categories; and gives way to the
    row checks for anything they would refuse, so every problem is still named."""
    from champion.service.validation import _fast_columns, _specs

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(int(rng.integers(1, 60))):
        row = _row()
        for name, spec in shipped.features.items():
            draw = rng.random()
            if draw < 0.1:
                row[name] = None
            elif spec.type == "numeric" and draw < 0.3:
                row[name] = int(rng.integers(-5, 10**6))
            elif spec.type == "numeric" and draw < 0.35:
                row[name] = float(rng.choice([FLOAT32_MAX, -FLOAT32_MAX, 0.0]))
            elif spec.type != "numeric" and draw < 0.3:
                row[name] = f"unseen-{int(rng.integers(3))}"
        rows.append(row)
    fast = _fast_columns(rows, _specs(shipped), _known(shipped))
    assert fast is not None
    slow = _slow(rows, shipped)
    assert fast == slow
    # Keys the contract drops (the target a client copies from its CSV) keep the fast path.
    copied = [row | {shipped.target: 1} for row in rows]
    assert _fast_columns(copied, _specs(shipped), _known(shipped)) == slow
    for name in shipped.features:
        assert [type(v) for v in fast[0][name]] == [type(v) for v in slow[0][name]]
    # Off the fast path: each of these is refused by the row checks, with its own problem.
    spoilt = rows[int(rng.integers(len(rows)))]
    for bad in (
        {"salary": True},
        {"salary": "1.5"},
        {"salary": float("nan")},
        {"salary": 10**400},
        {"salary": FLOAT32_MAX * 2},
        {"car": 4},
        {"extra": 1},
    ):
        assert _fast_columns([*rows, spoilt | bad], _specs(shipped), _known(shipped)) is None, bad
    assert _fast_columns([*rows, [1, 2]], _specs(shipped), _known(shipped)) is None
    assert (
        _fast_columns(
            [*rows, {k: v for k, v in rows[0].items() if k != "age"}],
            _specs(shipped),
            _known(shipped),
        )
        is None
    )
    nulls = [r | {"salary": None} for r in rows]
    # salary is not nullable there
    assert _fast_columns(nulls, _specs(strict), _known(strict)) is None

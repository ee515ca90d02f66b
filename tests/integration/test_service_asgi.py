"""The service in-process through its ASGI app: predictions, refusals, probes, facts, admin."""

from __future__ import annotations

import functools
import json
import re
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
from starlette.testclient import TestClient

from champion.training.records import Verdict
from tests.integration.conftest import Project, make_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "asgi-test-admin-token"
MAX_ROWS = 50
MAX_BODY = 20_000
NOT_NULL = "salary"  # declared `nullable = false` in the served project's champion.toml
ADMIN = ("/admin/reload", "/admin/rollback", "/admin/retrain")
HEX_ID = re.compile(r"^[0-9a-f]{32}$")

ROW: dict[str, Any] = {
    "salary": 61000.0,
    "commission": 20000.0,
    "age": 45,
    "hvalue": 250000.0,
    "hyears": 12,
    "loan": 150000.0,
    "elevel": "e2",
    "car": "car4",
    "zipcode": "z3",
}


def _row(**changes: Any) -> dict[str, Any]:
    """ROW with values replaced; a value of `...` removes the feature."""
    row = dict(ROW)
    for key, value in changes.items():
        if value is ...:
            row.pop(key, None)
        else:
            row[key] = value
    return row


def _json_row(**raw_values: str) -> bytes:
    """ROW as JSON text with some values replaced by raw JSON tokens."""
    parts = [
        f'"{k}": {raw_values[k] if k in raw_values else json.dumps(v)}' for k, v in ROW.items()
    ]
    return ("{" + ", ".join(parts) + "}").encode()


def _bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@functools.cache
def _app() -> Any:
    """The service's ASGI app, built once: BentoML registers its HTTP metrics once per process.

    Every `with TestClient(app)` runs the lifespan again, which creates a fresh `Champion`
    from the environment of that moment, so one app serves every project and setting here.
    """
    from champion.service.app import Champion

    return Champion.to_asgi()


@contextmanager
def serving(
    project: Project, monkeypatch: pytest.MonkeyPatch, **env: str | None
) -> Iterator[TestClient]:
    """Start the service on `project` in-process (lifespan included); `None` unsets a variable."""
    from champion.training.config import get_settings

    settings = {
        "CHAMPION_SCHEDULER": "false",
        "CHAMPION_ADMIN_TOKEN": TOKEN,
        "CHAMPION_POLL_SECONDS": "3600",
        "CHAMPION_MAX_ROWS": str(MAX_ROWS),
        "CHAMPION_MAX_BODY_BYTES": str(MAX_BODY),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    for key, value in (project.env() | settings | env).items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        with TestClient(_app(), raise_server_exceptions=False) as client:
            yield client
    finally:
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def served_project(tmp_path_factory: pytest.TempPathFactory, template_db: Path) -> Project:
    """A project whose champion is v1, with `salary` made non-nullable in its champion.toml."""
    project = make_project(tmp_path_factory.mktemp("asgi") / "proj", template_db)
    project.simulate(2)
    result = project.cycle()
    assert result.verdict is Verdict.PROMOTE, result.reason
    path = project.root / "champion.toml"
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    raw["features"][NOT_NULL]["nullable"] = False
    path.write_text(tomli_w.dumps(raw), encoding="utf-8")
    return project


@pytest.fixture
def client(served_project: Project, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """A started service answering for `served_project`, admin token set."""
    with serving(served_project, monkeypatch) as client:
        yield client


def _predict(client: TestClient, payload: Any = None, **kw: Any) -> Any:
    if payload is not None:
        kw["json"] = payload
    return client.post("/predict", **kw)


def _refusal(response: Any, status: int) -> dict[str, Any]:
    """The JSON body of a refusal, after checking its status and shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["request_id"], str) and body["request_id"]
    return body


def _where(body: dict[str, Any]) -> list[tuple[int | None, str | None, str]]:
    return [(p["row"], p["field"], p["kind"]) for p in body["problems"]]


# -- predictions --------------------------------------------------------------------------------


def test_predict_returns_predictions_probabilities_and_the_version(client):
    """It predicts every row with class probabilities summing to 1 and names model version 1."""
    rows = [ROW, _row(salary=20000.0, age=70, loan=400000.0), _row(elevel="e0", car="car19")]
    response = _predict(client, {"instances": rows}, headers={"X-Request-ID": "req-42.a_b"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "1"
    assert body["request_id"] == "req-42.a_b"
    assert body["classes"] == [0, 1]
    assert len(body["predictions"]) == 3
    assert set(body["predictions"]) <= set(body["classes"])
    proba = np.asarray(body["probabilities"])
    assert proba.shape == (3, 2)
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert ((proba >= 0) & (proba <= 1)).all()
    chosen = [body["classes"][i] for i in proba.argmax(axis=1)]
    assert chosen == body["predictions"]


@pytest.mark.parametrize(
    "header", [None, "", "has spaces", "x" * 65, "semi;colon", "../etc"], ids=repr
)
def test_request_id_is_fresh_unless_a_valid_one_is_sent(client, header):
    """It answers with a new id when X-Request-ID is absent or unsafe, never echoing bad input."""
    headers = {} if header is None else {"X-Request-ID": header}
    first = _predict(client, {"instances": [ROW]}, headers=headers)
    second = _predict(client, {"instances": [ROW]}, headers=headers)
    assert first.status_code == second.status_code == 200, first.text
    ids = [first.json()["request_id"], second.json()["request_id"]]
    assert all(HEX_ID.match(i) for i in ids), ids
    assert ids[0] != ids[1]


def test_request_id_is_echoed_on_refusals_too(client):
    """It echoes a valid X-Request-ID on a refused request so the caller can trace it."""
    response = _predict(client, {"instances": []}, headers={"X-Request-ID": "trace-7"})
    assert _refusal(response, 422)["request_id"] == "trace-7"


def test_unknown_category_and_nullable_null_are_served(client):
    """It serves a row with a category outside the contract and a null in a nullable feature."""
    rows = [_row(elevel="e99", car="hovercraft"), _row(age=None, zipcode=None)]
    response = _predict(client, {"instances": rows})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["predictions"]) == 2 and body["model_version"] == "1"
    assert np.allclose(np.asarray(body["probabilities"]).sum(axis=1), 1.0)


def test_exactly_max_rows_is_served(client):
    """It serves a batch of exactly CHAMPION_MAX_ROWS rows."""
    response = _predict(client, {"instances": [ROW] * MAX_ROWS})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == MAX_ROWS


# -- refusals over HTTP -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "field", "kind"),
    [
        (_row(age=...), "age", "missing"),
        (_row(colour="red"), "colour", "unexpected"),
        (_row(salary="lots"), "salary", "wrong_type"),
        (_row(elevel=3), "elevel", "wrong_type"),
        (_row(loan=True), "loan", "wrong_type"),
        (_row(salary=None), NOT_NULL, "null"),
    ],
    ids=["missing", "extra", "string-for-number", "number-for-text", "bool", "null"],
)
def test_each_bad_value_is_a_422_naming_row_and_field(client, row, field, kind):
    """It refuses a bad value with 422 and names the row, field and kind of problem."""
    body = _refusal(_predict(client, {"instances": [ROW, row]}), 422)
    assert _where(body) == [(1, field, kind)]
    assert body["problems"][0]["problem"]


def test_number_overflowing_to_infinity_is_a_422(client):
    """It refuses 1e400 (valid JSON, infinite as a float) as not finite, naming row and field."""
    content = b'{"instances": [' + _json_row() + b", " + _json_row(hvalue="1e400") + b"]}"
    body = _refusal(_predict(client, content=content), 422)
    assert _where(body) == [(1, "hvalue", "not_finite")]


def test_every_problem_of_every_row_is_listed_over_http(client):
    """It lists every problem of a batch by row and field in one 422 answer."""
    rows = [
        _row(age=..., elevel=7),
        ROW,
        _row(salary=None, loan="a lot", extra_field=1),
        "not an object",
        _row(hyears=False, zipcode=...),
    ]
    body = _refusal(_predict(client, {"instances": rows}), 422)
    assert _where(body) == [
        (0, "age", "missing"),
        (0, "elevel", "wrong_type"),
        (2, "salary", "null"),
        (2, "loan", "wrong_type"),
        (2, "extra_field", "unexpected"),
        (3, None, "not_object"),
        (4, "hyears", "wrong_type"),
        (4, "zipcode", "missing"),
    ]
    assert body["error"] == "8 problem(s) in the instances"


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_tokens_are_a_400(client, token):
    """It refuses a body with a NaN/Infinity token as malformed JSON (400)."""
    content = b'{"instances": [' + _json_row(salary=token) + b"]}"
    body = _refusal(_predict(client, content=content), 400)
    assert "malformed JSON" in body["error"]


@pytest.mark.parametrize(
    "content", [b"", b"{", b'{"instances": [', b"instances=1", b"\xff\xfe\x00"], ids=repr
)
def test_malformed_json_is_a_400(client, content):
    """It refuses a body that is not JSON with 400."""
    body = _refusal(_predict(client, content=content), 400)
    assert body["error"].startswith("malformed JSON")


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"instances": []}, "'instances' is empty"),
        ({"instances": [ROW] * (MAX_ROWS + 1)}, f"{MAX_ROWS + 1} rows; at most {MAX_ROWS}"),
        ({"rows": [ROW]}, '{"instances": [...]}'),
        ([ROW], '{"instances": [...]}'),
        ({"instances": ROW}, "must be a list"),
        ({"instances": [ROW], "model": "2"}, "unexpected top-level keys ['model']"),
    ],
    ids=["empty", "over-max-rows", "no-instances", "bare-list", "not-a-list", "extra-key"],
)
def test_bad_batches_are_a_422(client, payload, words):
    """It refuses an empty, oversized or misshapen batch with 422 and says why."""
    body = _refusal(_predict(client, payload), 422)
    assert words in body["error"]


def test_body_over_the_limit_with_content_length_is_a_413(client):
    """It refuses a body whose Content-Length exceeds CHAMPION_MAX_BODY_BYTES, before reading it."""
    content = b'{"instances": []}' + b" " * MAX_BODY
    body = _refusal(_predict(client, content=content), 413)
    assert f"request body too large: {len(content)} bytes, limit {MAX_BODY}" in body["error"]


def test_chunked_body_over_the_limit_is_a_413(client):
    """It refuses a generator body (chunked, no Content-Length) past the limit with 413."""

    def chunks() -> Iterator[bytes]:
        for _ in range(3 * MAX_BODY // 1000):
            yield b" " * 1000

    body = _refusal(client.post("/predict", content=chunks()), 413)
    assert body["error"] == f"request body too large: over {MAX_BODY} bytes"


def test_streamed_body_is_not_read_past_the_limit(client):
    """It stops pulling a streamed body once past the limit, so the rest is never buffered."""
    chunk, total = b" " * 1000, 3 * MAX_BODY // 1000
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled >= total:
            return {"type": "http.disconnect"}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": pulled < total}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("testclient", 50000),
        "server": ("testserver", 80),
        "state": dict(client.app_state),
    }
    client.portal.call(_app(), scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 413
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"].endswith("body")))
    assert body["error"] == f"request body too large: over {MAX_BODY} bytes"
    assert pulled == MAX_BODY // len(chunk) + 1  # the first chunk past the limit, no more


def test_integer_beyond_float_range_is_refused_not_a_500(client):
    """It refuses a JSON integer too large for a float with a 422, not an internal error."""
    content = b'{"instances": [' + _json_row(salary="1" + "0" * 400) + b"]}"
    response = _predict(client, content=content)
    assert response.status_code == 422, response.text
    assert [(p["row"], p["field"]) for p in response.json()["problems"]] == [(0, "salary")]


# -- model facts and probes ---------------------------------------------------------------------


def _confirmed(client: TestClient) -> None:
    """Wait until the poller's first check confirmed the cached champion with the registry."""
    deadline = time.monotonic() + 20
    while client.get("/readyz").json().get("source") != "registry":
        assert time.monotonic() < deadline, "the cached champion was never confirmed"
        time.sleep(0.05)


def test_model_describes_the_champion_and_the_last_verdict(client, served_project):
    """It reports version, digest, source, CV metrics, training rows and the last verdict."""
    _confirmed(client)
    response = client.get("/model")
    assert response.status_code == 200, response.text
    body = response.json()
    ref = served_project.registry().alias("champion")
    assert body["version"] == "1"
    assert body["sha256"] == ref.sha256 and re.fullmatch(r"[0-9a-f]{64}", body["sha256"])
    assert body["source"] == "registry"
    assert body["ready"] is True and body["model_name"] == "loan-approval"
    assert "cv_roc_auc_mean" in body["cv_metrics"]
    assert 0.5 < body["cv_metrics"]["cv_roc_auc_mean"] <= 1.0
    assert not any("_fold_" in k for k in body["cv_metrics"])
    assert body["trained_on"]["rows"] == 1200
    assert body["trained_on"]["batches"] == 2
    assert body["last_verdict"]["verdict"] == "PROMOTE"
    assert body["last_verdict"]["champion_after"] == "1"


def test_probes_say_ready_with_version_1(client):
    """It answers /readyz 200 with model_version 1, and /livez 200."""
    _confirmed(client)
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["ready"] is True
    assert ready.json()["model_version"] == "1"
    assert ready.json()["source"] == "registry"
    live = client.get("/livez")
    assert live.status_code == 200 and live.json() == {"alive": True}


def test_probes_before_the_service_starts_answer_without_an_error():
    """It answers /livez 200 and /readyz 503 'starting' while no service instance exists yet."""
    from champion.service.app import FastPath

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the probes are answered by the middleware itself")

    # Between lifespans (every `serving` block here has ended) BentoML has no current service.
    probes = TestClient(FastPath(inner), raise_server_exceptions=False)
    live = probes.get("/livez")
    ready = probes.get("/readyz")
    assert live.status_code == 200, live.text
    assert live.json() == {"alive": True}
    assert ready.status_code == 503, ready.text
    assert ready.json() == {"ready": False, "reason": "starting"}
    early = probes.post("/predict", json={"instances": []})
    assert early.status_code == 503 and "starting" in early.json()["error"]


def test_predict_is_answered_ahead_of_fastapi_routing(monkeypatch):
    """POST /predict goes straight to its one handler, other methods get a 405; the rest
    reaches the app."""
    import champion.service.app as app_module
    from champion.service.app import FastPath

    reached: list[str] = []

    class Service:
        async def answer(self, scope: Any, receive: Any) -> Any:
            from fastapi.responses import JSONResponse

            body = await app_module._receive_limited(receive, None, 1000)
            return JSONResponse({"echo": len(body)})

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        from fastapi.responses import JSONResponse

        reached.append(f"{scope['method']} {scope['path']}")
        await JSONResponse({"inner": True})(scope, receive, send)

    monkeypatch.setattr(app_module, "_current_service", lambda: Service())
    client = TestClient(FastPath(inner))
    assert client.post("/predict", content=b"12345").json() == {"echo": 5}
    wrong = client.get("/predict")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    wrong = client.get("/v2/models/m/infer")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert client.post("/feedback", content=b"{}").json() == {"inner": True}
    assert reached == ["POST /feedback"]


# -- admin --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ADMIN)
def test_admin_is_disabled_without_a_configured_token(served_project, monkeypatch, path):
    """It answers 403 on every admin endpoint when CHAMPION_ADMIN_TOKEN is not set."""
    with serving(served_project, monkeypatch, CHAMPION_ADMIN_TOKEN=None) as client:
        for headers in ({}, _bearer(), _bearer("")):
            response = client.post(path, headers=headers, json={"reason": "test"})
            assert response.status_code == 403, response.text
            assert "admin endpoints are disabled" in response.json()["error"]


@pytest.mark.parametrize("path", ADMIN)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "no-scheme", "basic", "bearer-empty"],
)
def test_admin_without_a_bearer_token_is_a_401(client, path, headers):
    """It answers 401 with WWW-Authenticate: Bearer when no bearer token is sent."""
    response = client.post(path, headers=headers, json={"reason": "test"})
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in response.json()["error"]


@pytest.mark.parametrize("path", ADMIN)
@pytest.mark.parametrize("token", ["wrong", TOKEN + "x", TOKEN[:-1], TOKEN.upper()])
def test_admin_with_a_wrong_token_is_a_403(client, path, token):
    """It answers 403 to a bearer token that is not the configured one."""
    response = client.post(path, headers=_bearer(token), json={"reason": "test"})
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "wrong admin token"


def test_reload_with_the_right_token_is_a_200(client):
    """It reloads with the right token and reports no swap when the champion has not moved."""
    response = client.post("/admin/reload", headers=_bearer())
    assert response.status_code == 200, response.text
    assert response.json() == {"swapped": False, "model_version": "1"}


@pytest.mark.parametrize(
    "kw",
    [{}, {"json": {}}, {"json": {"reason": ""}}, {"json": {"reason": "  "}}, {"json": ["x"]}],
    ids=["no-body", "no-reason", "empty", "blank", "not-an-object"],
)
def test_rollback_without_a_reason_is_a_422(client, served_project, kw):
    """It refuses a rollback without a reason (422) and leaves the champion alone."""
    response = client.post("/admin/rollback", headers=_bearer(), **kw)
    assert response.status_code == 422, response.text
    assert "a reason is required" in response.json()["error"]
    assert served_project.registry().aliases()["champion"] == "1"


def test_rollback_with_malformed_json_is_a_400(client):
    """It refuses a rollback body that is not JSON with 400."""
    response = client.post("/admin/rollback", headers=_bearer(), content=b"{reason")
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("malformed JSON")


def test_rollback_without_a_previous_version_is_a_409(client, served_project):
    """It refuses a rollback with 409 and a clear message when there is no `previous` version."""
    response = client.post("/admin/rollback", headers=_bearer(), json={"reason": "bad model"})
    assert response.status_code == 409, response.text
    assert "nothing to roll back to" in response.json()["error"]
    assert "previous" in response.json()["error"]
    aliases = served_project.registry().aliases()
    assert aliases["champion"] == "1" and "previous" not in aliases
    assert not any(e.get("event") == "rollback" for e in served_project.ledger().entries())


# -- no champion yet ----------------------------------------------------------------------------


def test_without_a_champion_it_is_not_ready_then_reload_serves(project, monkeypatch):
    """It starts without a champion (503s with reasons), then serves after a cycle and reload."""
    project.simulate(2)
    with serving(project, monkeypatch) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.json()["ready"] is False
        assert ready.json()["model_version"] is None
        assert ready.json()["reason"]
        assert client.get("/livez").status_code == 200

        refused = _predict(client, {"instances": [ROW]})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"].startswith("no champion model is loaded yet")
        assert HEX_ID.match(refused.json()["request_id"])
        invalid = _predict(client, {"instances": []})
        assert invalid.status_code == 422, invalid.text  # bad requests are still told why

        model = client.get("/model")
        assert model.status_code == 200, model.text
        assert model.json()["ready"] is False and "version" not in model.json()

        assert project.cycle().verdict is Verdict.PROMOTE
        reloaded = client.post("/admin/reload", headers=_bearer())
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json() == {"swapped": True, "model_version": "1"}

        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["model_version"] == "1"
        served = _predict(client, {"instances": [ROW]})
        assert served.status_code == 200, served.text
        assert served.json()["model_version"] == "1"


# -- OpenAPI ------------------------------------------------------------------------------------


def test_openapi_describes_the_request_from_the_contract(client, served_project):
    """It publishes a PredictRequest schema listing the contract's features, used by /predict."""
    response = client.get("/openapi.json")
    assert response.status_code == 200, response.text
    schema = response.json()
    request = schema["components"]["schemas"]["PredictRequest"]
    row = request["properties"]["instances"]
    assert row["maxItems"] == MAX_ROWS
    props = row["items"]["properties"]
    contract = served_project.contract
    assert list(props) == [*contract.features, *sorted(contract.droppable)]
    salary = props[NOT_NULL]
    assert salary["type"] == "number" and salary["title"] == "Yearly salary"
    assert salary["maximum"] == -salary["minimum"] == pytest.approx(3.4028235e38)
    assert "Must not be null" in salary["description"]
    # Unseen categories are served by design: the schema must not forbid them with an enum.
    elevel = next(alt for alt in props["elevel"]["anyOf"] if alt["type"] == "string")
    assert "enum" not in elevel and elevel["examples"] == ["e0", "e1", "e2", "e3", "e4"]
    assert "any other string is accepted" in props["elevel"]["description"]
    body = schema["paths"]["/predict"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/PredictRequest"
    example = request["example"]
    answer = _predict(client, example)
    assert answer.status_code == 200, answer.text


def test_docs_page_is_served(client):
    """It serves the Swagger UI at /docs, pointing at /openapi.json."""
    response = client.get("/docs")
    assert response.status_code == 200, response.text
    assert "swagger" in response.text.lower()
    assert "/openapi.json" in response.text


def test_a_failure_past_the_model_is_a_counted_clean_500(served_project, monkeypatch):
    """It answers a clean 500 and counts outcome "error" when capturing the answer fails, so
    champion's own metrics see every failure with BentoML's request metrics off."""
    from champion.service.app import Champion

    def boom(self: Any, *args: Any) -> None:
        raise RuntimeError("capture broke")

    monkeypatch.setattr(Champion.inner, "_capture", boom)
    with serving(served_project, monkeypatch) as client:

        def errors() -> float:
            text = client.get("/metrics").text
            found = re.search(
                r'^champion_request_duration_seconds_count\{outcome="error",version="1"\} (\S+)',
                text,
                re.M,
            )
            return float(found.group(1)) if found else 0.0

        before = errors()
        response = _predict(client, {"instances": [ROW]})
        assert response.status_code == 500, response.text
        assert response.json()["error"] == "the service failed to answer this request"
        assert errors() == before + 1
        # The service answers on: the next request fails the same way, cleanly.
        assert _predict(client, {"instances": [ROW]}).status_code == 500


def test_the_started_service_keeps_its_long_lived_objects_out_of_the_collectors_walk(
    served_project, monkeypatch
):
    """It freezes what is alive once it serves (modules, model, framework), so a full garbage
    collection under load walks only young objects instead of a few hundred thousand."""
    import gc

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    with serving(served_project, monkeypatch) as client:
        assert _predict(client, {"instances": [ROW]}).status_code == 200
        assert gc.get_freeze_count() > 50_000
    gc.unfreeze()


def test_with_the_shared_database_down_it_serves_and_answers_503_where_it_needs_state(
    served_project, monkeypatch
):
    """It starts and predicts with its shared database unreachable (shared mode, a database
    that refuses connections), and answers 503 with Retry-After, never a 500, where a
    request needs the database: feedback, the drift summary."""
    feedback = "asgi-down-feedback-token"
    with serving(
        served_project,
        monkeypatch,
        CHAMPION_DATABASE_URL="postgresql://champion:secret@127.0.0.1:1/champion",
        CHAMPION_FEEDBACK_TOKEN=feedback,
        CHAMPION_SCHEDULER="true",  # its lease store is down too: it stands by
    ) as client:
        r = client.post("/predict", json={"instances": [ROW]}, headers={"X-Request-ID": "down-1"})
        assert r.status_code == 200, r.text
        r = client.post(
            "/feedback",
            json=[{"request_id": "down-1", "row": 0, "label": 1}],
            headers={"Authorization": f"Bearer {feedback}"},
        )
        assert r.status_code == 503, r.text
        assert "nothing was written" in r.json()["error"] and r.headers["Retry-After"]
        assert "secret" not in r.text
        r = client.get("/drift")
        assert r.status_code == 503, r.text
        assert client.get("/readyz").status_code == 200

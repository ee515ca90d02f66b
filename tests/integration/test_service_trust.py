"""The service refuses what it must: anonymous or mistyped labels, hostile bodies, internals."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from champion.training.records import Verdict
from tests.integration import test_service_asgi as asgi
from tests.integration.conftest import Project, make_project
from tests.integration.test_service_asgi import ROW, _bearer, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]

served_project = asgi.served_project  # the same module-scoped project with a champion v1
FEEDBACK_TOKEN = "trust-feedback-token"
FEEDBACK = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}


@pytest.fixture
def client(served_project: Project, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """A started service with an admin and a feedback token."""
    with serving(served_project, monkeypatch, CHAMPION_FEEDBACK_TOKEN=FEEDBACK_TOKEN) as client:
        yield client


def _predicted(client: TestClient, rid: str, rows: int = 1) -> None:
    r = client.post("/predict", json={"instances": [ROW] * rows}, headers={"X-Request-ID": rid})
    assert r.status_code == 200, r.text


def _problems(response: Any) -> list[tuple[Any, Any, str]]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"]
    return [(p["row"], p["field"], p["problem"]) for p in body["problems"]]


# -- 1. feedback writes training data: it needs its own token --------------------------------


def test_feedback_is_disabled_without_a_feedback_token(served_project, monkeypatch):
    """It answers 403 on /feedback when CHAMPION_FEEDBACK_TOKEN is not set, admin token or not."""
    with serving(served_project, monkeypatch, CHAMPION_FEEDBACK_TOKEN=None) as client:
        _predicted(client, "anon-1")
        for headers in ({}, _bearer(), FEEDBACK):
            r = client.post("/feedback", json={"request_id": "anon-1", "label": 1}, headers=headers)
            assert r.status_code == 403, r.text
            assert "CHAMPION_FEEDBACK_TOKEN" in r.json()["error"]


def test_feedback_needs_the_feedback_token_not_the_admin_one(client):
    """It answers 401 without a bearer token and 403 with the admin token or a wrong one."""
    _predicted(client, "auth-1")
    item = {"request_id": "auth-1", "label": 1}
    missing = client.post("/feedback", json=item)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert client.post("/feedback", json=item, headers=_bearer()).status_code == 403
    assert client.post("/feedback", json=item, headers=_bearer("nope")).status_code == 403
    assert client.post("/feedback", json=item, headers=FEEDBACK).json() == {"labelled": 1}


@pytest.mark.parametrize(
    "label", [True, False, "1", "0", 1.5, 2, -1, [1], {"v": 1}], ids=lambda v: repr(v)
)
def test_labels_outside_the_declared_classes_are_refused(client, label):
    """It refuses a label that is not one of the contract's classes with its type (true ≠ 1)."""
    rid = f"typed-{abs(hash(repr(label)))}"
    _predicted(client, rid)
    r = client.post("/feedback", json={"request_id": rid, "label": label}, headers=FEEDBACK)
    assert _problems(r) == [(0, "label", "must be one of the classes [0, 1]")]


def test_an_integral_float_label_is_the_integer_class(client):
    """It takes JSON's 1.0 as the class 1 (JSON does not tell them apart), stored as 1."""
    _predicted(client, "float-1")
    r = client.post("/feedback", json={"request_id": "float-1", "label": 1.0}, headers=FEEDBACK)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("row", [9223372036854775808, 2**70, -1, 50, "0", 0.5, True])
def test_row_outside_a_request_is_a_422(client, row):
    """It refuses a row index no request can have (beyond SQLite's integers too), not a 500."""
    _predicted(client, "rows-1")
    r = client.post(
        "/feedback", json={"request_id": "rows-1", "row": row, "label": 1}, headers=FEEDBACK
    )
    assert _problems(r) == [(0, "row", "must be an integer from 0 to 49")]


def test_feedback_over_the_rate_is_a_429_with_retry_after(served_project, monkeypatch):
    """It bounds labels per worker: past the burst, 429 with Retry-After; nothing written."""
    with serving(
        served_project,
        monkeypatch,
        CHAMPION_FEEDBACK_TOKEN=FEEDBACK_TOKEN,
        CHAMPION_FEEDBACK_BURST_LABELS="3",
        CHAMPION_FEEDBACK_LABELS_PER_SECOND="0.01",
    ) as client:
        _predicted(client, "burst-1", rows=5)
        items = [{"request_id": "burst-1", "row": i, "label": 1} for i in range(5)]
        assert client.post("/feedback", json=items[:3], headers=FEEDBACK).status_code == 200
        limited = client.post("/feedback", json=items[3:], headers=FEEDBACK)
        assert limited.status_code == 429, limited.text
        assert int(limited.headers["Retry-After"]) >= 1
        assert "labels/s" in limited.json()["error"]


# -- 4 and 10. hostile bodies are a 400, answered at once ------------------------------------


@pytest.mark.parametrize("path", ["/predict", "/feedback"])
@pytest.mark.parametrize(
    "body",
    [b"[" * 5_000, b"[" * 7_000 + b"]" * 7_000, b'{"instances": [{"car": "\\ud800"}]}'],
    ids=["deep-5000", "deep-balanced", "lone-surrogate"],
)
def test_hostile_json_is_a_400_answered_at_once(client, path, body):
    """It refuses deep nesting and lone surrogates as malformed JSON, quickly, never a 500."""
    started = time.monotonic()
    r = client.post(path, content=body, headers=FEEDBACK)
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("malformed JSON")
    assert time.monotonic() - started < 5  # a stalled worker would take 30 s or more


def test_a_value_beyond_float32_is_a_422_whatever_serves(client):
    """It refuses 1e300, which a forest served by scikit-learn would fail on, naming the field."""
    r = client.post("/predict", json={"instances": [dict(ROW, loan=1e300)]})
    assert r.status_code == 422, r.text
    assert [(p["field"], p["kind"]) for p in r.json()["problems"]] == [("loan", "out_of_range")]


# -- 5. request handlers never block the event loop -----------------------------------------


def _blocks_while(
    client: TestClient, slow: Callable[[], Any], gate: threading.Event
) -> tuple[int, float]:
    """Start `slow` in a thread (it waits on `gate`); time a /predict meanwhile."""
    worker = threading.Thread(target=slow, daemon=True)
    worker.start()
    time.sleep(0.3)  # the slow request is now inside its handler
    started = time.monotonic()
    done: list[int] = []
    predictor = threading.Thread(
        target=lambda: done.append(client.post("/predict", json={"instances": [ROW]}).status_code),
        daemon=True,
    )
    predictor.start()
    predictor.join(timeout=10)
    elapsed = time.monotonic() - started
    gate.set()
    worker.join(timeout=10)
    return (done[0] if done else 0), elapsed


def test_feedback_waiting_on_the_log_does_not_block_predictions(client, monkeypatch):
    """It labels in a thread: /predict is answered while a /feedback waits on the database."""
    from champion.monitoring.capture import PredictionLog

    gate = threading.Event()
    real = PredictionLog.label

    def slow_label(self: Any, items: Any) -> Any:
        gate.wait(10)
        return real(self, items)

    monkeypatch.setattr(PredictionLog, "label", slow_label)
    _predicted(client, "slow-1")
    status, elapsed = _blocks_while(
        client,
        lambda: client.post(
            "/feedback", json={"request_id": "slow-1", "label": 1}, headers=FEEDBACK
        ),
        gate,
    )
    assert status == 200 and elapsed < 5


def test_rollback_waiting_on_the_lease_does_not_block_predictions(client, monkeypatch):
    """It rolls back in a thread: /predict is answered while /admin/rollback waits."""
    from champion.training import actions

    gate = threading.Event()

    def slow_rollback(**kw: Any) -> Any:
        gate.wait(10)
        raise actions.ChampionError("nothing to roll back to")

    monkeypatch.setattr(actions, "rollback", slow_rollback)
    status, elapsed = _blocks_while(
        client,
        lambda: client.post("/admin/rollback", json={"reason": "drill"}, headers=_bearer()),
        gate,
    )
    assert status == 200 and elapsed < 5


# -- 6. a stale model cache is never taken for the champion ---------------------------------


def test_a_cache_from_another_registry_is_not_served(
    served_project, tmp_path, template_db, monkeypatch
):
    """It downloads the registry's v1 when the cache holds another model numbered v1."""
    other = make_project(tmp_path / "other", template_db)
    other.simulate(2, seed=91)
    assert other.cycle().verdict is Verdict.PROMOTE
    with serving(other, monkeypatch):  # fills other's cache with its own v1
        pass
    cache = served_project.settings.cache_dir
    shutil.rmtree(cache, ignore_errors=True)
    shutil.copytree(other.settings.cache_dir, cache)  # as after a re-created registry
    with serving(served_project, monkeypatch) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        model = client.get("/model").json()
        assert model["version"] == "1" and model["source"] == "registry"
        assert model["sha256"] == served_project.registry().alias("champion").sha256
        assert model["sha256"] != other.registry().alias("champion").sha256


# -- 9. public answers name no registry URL or path -----------------------------------------


def test_public_answers_hide_registry_urls_and_paths(project, monkeypatch):
    """It says the registry is unreachable on /readyz, /model and 503s without its URL."""
    secret_url = "http://127.0.0.1:9/secret-registry-path"
    with serving(
        project,
        monkeypatch,
        MLFLOW_TRACKING_URI=secret_url,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="2",
    ) as client:
        answers = [
            client.get("/readyz"),
            client.get("/model"),
            client.post("/predict", json={"instances": [ROW]}),
        ]
    for r in answers:
        text = r.text
        assert "127.0.0.1:9" not in text and "secret-registry-path" not in text, text
        assert str(project.root) not in text, text
    assert answers[0].status_code == 503 and "registry unreachable" in answers[0].json()["reason"]
    assert answers[2].status_code == 503


# -- 15. what the OpenAPI document says is what the service does -----------------------------


@pytest.mark.parametrize(("method", "path"), [("DELETE", "/livez"), ("POST", "/readyz")])
def test_probes_answer_get_only(client, method, path):
    """It answers another method on a probe with 405 and Allow, as the schema declares GET."""
    r = client.request(method, path)
    assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD", r.text
    assert r.json()["error"]


def test_a_method_a_route_does_not_take_is_a_405_naming_the_problem(client):
    """It answers GET /predict and GET /feedback with 405 and an `error` body like every other
    refusal, saying which methods are allowed."""
    r = client.get("/predict")
    assert r.status_code == 405 and r.json()["error"] == "/predict answers POST only", r.text
    assert r.headers["allow"] == "POST"
    r = client.get("/feedback")
    assert r.status_code == 405 and r.json()["error"] == "Method Not Allowed", r.text
    assert r.headers["allow"] == "POST"


def test_an_integral_float_row_is_the_integer_row(client):
    """It takes `"row": 0.0` as row 0: JSON Schema's integer admits it."""
    _predicted(client, "float-row")
    r = client.post(
        "/feedback", json={"request_id": "float-row", "row": 0.0, "label": 1}, headers=FEEDBACK
    )
    assert r.status_code == 200, r.text

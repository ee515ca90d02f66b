"""The BentoML service: predictions from the champion, probes, model facts, admin actions."""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import math
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import bentoml
import numpy as np
import orjson
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, SecretStr
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send
from threadpoolctl import threadpool_limits

from champion.monitoring.capture import Captured
from champion.service import v2
from champion.service.ratelimit import TokenBucket
from champion.service.scheduler import CycleOutcome, RetrainScheduler
from champion.service.stack import SERVICE_CONFIG, metrics_text
from champion.service.validation import (
    Problem,
    RequestInvalid,
    finite,
    openapi_feedback_schema,
    openapi_request_schema,
    parse_body,
    validate_instances,
)
from champion.training.errors import StoreUnavailable
from champion.training.records import Event, LedgerEntry, Verdict

if TYPE_CHECKING:  # the model stack (MLflow, skops, scikit-learn) loads in the worker only
    from champion.monitoring.watch import Watch
    from champion.service.slot import Served
    from champion.training.ports import ModelRegistry

log = logging.getLogger(__name__)

api = FastAPI(
    title="champion",
    description="Predictions from the current champion model; see GET /model for which one.",
    docs_url="/docs",
    openapi_url="/openapi.json",
)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@api.get("/metrics", include_in_schema=False)
async def _metrics() -> Response:
    # BentoML's own /metrics route exists only while its metrics are on (stack.py): this one
    # answers otherwise, with the same multiprocess collection.
    body, media_type = await asyncio.to_thread(metrics_text)
    return Response(body, media_type=media_type)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # FastAPI's own refusals (405 for a method a route does not take) answer like ours do.
    return JSONResponse(
        {"error": str(exc.detail), "problems": []},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


@api.exception_handler(StoreUnavailable)
async def _store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
    # The shared database does not answer: a state the client may retry, not a bug.
    log.warning("store unavailable", extra={"path": request.url.path, "error": str(exc)})
    return JSONResponse(
        {"error": f"{exc}; nothing was written, retry later", "problems": []},
        status_code=503,
        headers={"Retry-After": "5"},
    )


class PredictResponse(BaseModel):
    predictions: list[Any] = Field(description="One prediction per instance, in order.")
    probabilities: list[list[float]] | None = Field(
        default=None, description="Class probabilities per instance (classification only)."
    )
    classes: list[Any] | None = Field(default=None, description="Class order of probabilities.")
    model_version: str = Field(description="Registered version that answered.", examples=["3"])
    request_id: str = Field(description="Echoes X-Request-ID, or a new id.")


class FeedbackResponse(BaseModel):
    labelled: int = Field(description="Labels joined to captured predictions.")


class ErrorBody(BaseModel):
    error: str = Field(description="What went wrong, in one sentence.")
    problems: list[dict[str, Any]] = Field(
        default_factory=list, description="Every problem found: row, field, kind, problem."
    )


_STATUS = {
    400: "Malformed JSON.",
    401: "No `Authorization: Bearer` token.",
    403: "Wrong token, or the endpoint is disabled (no token configured).",
    404: "Not found.",
    409: "Conflicts with the current state; nothing changed.",
    413: "Body over CHAMPION_MAX_BODY_BYTES.",
    422: "The body does not fit; every problem is listed.",
    429: "Over this worker's rate; see Retry-After.",
    503: "No champion loaded yet, or the registry is unreachable.",
}


def _errors(*codes: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses: every one an endpoint can answer."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        text = described.get(f"s{code}", _STATUS[code])
        out[code] = {"model": ErrorBody, "description": text}
    return out


class _ORJSON(JSONResponse):
    """JSON via orjson: NumPy arrays serialised directly, several times faster than json."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_plain, option=orjson.OPT_SERIALIZE_NUMPY)


def _plain(value: Any) -> Any:
    # What orjson leaves to us: arrays of text or objects (string class labels), NumPy scalars.
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _json(content: Any, status: int = 200) -> JSONResponse:
    return _ORJSON(content, status_code=status)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _integral(value: Any) -> Any:
    """JSON does not tell 3.0 from 3 (nor does JSON Schema's integer): take it as the int."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def _predict_operation() -> dict[str, Any]:
    """OpenAPI for POST /predict (answered by FastPath, so FastAPI does not describe it)."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    responses: dict[str, Any] = {
        str(code): {"description": _STATUS[code], "content": error} for code in (400, 413, 422, 503)
    }
    responses["200"] = {
        "description": "One prediction per instance, from the model named in `model_version`.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}
        },
    }
    return {
        "summary": "Predict with the current champion",
        "operationId": "predict",
        "responses": responses,
    }


def _model_in(path: str) -> str:
    """The model name in /v2/models/{name}/infer."""
    return path.removeprefix("/v2/models/").removesuffix("/infer")


def _receiver(body: bytes) -> Receive:
    """An ASGI `receive` that delivers `body` in one message."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class _ApiError(BentoMLException):
    """A refused prediction as BentoML's API layer reports it (status and our error body)."""

    def __init__(self, status: int, payload: dict[str, Any]) -> None:
        super().__init__(str(payload.get("error", "prediction refused")))
        self.error_code = HTTPStatus(status)
        self.payload = payload


def _current_service() -> Any:
    try:
        return bentoml.get_current_service()
    except BentoMLException:  # raised, not None, before start-up and after shutdown
        return None


class FastPath:
    """ASGI handler ahead of FastAPI for the hot and the probe paths.

    /predict is routed here to `Champion.predict`, its only handler, without FastAPI's
    routing, dependency and exception layers: measured at about 0.5 ms of CPU per request on
    this service's machine, a third of what the framework costs in all.  /livez and /readyz
    are answered here too, so readiness can say which model is loaded.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == "/predict":
                await self._post(scope, receive, send, what="/predict", handler="answer")
                return
            elif path.startswith("/v2/models/") and path.endswith("/infer"):
                await self._post(scope, receive, send, what="v2 infer", handler="answer_v2")
                return
            elif path in ("/livez", "/readyz") and scope["method"] not in ("GET", "HEAD"):
                response = _error(405, f"{path} answers GET only")
                response.headers["Allow"] = "GET, HEAD"
                await response(scope, receive, send)
                return
            elif path == "/livez":
                await JSONResponse({"alive": True})(scope, receive, send)
                return
            elif path == "/readyz":
                svc = _current_service()
                if svc is None:
                    response = JSONResponse({"ready": False, "reason": "starting"}, status_code=503)
                else:
                    body = svc.readiness() | {"server": _server_stack()}
                    response = JSONResponse(body, status_code=200 if body["ready"] else 503)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _post(scope: Scope, receive: Receive, send: Send, *, what: str, handler: str) -> None:
        """A POST-only prediction route: 405 for other methods, 503 before start-up, else the
        service's `handler` answers."""
        if scope["method"] != "POST":
            response = _error(405, f"{what} answers POST only")
            response.headers["Allow"] = "POST"
        elif (svc := _current_service()) is None:
            response = _error(503, "the service is starting: no worker is ready yet")
        else:
            try:
                response = await getattr(svc, handler)(scope, receive)
            except ClientDisconnect:
                return  # nobody left to answer
        await response(scope, receive, send)


def _settle() -> None:
    """Move every object alive now (modules, the model, the framework) out of the garbage
    collector's reach: a full collection would otherwise walk a few hundred thousand of them,
    a pause of 100 ms and more on some request whenever young long-lived objects (captured
    rows, BentoML's request timers) pile up enough to trigger one. At 2,500 req/s open-loop,
    p99 310-330 ms without, 6-7 ms with. Cyclic garbage among the frozen objects is kept until
    the process ends, a bounded cost: freezing happens at start, after the first registry
    check and at model swaps only."""
    gc.freeze()


def _server_stack() -> dict[str, str]:
    """Which event loop and HTTP parser serve: uvicorn silently falls back to slower ones."""
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    http = "httptools" if "uvicorn.protocols.http.httptools_impl" in sys.modules else "h11"
    return {"loop": loop, "http": http}


@bentoml.service(name="champion", **SERVICE_CONFIG)
@bentoml.asgi_app(api, path="/")
class Champion:
    """One worker: a model slot following the registry, and a scheduler candidate."""

    def __init__(self) -> None:
        from champion.monitoring.metrics import service_metrics
        from champion.service.root import build
        from champion.service.slot import ModelSlot, recorded_champion

        self.components = parts = build()
        # uvicorn logs every request to "uvicorn.access" at INFO, which the root logger
        # configured above would format and write: a JSON line per request that nobody asked
        # for. BentoML's access log is the configurable one (service/stack.py).
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
        self.settings = settings = parts.settings
        self.contract = contract = parts.contract
        # One request is one small predict: thread pools only add start-up and contention.
        threadpool_limits(limits=settings.serve_threads)
        self.ledger = parts.ledger
        self.metrics = metrics = service_metrics(tuple(contract.features))
        self._served_version: str | None = None
        self.slot = ModelSlot(
            registry=lambda: parts.registry,  # MLflow loads after the cached champion serves
            contract=contract,
            cache_dir=settings.cache_dir,
            on_swap=self._on_swap,
            on_swap_failure=lambda _: metrics.swap_failures.inc(),
            on_error=lambda: metrics.background_error("slot"),
            on_first_check=_settle,  # the registry client's objects, made in the poller
            threads=settings.serve_threads,
        )
        self._feedback_bucket = TokenBucket(
            rate=settings.feedback_labels_per_second, burst=settings.feedback_burst_labels
        )
        self._start_capture()
        self._watch: Watch | None = None
        self._watch_lock = threading.Lock()
        self.scheduler = self._scheduler()
        self._details: dict[str, dict[str, Any]] = {}
        schema = self._openapi()
        # FastAPI regenerates a cached schema when its routes change; replace the builder.
        api.openapi = lambda: schema  # type: ignore[method-assign]
        self.slot.start(poll_seconds=settings.poll_seconds, recorded=recorded_champion(self.ledger))
        # Shared mode: an alias move anywhere wakes this worker's slot at once.
        self.swap_listener = parts.swap_listener(
            on_notice=lambda _: self.slot.wake(), on_error=lambda: metrics.background_error("slot")
        )
        if settings.scheduler:
            self.scheduler.start()
        from champion.training.process import exit_with_parent

        exit_with_parent(what="worker")  # a killed supervisor must not leave workers behind
        _settle()
        log.info("service started", extra={"pid": os.getpid(), **self.readiness()})

    @property
    def registry(self) -> ModelRegistry:
        return self.components.registry

    @property
    def watch(self) -> Watch:
        """The monitoring job, built at its first use: it needs the registry client and scipy,
        which would otherwise delay the worker's start. One instance (it keeps the streak)."""
        with self._watch_lock:
            if self._watch is None:
                metrics = self.metrics
                self._watch = self.components.watch(
                    metrics=metrics,
                    trigger_retrain=lambda trigger: self.scheduler.run_now(trigger),
                    on_error=lambda: metrics.background_error("monitor"),
                )
            return self._watch

    def _start_capture(self) -> None:
        from champion.monitoring.capture import Capture

        metrics = self.metrics
        self.prediction_log = self.components.prediction_log
        self.capture = Capture(
            self.prediction_log,
            capacity=self.settings.capture_buffer,
            sample_rate=self.settings.capture_sample_rate,
            on_drop=metrics.dropped,
            on_error=lambda: metrics.background_error("capture"),
        )
        self.capture.start()

    def _scheduler(self) -> RetrainScheduler:
        from champion.service.scheduler import RetrainScheduler

        metrics, settings = self.metrics, self.settings
        return RetrainScheduler(
            schedule=self.contract.schedule,
            leases=self.components.leases,
            monitor_seconds=settings.monitor_seconds,
            retrain_timeout=settings.retrain_timeout_seconds,
            count=lambda outcome: metrics.retrain_ticks.labels(outcome).inc(),
            on_cycle=self._on_cycle,
            monitor=lambda: self.watch.tick(),
            on_error=metrics.background_error,
        )

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        # Flush captured predictions and give up the scheduler lease for the next leader.
        self.slot.stop()
        if self.swap_listener is not None:
            self.swap_listener.stop()
        self.scheduler.stop()
        self.capture.stop()

    def _on_cycle(self, outcome: CycleOutcome) -> None:
        self.metrics.retrain_runs.labels(Verdict.parse(outcome.verdict).value).inc()
        self.metrics.retrain_duration.observe(outcome.seconds)
        # A cycle that could not run (another holds the lease, the child timed out) is not a
        # success: the staleness alert must still see the time since retraining last worked.
        if outcome.succeeded:
            self.metrics.retrain_last_success.set(time.time())

    def _on_swap(self, served: Served) -> None:
        self.metrics.swaps.inc()
        self.metrics.served(served.version, self._served_version)
        if served.registered_ms:
            self.metrics.model_age.set(time.time() - served.registered_ms / 1000)
        self._served_version = served.version
        _settle()  # the new model's objects

    def _openapi(self) -> dict[str, Any]:
        schema = get_openapi(
            title=api.title, version="1", description=api.description, routes=api.routes
        )
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas["PredictRequest"] = openapi_request_schema(
            self.contract, max_rows=self.settings.max_rows
        )
        schemas["FeedbackRequest"] = openapi_feedback_schema(
            self.contract, max_rows=self.settings.max_rows
        )
        schemas["RollbackRequest"] = {
            "type": "object",
            "required": ["reason"],
            "properties": {"reason": {"type": "string", "minLength": 1, "pattern": r"\S"}},
        }
        components["securitySchemes"] = {
            "admin": {"type": "http", "scheme": "bearer", "description": "CHAMPION_ADMIN_TOKEN"},
            "feedback": {
                "type": "http",
                "scheme": "bearer",
                "description": "CHAMPION_FEEDBACK_TOKEN",
            },
        }
        schemas["PredictResponse"] = PredictResponse.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        paths = schema["paths"]
        paths["/predict"] = {"post": _predict_operation()}
        for path, ref in (
            ("/predict", "PredictRequest"),
            ("/feedback", "FeedbackRequest"),
            ("/admin/rollback", "RollbackRequest"),
        ):
            paths[path]["post"]["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}
                },
            }
        paths["/feedback"]["post"]["security"] = [{"feedback": []}]
        for path in ("/admin/reload", "/admin/rollback", "/admin/retrain"):
            paths[path]["post"]["security"] = [{"admin": []}]
        # The probes are answered ahead of FastAPI's routing (FastPath); documented here.
        paths["/readyz"] = {
            "get": {
                "summary": "Ready once a champion is loaded; names the version and the worker",
                "responses": {
                    "200": {"description": "Ready."},
                    "503": {"description": "Not ready yet; `reason` says why."},
                },
            }
        }
        paths["/livez"] = {
            "get": {"summary": "Alive", "responses": {"200": {"description": "Alive."}}}
        }
        return schema

    # -- probes ---------------------------------------------------------------------------

    def readiness(self) -> dict[str, Any]:
        st = self.slot.status()
        body: dict[str, Any] = {
            "ready": st.ready,
            "model_version": st.version,
            "source": st.source,
            "pid": os.getpid(),  # which worker answered: workers swap independently
        }
        if st.degraded:
            body["degraded"] = st.degraded
        if not st.ready:
            body["reason"] = st.last_error or "no champion in the registry yet"
        return body

    def __is_ready__(self) -> bool:
        return self.slot.current is not None

    # -- predictions ----------------------------------------------------------------------

    @bentoml.api(route="/predict", name="predict")
    async def predict(self, instances: list[dict[str, Any]]) -> dict[str, Any]:
        """POST /predict: `{"instances": [...]}` → the current champion's predictions.

        A BentoML API, so /schema.json lists it and BentoML's own clients call it by name
        (`client.predict(instances=[...])`). Over HTTP, FastPath hands the request to `answer`
        ahead of the framework's layers; both run `_predict`, the one implementation.
        """
        response = await self._predict(Headers(), _receiver(orjson.dumps({"instances": instances})))
        payload: dict[str, Any] = orjson.loads(response.body)
        if response.status_code != 200:
            raise _ApiError(response.status_code, payload)
        return payload

    async def answer(self, scope: Scope, receive: Receive) -> JSONResponse:
        """POST /predict as FastPath routes it (documented in `_openapi`, as the probes are)."""
        return await self._predict(Headers(scope=scope), receive)

    async def answer_v2(self, scope: Scope, receive: Receive) -> JSONResponse:
        """POST /v2/models/{name}/infer (Open Inference Protocol), routed by FastPath."""
        name = self.contract.project.name
        if (missing := self._v2_unknown(_model_in(scope["path"]))) is not None:
            return missing
        request_id: list[str | None] = [None]

        def shape(payload: Any) -> Any:
            if isinstance(payload, dict) and isinstance(payload.get("id"), str):
                request_id[0] = payload["id"]
            return v2.instances(payload, self.contract, max_rows=self.settings.max_rows)

        def render(answer: dict[str, Any]) -> JSONResponse:
            return _json(v2.response(answer, model_name=name, request_id=request_id[0]))

        return await self._predict(Headers(scope=scope), receive, shape=shape, render=render)

    # -- Open Inference Protocol (v2) metadata and health -------------------------------

    @api.get("/v2", summary="Open Inference Protocol: server metadata")
    def v2_server(self) -> JSONResponse:
        return JSONResponse({"name": "champion", "version": "1", "extensions": []})

    @api.get("/v2/health/live", summary="Open Inference Protocol: alive")
    def v2_live(self) -> JSONResponse:
        return JSONResponse({"live": True})

    @api.get(
        "/v2/health/ready",
        summary="Open Inference Protocol: a champion is loaded",
        responses=_errors(503),
    )
    def v2_ready(self) -> JSONResponse:
        ready = self.slot.current is not None
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @api.get(
        "/v2/models/{model}",
        summary="Open Inference Protocol: the model's tensors",
        responses=_errors(404, s404="No model of that name here."),
    )
    def v2_model(self, model: str) -> JSONResponse:
        if (missing := self._v2_unknown(model)) is not None:
            return missing
        served = self.slot.current
        body = v2.model_metadata(
            self.contract,
            versions=[served.version] if served else [],
            classes=served.classes if served else self.contract.classes,
        )
        return JSONResponse(body)

    @api.get(
        "/v2/models/{model}/ready",
        summary="Open Inference Protocol: the model is loaded",
        responses=_errors(404, 503, s404="No model of that name here."),
    )
    def v2_model_ready(self, model: str) -> JSONResponse:
        if (missing := self._v2_unknown(model)) is not None:
            return missing
        ready = self.slot.current is not None
        return JSONResponse({"name": model, "ready": ready}, status_code=200 if ready else 503)

    def _v2_unknown(self, model: str) -> JSONResponse | None:
        name = self.contract.project.name
        if model == name:
            return None
        return _error(404, f"no model {model!r} here; this serves {name!r}")

    async def _predict(
        self,
        headers: Headers,
        receive: Receive,
        *,
        shape: Callable[[Any], Any] = lambda payload: payload,
        render: Callable[[dict[str, Any]], JSONResponse] = _json,
    ) -> JSONResponse:
        """Answer one prediction request (in `_answer`'s `shape` and `render`) and time it."""
        started = time.perf_counter()
        served = self.slot.current  # one reference: this request finishes on this model
        version = served.version if served is not None else "none"
        try:
            response, outcome = await self._answer(
                headers, receive, served, shape=shape, render=render
            )
        except ClientDisconnect:
            raise  # nobody left to answer, nothing to count
        except Exception:
            # Past the model (capture, encoding): still one clean, counted 500, so champion's
            # own metrics see every failure without BentoML's middleware.
            log.exception("answering a prediction failed", extra={"version": version})
            response, outcome = _error(500, "the service failed to answer this request"), "error"
        self.metrics.answered(outcome, version, time.perf_counter() - started)
        return response

    async def _answer(
        self,
        headers: Headers,
        receive: Receive,
        served: Served | None,
        *,
        shape: Callable[[Any], Any],
        render: Callable[[dict[str, Any]], JSONResponse],
    ) -> tuple[JSONResponse, str]:
        """The response to one prediction request, and its outcome (a PREDICTION_OUTCOMES
        value). `shape` turns the parsed body into `{"instances": [...]}` (the v2 protocol's
        tensors, say); `render` turns the answer into the response body."""
        rid = headers.get("x-request-id", "")
        rid = rid if _REQUEST_ID.match(rid) else secrets.token_hex(16)
        limit = self.settings.max_body_bytes
        try:
            body = await _receive_limited(receive, headers.get("content-length"), limit)
            batch = validate_instances(
                shape(parse_body(body, max_bytes=limit)),
                contract=self.contract,
                max_rows=self.settings.max_rows,
            )
        except RequestInvalid as exc:
            self.metrics.validation_failures.labels(exc.reason).inc()
            refused = exc.body() | {"request_id": rid}
            return JSONResponse(refused, status_code=exc.status), "invalid"
        if batch.unseen:
            self.metrics.unseen(dict(batch.unseen))
        if served is None:
            st = self.slot.status()
            why = st.last_error or "the registry has no champion yet"
            return _error(503, f"no champion model is loaded yet: {why}", request_id=rid), (
                "unavailable"
            )
        try:
            pred, proba = served.predict(batch)
        except Exception:
            log.exception("prediction failed", extra={"request_id": rid, "version": served.version})
            return _error(500, "the model failed on this input", request_id=rid), "error"
        self.metrics.rows.inc(len(pred))
        self.metrics.classes(pred, served.classes)
        if served.registered_ms:
            self.metrics.model_age.set(time.time() - served.registered_ms / 1000)
        if self.capture.sampled():
            self._capture(rid, served.version, batch.rows, pred, proba)
        out: dict[str, Any] = {"predictions": pred}
        if proba is not None:
            out["probabilities"] = proba
            out["classes"] = served.classes
        out |= {"model_version": served.version, "request_id": rid}
        return render(out), "ok"

    def _capture(
        self,
        rid: str,
        version: str,
        rows: Sequence[dict[str, Any]],
        pred: np.ndarray,
        proba: np.ndarray | None,
    ) -> None:
        now = time.time()
        # Positive-class probability for binary models: what drift and live quality need.
        scores = proba[:, -1].tolist() if proba is not None and proba.shape[1] == 2 else None
        predictions = pred.tolist()
        self.capture.offer(
            [
                Captured(
                    rid, i, now, version, row, predictions[i], None if scores is None else scores[i]
                )
                for i, row in enumerate(rows)
            ],
            sampled=True,
        )

    # -- model facts ----------------------------------------------------------------------

    def _model_details(self, served: Served) -> dict[str, Any]:
        cached = self._details.get(served.version)
        if cached is not None:
            return cached
        from champion.training.artifacts import FINGERPRINT
        from champion.training.errors import RegistryError

        details: dict[str, Any] = {}
        if served.run_id:
            try:
                run = self.registry.run_summary(served.run_id)
                if run is None:
                    raise RegistryError(f"run {served.run_id} not found")
                details["cv_metrics"] = run.cv_metrics
                details["trained_at"] = run.started_ms
                details["data"] = self.registry.run_json(served.run_id, FINGERPRINT)
                self._details[served.version] = details
            except Exception as exc:  # the registry may be down; say so rather than fail
                log.warning(
                    "model details unavailable",
                    extra={"version": served.version, "error": str(exc)},
                )
                details["unavailable"] = "the registry is unreachable; details in the log"
        return details

    @api.get("/model", summary="Which model serves, how it was trained, the last verdict")
    def model(self) -> JSONResponse:
        served = self.slot.current
        st = self.slot.status()
        found = self.ledger.last(Event.CYCLE)
        last = None if found is None else LedgerEntry.from_record(found)
        body: dict[str, Any] = {
            "model_name": self.contract.project.name,
            "ready": st.ready,
            "degraded": st.degraded,
            "last_error": st.last_error,
            "previous_in_memory": self.slot.previous.version if self.slot.previous else None,
            "swaps": st.swaps,
            "swap_failures": st.swap_failures,
            "last_verdict": None
            if last is None
            else {
                "verdict": last.verdict,
                "reason": last.reason,
                "at": last.at,
                "challenger_version": last.challenger_version,
                "champion_after": last.champion_after,
            },
        }
        if served is not None:
            fp = self._model_details(served)
            data = fp.get("data") or {}
            body |= {
                "version": served.version,
                "sha256": served.sha256,
                "source": served.source,
                "loaded_at": served.loaded_at,
                # What answers requests in this worker: the registered runtime, unless its
                # compiled form was refused at load (then scikit-learn, and the note says why).
                "runtime": served.runtime,
                "runtime_note": served.runtime_note,
                "candidate": served.candidate,
                # Binary: the class is `positive_class` where its probability >= threshold
                # (null: the most probable class); probabilities are the model's own.
                "decision": None
                if served.classes is None
                else {"threshold": served.threshold, "positive_class": served.positive},
                "cv_metrics": fp.get("cv_metrics"),
                "trained_on": {k: data.get(k) for k in ("rows", "time_min", "time_max", "sha256")}
                | {"batches": len(data.get("batches", []))},
            }
        return JSONResponse(body)

    @api.get(
        "/drift",
        summary="The last drift and live-quality evaluation, as JSON",
        responses=_errors(404, s404="No drift evaluation yet."),
    )
    def drift(self) -> JSONResponse:
        found = self.watch.drift_store.latest()
        if found is None:
            return _error(
                404,
                "no drift evaluation yet: it runs every "
                f"{self.settings.monitor_seconds:g}s once predictions are captured",
            )
        return JSONResponse(found)

    # -- delayed labels -------------------------------------------------------------------

    @api.post(
        "/feedback",
        summary="Join true labels to captured predictions",
        description=(
            "Needs `Authorization: Bearer $CHAMPION_FEEDBACK_TOKEN` (labels become training "
            "data). Body: one item `{request_id, label[, row]}` or a list of them, all or "
            "nothing. Labels must be one of the contract's classes, with their type "
            "(classification), or a finite number (regression)."
        ),
        responses=_errors(
            400,
            401,
            403,
            404,
            409,
            413,
            422,
            429,
            s404="Unknown request ids (not captured, or rotated out); nothing written.",
            s409="Already labelled; nothing written.",
        )
        | {200: {"model": FeedbackResponse}},
    )
    async def feedback(self, request: Request) -> JSONResponse:
        denied = self._authorize(request, self.settings.feedback_token, what="feedback")
        if denied is not None:
            self.metrics.feedback_rejected.labels("unauthorized").inc()
            return denied
        try:
            raw = await _receive_limited(
                request.receive,
                request.headers.get("content-length"),
                self.settings.max_body_bytes,
            )
            # Parsing and checking thousands of items is CPU work: off the event loop.
            parsed = await asyncio.to_thread(self._feedback_items, raw)
        except RequestInvalid as exc:
            self.metrics.feedback_rejected.labels("invalid").inc()
            return JSONResponse(exc.body(), status_code=exc.status)
        wait = self._feedback_bucket.take(len(parsed))
        if wait > 0:
            self.metrics.feedback_rejected.labels("rate_limited").inc()
            response = _error(
                429,
                f"over this worker's feedback rate of {self.settings.feedback_labels_per_second:g}"
                f" labels/s; retry in {wait:.1f}s",
            )
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return response
        unknown, done = await asyncio.to_thread(self._label, parsed, flush=True)
        if unknown:
            # ...and that prediction may sit in another worker's buffer until its next flush.
            await asyncio.sleep(self.capture.flush_seconds * 2 + 0.1)
            unknown, done = await asyncio.to_thread(self._label, parsed, flush=False)
        if unknown:
            self.metrics.feedback_rejected.labels("unknown").inc()
            return _error(
                404,
                "unknown request ids (not captured, or rotated out); nothing was written",
                unknown=unknown,
            )
        if done:
            self.metrics.feedback_rejected.labels("already_labelled").inc()
            return _error(409, "already labelled; nothing was written", already_labelled=done)
        self.metrics.feedback.inc(len(parsed))
        return JSONResponse({"labelled": len(parsed)})

    def _label(
        self, items: list[tuple[str, int, Any]], *, flush: bool
    ) -> tuple[list[str], list[str]]:
        if flush:
            self.capture.flush()  # a label may arrive right after its prediction
        return self.prediction_log.label(items)

    def _feedback_items(self, raw: bytes) -> list[tuple[str, int, Any]]:
        """Parse and check feedback items against the contract; raise RequestInvalid."""
        payload = parse_body(raw, max_bytes=self.settings.max_body_bytes)
        items = payload if isinstance(payload, list) else [payload]
        limit = self.settings.max_rows
        if not items:
            raise RequestInvalid(422, "no feedback items", reason="empty")
        if len(items) > limit:
            raise RequestInvalid(
                422, f"{len(items)} feedback items; at most {limit} allowed", reason="too_many_rows"
            )
        check = self._label_check()
        classify = self.contract.task == "classification"
        problems: list[Problem] = []
        parsed: list[tuple[str, int, Any]] = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                problems.append(Problem(i, None, "not_object", "each item must be an object"))
                continue
            found = len(problems)
            for key in sorted(set(item) - {"request_id", "label", "row"})[:5]:
                problems.append(Problem(i, key[:64], "unexpected", "unexpected key"))
            rid = item.get("request_id")
            if not isinstance(rid, str) or not _REQUEST_ID.match(rid):
                problems.append(
                    Problem(i, "request_id", "wrong_type", "needs the request_id /predict answered")
                )
            row = _integral(item.get("row", 0))
            if type(row) is not int or not 0 <= row < limit:
                problems.append(
                    Problem(i, "row", "wrong_type", f"must be an integer from 0 to {limit - 1}")
                )
            label = item.get("label")
            if classify:
                label = _integral(label)  # JSON's 1.0 is the class 1
            if label is None:
                problems.append(Problem(i, "label", "missing", "needs a 'label'"))
            elif (why := check(label)) is not None:
                problems.append(Problem(i, "label", "wrong_type", why))
            if len(problems) >= 100:  # enough to fix the client; the rest would be alike
                break
            if len(problems) == found:
                parsed.append((str(rid), row, label))
        if problems:
            raise RequestInvalid.listing(problems, what="feedback; nothing was written")
        return parsed

    def _label_check(self) -> Callable[[Any], str | None]:
        """A function naming what is wrong with a label, from the contract's declared type."""
        if self.contract.task == "regression":

            def number(label: Any) -> str | None:
                if type(label) not in (int, float) or not finite(label):
                    return "must be a finite number"
                return None

            return number
        declared = self.contract.classes
        served = self.slot.current.classes if self.slot.current else None
        classes = list(declared) if declared is not None else served
        if classes is None:
            return lambda label: "no classes known yet: declare `classes` in the contract"
        # Type and value: JSON true is not the class 1, nor "1" the class 1.
        allowed = {(type(c), c) for c in classes}

        def one_of(label: Any) -> str | None:
            try:
                if (type(label), label) in allowed:
                    return None
            except TypeError:  # lists and objects are not hashable, and not classes
                pass
            return f"must be one of the classes {classes}"

        return one_of

    # -- admin ----------------------------------------------------------------------------

    def _authorize(
        self, request: Request, secret: SecretStr | None, *, what: str = "admin"
    ) -> JSONResponse | None:
        token = secret.get_secret_value() if secret is not None else ""
        if not token:
            variable = f"CHAMPION_{what.upper()}_TOKEN"
            return _error(403, f"{what} endpoints are disabled: set {variable} to enable")
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            response = _error(401, "missing 'Authorization: Bearer <token>' header")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        if not hmac.compare_digest(given.encode(), token.encode()):
            return _error(403, f"wrong {what} token")
        return None

    @api.post(
        "/admin/reload",
        summary="Check the champion alias now and swap if it moved",
        responses=_errors(401, 403, 503),
    )
    def reload(self, request: Request) -> JSONResponse:
        if (denied := self._authorize(request, self.settings.admin_token)) is not None:
            return denied
        from champion.training.errors import RegistryError

        try:
            swapped = self.slot.refresh()
        except RegistryError as exc:
            return _error(503, f"registry unreachable: {exc}")
        return JSONResponse({"swapped": swapped, "model_version": self.slot.status().version})

    @api.post(
        "/admin/rollback",
        summary="Make `previous` the champion again (recorded)",
        responses=_errors(
            400, 401, 403, 409, 413, 422, s409="Nothing to roll back to, or the alias moved."
        ),
    )
    async def rollback(self, request: Request) -> JSONResponse:
        if (denied := self._authorize(request, self.settings.admin_token)) is not None:
            return denied
        from champion.training import actions
        from champion.training.errors import ChampionError

        try:
            payload = (
                parse_body(await request.body(), max_bytes=10_000) if await request.body() else {}
            )
        except RequestInvalid as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        reason = payload.get("reason") if isinstance(payload, dict) else None
        if not isinstance(reason, str) or not reason.strip():
            return _error(422, 'a reason is required: {"reason": "..."}')

        def work() -> dict[str, Any]:
            # Lease wait, download, load and parity check: seconds of blocking work.
            entry = actions.rollback(
                reason=f"{reason} (via API)",
                registry=self.registry,
                ledger=self.ledger,
                leases=self.components.leases,
                lease_timeout=self.settings.lease_timeout_seconds,
            )
            self.slot.refresh()
            return entry

        try:
            entry = await asyncio.to_thread(work)
        except ChampionError as exc:
            return _error(409, str(exc))
        return JSONResponse(
            {
                "champion_before": entry["champion_before"],
                "champion_after": entry["champion_after"],
                "model_version": self.slot.status().version,
            }
        )

    @api.post(
        "/admin/retrain",
        summary="Run a retrain cycle now (in the background)",
        status_code=202,
        responses=_errors(401, 403, 409, s409="A retrain requested here is already running."),
    )
    def retrain(self, request: Request) -> JSONResponse:
        if (denied := self._authorize(request, self.settings.admin_token)) is not None:
            return denied
        if not self.scheduler.run_now():
            return _error(409, "a retrain requested here is already running")
        return JSONResponse(
            {"status": "started", "see": "GET /model for the verdict; `champion history` for all"},
            status_code=202,
        )


async def _receive_limited(receive: Receive, declared: str | None, limit: int) -> bytes:
    """Read the body, refusing (413) past `limit` without buffering the rest."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestInvalid(
            413, f"request body too large: {declared} bytes, limit {limit}", reason="too_large"
        )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestInvalid(
                413, f"request body too large: over {limit} bytes", reason="too_large"
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


Champion.add_asgi_middleware(FastPath)  # type: ignore[attr-defined]

"""The BentoML service: predictions from the champion, probes, model facts, admin actions."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import secrets
import sys
import time
from typing import TYPE_CHECKING, Any

import bentoml
import numpy as np
import orjson
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send
from threadpoolctl import threadpool_limits

from monitoring.capture import Captured
from service.validation import (
    RequestInvalid,
    openapi_request_schema,
    parse_body,
    validate_instances,
)
from training.scheduler import VERDICTS

if TYPE_CHECKING:  # the model stack (MLflow, skops, scikit-learn) loads in the worker only
    from service.slot import Served

log = logging.getLogger(__name__)

api = FastAPI(
    title="champion",
    description="Predictions from the current champion model; see GET /model for which one.",
    docs_url="/docs",
    openapi_url="/openapi.json",
)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class PredictResponse(BaseModel):
    predictions: list[Any] = Field(description="One prediction per instance, in order.")
    probabilities: list[list[float]] | None = Field(
        default=None, description="Class probabilities per instance (classification only)."
    )
    classes: list[Any] | None = Field(default=None, description="Class order of probabilities.")
    model_version: str = Field(description="Registered version that answered.", examples=["3"])
    request_id: str = Field(description="Echoes X-Request-ID, or a new id.")


class ErrorBody(BaseModel):
    error: str = Field(description="What went wrong, in one sentence.")
    problems: list[dict[str, Any]] = Field(
        default_factory=list, description="Every problem found: row, field, kind, problem."
    )


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


def _current_service() -> Any:
    try:
        return bentoml.get_current_service()
    except BentoMLException:  # raised, not None, before start-up and after shutdown
        return None


class FastPath:
    """ASGI handler ahead of FastAPI for the hot and the probe paths.

    POST /predict is answered here, by the same code as the documented FastAPI route, without
    FastAPI's routing, dependency and exception layers: measured at about 0.5 ms of CPU per
    request on this service's machine, a third of what the framework costs in all.  /livez and
    /readyz are answered here too, so readiness can say which model is loaded.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == "/predict" and scope["method"] == "POST":
                svc = _current_service()
                if svc is not None:
                    try:
                        response = await svc.answer_asgi(scope, receive)
                    except ClientDisconnect:
                        return  # nobody left to answer
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


def _server_stack() -> dict[str, str]:
    """Which event loop and HTTP parser serve: uvicorn silently falls back to slower ones."""
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    http = "httptools" if "uvicorn.protocols.http.httptools_impl" in sys.modules else "h11"
    return {"loop": loop, "http": http}


@bentoml.service(name="champion", traffic={"timeout": 60})
@bentoml.asgi_app(api, path="/")
class Champion:
    """One worker: a model slot following the registry, and a scheduler candidate."""

    def __init__(self) -> None:
        from monitoring.metrics import service_metrics
        from service.slot import ModelSlot
        from training import logs
        from training.config import get_settings, load_contract
        from training.ledger import Ledger
        from training.registry import Registry
        from training.scheduler import RetrainScheduler

        self.settings = settings = get_settings()
        logs.configure(level=settings.log_level, fmt=settings.log_format)
        # One request is one small predict: thread pools only add start-up and contention.
        threadpool_limits(limits=settings.serve_threads)
        self.contract = contract = load_contract(settings.project_file)
        os.environ.setdefault("MLFLOW_TRACKING_URI", settings.default_tracking_uri)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.registry = Registry(
            tracking_uri=os.environ["MLFLOW_TRACKING_URI"],
            model_name=contract.project.name,
            artifact_root=settings.artifact_root,
        )
        self.ledger = Ledger(settings.ledger_path)
        self.metrics = metrics = service_metrics(tuple(contract.features))
        self._predicted_ok = metrics.predictions.labels("ok")  # hot path: resolve labels once
        self._served_version: str | None = None
        self.slot = ModelSlot(
            registry=self.registry,
            contract=contract,
            cache_dir=settings.cache_dir,
            on_swap=self._on_swap,
            on_swap_failure=lambda _: metrics.swap_failures.inc(),
            threads=settings.serve_threads,
        )
        from monitoring.capture import Capture, PredictionLog

        self.prediction_log = PredictionLog(
            settings.prediction_log_path, max_rows=settings.capture_max_rows
        )
        self.capture = Capture(
            self.prediction_log,
            capacity=settings.capture_buffer,
            sample_rate=settings.capture_sample_rate,
            on_drop=lambda n: metrics.capture_dropped.inc(n),
        )
        self.capture.start()
        from training.watch import Watch

        self.watch = Watch(
            contract=contract,
            settings=settings,
            registry=self.registry,
            prediction_log=self.prediction_log,
            ledger=self.ledger,
            metrics=metrics,
            trigger_retrain=lambda trigger: self.scheduler.run_now(trigger),
        )
        self.scheduler = RetrainScheduler(
            contract=contract,
            settings=settings,
            count=lambda outcome: metrics.retrain_ticks.labels(outcome).inc(),
            on_cycle=self._on_cycle,
            monitor=self.watch.tick,
        )
        self._details: dict[str, dict[str, Any]] = {}
        schema = self._openapi()
        # FastAPI regenerates a cached schema when its routes change; replace the builder.
        api.openapi = lambda: schema  # type: ignore[method-assign]
        self.slot.start(poll_seconds=settings.poll_seconds)
        if settings.scheduler:
            self.scheduler.start()
        log.info("service started", extra={"pid": os.getpid(), **self.readiness()})

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        # Flush captured predictions and give up the scheduler lease for the next leader.
        self.slot.stop()
        self.scheduler.stop()
        self.capture.stop()

    def _on_cycle(self, verdict: str, seconds: float) -> None:
        self.metrics.retrain_runs.labels(verdict if verdict in VERDICTS else "FAILED").inc()
        self.metrics.retrain_duration.observe(seconds)
        if verdict != "FAILED":
            self.metrics.retrain_last_success.set(time.time())

    def _on_swap(self, served: Served) -> None:
        self.metrics.swaps.inc()
        self.metrics.served(served.version, self._served_version)
        if served.registered_ms:
            self.metrics.model_age.set(time.time() - served.registered_ms / 1000)
        self._served_version = served.version

    def _openapi(self) -> dict[str, Any]:
        schema = get_openapi(
            title=api.title, version="1", description=api.description, routes=api.routes
        )
        body = openapi_request_schema(self.contract, max_rows=self.settings.max_rows)
        schema.setdefault("components", {}).setdefault("schemas", {})["PredictRequest"] = body
        op = schema["paths"]["/predict"]["post"]
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}
            },
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

    @api.post(
        "/predict",
        summary="Predict with the current champion",
        responses={
            200: {"model": PredictResponse},
            400: {"model": ErrorBody},
            413: {"model": ErrorBody},
            422: {"model": ErrorBody},
            503: {"model": ErrorBody},
        },
    )
    async def predict(self, request: Request) -> JSONResponse:
        # Documents the endpoint; requests through the service are answered by FastPath.
        return await self._predict(request.headers, request.receive)

    async def answer_asgi(self, scope: Scope, receive: Receive) -> JSONResponse:
        return await self._predict(Headers(scope=scope), receive)

    async def _predict(self, headers: Headers, receive: Receive) -> JSONResponse:
        rid = headers.get("x-request-id", "")
        rid = rid if _REQUEST_ID.match(rid) else secrets.token_hex(16)
        served = self.slot.current  # one reference: this request finishes on this model
        limit = self.settings.max_body_bytes
        try:
            body = await _receive_limited(receive, headers.get("content-length"), limit)
            batch = validate_instances(
                parse_body(body, max_bytes=limit),
                contract=self.contract,
                max_rows=self.settings.max_rows,
            )
        except RequestInvalid as exc:
            self.metrics.predictions.labels("invalid").inc()
            self.metrics.validation_failures.labels(exc.reason).inc()
            return JSONResponse(exc.body() | {"request_id": rid}, status_code=exc.status)
        if batch.unseen:
            self.metrics.unseen(dict(batch.unseen))
        if served is None:
            self.metrics.predictions.labels("unavailable").inc()
            st = self.slot.status()
            return _error(
                503,
                "no champion model is loaded yet: "
                + (st.last_error or "the registry has no champion"),
                request_id=rid,
            )
        try:
            pred, proba = served.predict(batch)
        except Exception:
            log.exception("prediction failed", extra={"request_id": rid, "version": served.version})
            self.metrics.predictions.labels("error").inc()
            return _error(500, "the model failed on this input", request_id=rid)
        self._predicted_ok.inc()
        self.metrics.rows.inc(len(pred))
        self.metrics.classes(pred, served.classes)
        if served.registered_ms:
            self.metrics.model_age.set(time.time() - served.registered_ms / 1000)
        if self.capture.sampled():
            now = time.time()
            # Positive-class probability for binary models: what drift and live quality need.
            scores = proba[:, -1].tolist() if proba is not None and proba.shape[1] == 2 else None
            predictions = pred.tolist()
            self.capture.offer(
                [
                    Captured(
                        rid,
                        i,
                        now,
                        served.version,
                        row,
                        predictions[i],
                        None if scores is None else scores[i],
                    )
                    for i, row in enumerate(batch.rows)
                ],
                sampled=True,
            )
        out: dict[str, Any] = {"predictions": pred}
        if proba is not None:
            out["probabilities"] = proba
            out["classes"] = served.classes
        out |= {"model_version": served.version, "request_id": rid}
        return _json(out)

    # -- model facts ----------------------------------------------------------------------

    def _model_details(self, served: Served) -> dict[str, Any]:
        cached = self._details.get(served.version)
        if cached is not None:
            return cached
        details: dict[str, Any] = {}
        if served.run_id:
            try:
                run = self.registry.run_info(served.run_id)
                details["cv_metrics"] = {
                    k: v
                    for k, v in run.data.metrics.items()
                    if k.startswith("cv_") and "_fold_" not in k
                }
                details["trained_at"] = run.info.start_time
                details["data"] = self.registry.run_json(served.run_id, "fingerprint.json")
                self._details[served.version] = details
            except Exception as exc:  # the registry may be down; say so rather than fail
                details["unavailable"] = f"registry: {exc}"
        return details

    @api.get("/model", summary="Which model serves, how it was trained, the last verdict")
    def model(self) -> JSONResponse:
        served = self.slot.current
        st = self.slot.status()
        last = next((e for e in reversed(self.ledger.entries()) if e.get("event") == "cycle"), None)
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
                k: last.get(k)
                for k in ("verdict", "reason", "at", "challenger_version", "champion_after")
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
                "candidate": served.tags.get("champion.candidate"),
                "cv_metrics": fp.get("cv_metrics"),
                "trained_on": {k: data.get(k) for k in ("rows", "time_min", "time_max", "sha256")}
                | {"batches": len(data.get("batches", []))},
            }
        return JSONResponse(body)

    @api.get("/drift", summary="The last drift and live-quality evaluation, as JSON")
    def drift(self) -> JSONResponse:
        from training.watch import latest

        found = latest(self.settings)
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
        responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    )
    async def feedback(self, request: Request) -> JSONResponse:
        """Body: {"request_id", "label"[, "row"]} or a list of them (all or nothing)."""
        try:
            payload = parse_body(
                await _receive_limited(
                    request.receive,
                    request.headers.get("content-length"),
                    self.settings.max_body_bytes,
                ),
                max_bytes=self.settings.max_body_bytes,
            )
        except RequestInvalid as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        items = payload if isinstance(payload, list) else [payload]
        problems: list[dict[str, Any]] = []
        parsed: list[tuple[str, int, Any]] = []
        classes = self.slot.current.classes if self.slot.current else None
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("request_id"), str):
                problems.append({"item": i, "problem": "needs a string 'request_id'"})
                continue
            row = item.get("row", 0)
            if not isinstance(row, int) or isinstance(row, bool) or row < 0:
                problems.append({"item": i, "problem": "'row' must be a non-negative integer"})
                continue
            if "label" not in item or item["label"] is None:
                problems.append({"item": i, "problem": "needs a 'label'"})
                continue
            label = item["label"]
            if classes is not None and label not in classes:
                problems.append({"item": i, "problem": f"label {label!r} is not one of {classes}"})
                continue
            if classes is None and (isinstance(label, bool) or not isinstance(label, int | float)):
                problems.append({"item": i, "problem": "label must be a number"})
                continue
            parsed.append((item["request_id"], row, label))
        if not items:
            problems.append({"item": None, "problem": "no feedback items"})
        if problems:
            return _error(422, f"{len(problems)} problem(s) in the feedback", problems=problems)
        self.capture.flush()  # a label may arrive right after its prediction
        unknown, done = self.prediction_log.label(parsed)
        if unknown:
            # ...and that prediction may sit in another worker's buffer until its next flush.
            await asyncio.sleep(self.capture.flush_seconds * 2 + 0.1)
            unknown, done = self.prediction_log.label(parsed)
        if unknown:
            return _error(
                404,
                "unknown request ids (not captured, or rotated out); nothing was written",
                unknown=unknown,
            )
        if done:
            return _error(409, "already labelled; nothing was written", already_labelled=done)
        self.metrics.feedback.inc(len(parsed))
        return JSONResponse({"labelled": len(parsed)})

    # -- admin ----------------------------------------------------------------------------

    def _authorize(self, request: Request) -> JSONResponse | None:
        token = self.settings.admin_token
        if token is None or not token.get_secret_value():
            return _error(403, "admin endpoints are disabled: set CHAMPION_ADMIN_TOKEN to enable")
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            response = _error(401, "missing 'Authorization: Bearer <token>' header")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            return _error(403, "wrong admin token")
        return None

    @api.post("/admin/reload", summary="Check the champion alias now and swap if it moved")
    def reload(self, request: Request) -> JSONResponse:
        if (denied := self._authorize(request)) is not None:
            return denied
        from training.errors import RegistryError

        try:
            swapped = self.slot.refresh()
        except RegistryError as exc:
            return _error(503, f"registry unreachable: {exc}")
        return JSONResponse({"swapped": swapped, "model_version": self.slot.status().version})

    @api.post("/admin/rollback", summary="Make `previous` the champion again (recorded)")
    async def rollback(self, request: Request) -> JSONResponse:
        if (denied := self._authorize(request)) is not None:
            return denied
        from training import actions
        from training.errors import ChampionError

        try:
            payload = (
                parse_body(await request.body(), max_bytes=10_000) if await request.body() else {}
            )
        except RequestInvalid as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        reason = payload.get("reason") if isinstance(payload, dict) else None
        if not isinstance(reason, str) or not reason.strip():
            return _error(422, 'a reason is required: {"reason": "..."}')
        try:
            entry = actions.rollback(
                reason=f"{reason} (via API)",
                registry=self.registry,
                ledger=self.ledger,
                settings=self.settings,
            )
            self.slot.refresh()
        except ChampionError as exc:
            return _error(409, str(exc))
        return JSONResponse(
            {
                "champion_before": entry["champion_before"],
                "champion_after": entry["champion_after"],
                "model_version": self.slot.status().version,
            }
        )

    @api.post("/admin/retrain", summary="Run a retrain cycle now (in the background)")
    def retrain(self, request: Request) -> JSONResponse:
        if (denied := self._authorize(request)) is not None:
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

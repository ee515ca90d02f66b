"""The framework's ceiling: a BentoML service shaped like ours that parses the body, no model.

Same shape as `service.app:Champion`: a FastAPI app mounted with `@bentoml.asgi_app` at "/",
with POST /predict answered by an ASGI handler ahead of FastAPI's routing (as champion's
`FastPath` does), which reads and parses the JSON body `{"instances": [...]}` and answers a
constant of the same form.  Served with one worker by `benchmarks.run`.
"""

from __future__ import annotations

import json
from typing import Any

import bentoml
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

api = FastAPI(title="bench-noop")

PREDICTION = 1
PROBABILITIES = [0.25, 0.75]


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _answer(body: bytes) -> JSONResponse:
    try:
        payload: Any = json.loads(body)
    except ValueError:
        return JSONResponse({"error": "malformed JSON"}, status_code=400)
    instances = payload.get("instances") if isinstance(payload, dict) else None
    if not isinstance(instances, list) or not instances:
        return JSONResponse({"error": "needs a non-empty 'instances' list"}, status_code=422)
    n = len(instances)
    return JSONResponse(
        {
            "predictions": [PREDICTION] * n,
            "probabilities": [PROBABILITIES] * n,
            "classes": [0, 1],
            "model_version": "noop",
            "request_id": "noop",
        }
    )


class NoopPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/predict" and scope["method"] == "POST":
            await _answer(await _body(receive))(scope, receive, send)
            return
        await self.app(scope, receive, send)


@bentoml.service(name="bench_noop", traffic={"timeout": 60})
@bentoml.asgi_app(api, path="/")
class Noop:
    """No state: every answer is the constant above."""


Noop.add_asgi_middleware(NoopPath)  # type: ignore[attr-defined]

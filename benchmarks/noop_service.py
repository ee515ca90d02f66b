"""The framework's ceiling: a BentoML service mounted like ours that parses the body, no model.

Same shape as `service.app:Champion`: a FastAPI app mounted with `@bentoml.asgi_app` at "/",
an async `/predict` route that reads and parses the JSON body `{"instances": [...]}` and
answers a constant of the same form. Served with one worker by `benchmarks.run`.
"""

from __future__ import annotations

import json

import bentoml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

api = FastAPI(title="bench-noop")

PREDICTION = 1
PROBABILITIES = [0.25, 0.75]


@bentoml.service(name="bench_noop", traffic={"timeout": 60})
@bentoml.asgi_app(api, path="/")
class Noop:
    @api.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        try:
            payload = json.loads(await request.body())
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

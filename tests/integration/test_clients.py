"""Clients of the ecosystem against a real `bentoml serve`: BentoML's own HTTP clients."""

from __future__ import annotations

import asyncio

import bentoml
import httpx
import pytest

from champion.training.records import Verdict
from tests.integration.test_serve import ROW, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _without_id(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "request_id"}


def test_bentoml_clients_call_predict_by_name_with_the_same_answers(project):
    """It lists `predict` in /schema.json, and BentoML's sync and async clients get the same
    predictions as a plain POST; a refused request is an error naming the problem."""
    project.simulate(2)
    assert project.cycle().verdict is Verdict.PROMOTE
    rows = [ROW, ROW | {"salary": 25_000.0, "elevel": "e0"}]
    with serving(project, workers=1) as base:
        schema = httpx.get(f"{base}/schema.json").json()
        assert "predict" in {route["name"] for route in schema["routes"]}
        plain = httpx.post(f"{base}/predict", json={"instances": rows}).json()
        with bentoml.SyncHTTPClient(base) as client:
            body = client.predict(instances=rows)
            with pytest.raises(bentoml.exceptions.BentoMLException) as refused:
                client.predict(instances=[ROW | {"salary": "lots"}])

        async def call_async() -> dict:
            async with bentoml.AsyncHTTPClient(base) as client:
                return await client.predict(instances=rows)

        async_body = asyncio.run(call_async())
    assert _without_id(body) == _without_id(plain)
    assert _without_id(async_body) == _without_id(plain)
    assert body["model_version"] == "1" and len(body["predictions"]) == 2
    assert "salary" in str(refused.value)

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


def _triton_inputs(rows: list[dict], contract) -> list:
    import numpy as np
    import tritonclient.http as triton

    inputs = []
    for name, feature in contract.features.items():
        if feature.type == "categorical":
            values = np.array([row[name] for row in rows], dtype=object)
            tensor = triton.InferInput(name, [len(rows)], "BYTES")
        else:
            values = np.array([row[name] for row in rows], dtype=np.float64)
            tensor = triton.InferInput(name, [len(rows)], "FP64")
        tensor.set_data_from_numpy(values, binary_data=False)
        inputs.append(tensor)
    return inputs


def test_open_inference_protocol_v2_answers_tritonclient_with_the_same_predictions(project):
    """It serves KServe/Triton-style clients: health, model metadata and readiness, and
    `infer` with the same predictions and probabilities as /predict; a wrong model name is a
    404 and a bad tensor a 400 naming it."""
    import numpy as np
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    project.simulate(2)
    assert project.cycle().verdict is Verdict.PROMOTE
    name = project.contract.project.name
    rows = [ROW, ROW | {"salary": 25_000.0, "elevel": "e0"}, ROW | {"car": "car99"}]
    with serving(project, workers=1) as base:
        plain = httpx.post(f"{base}/predict", json={"instances": rows}).json()
        client = triton.InferenceServerClient(url=base.removeprefix("http://"))
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(name)
        meta = client.get_model_metadata(name)
        assert [i["name"] for i in meta["inputs"]] == list(project.contract.features)
        outputs = [
            triton.InferRequestedOutput("predictions", binary_data=False),
            triton.InferRequestedOutput("probabilities", binary_data=False),
        ]
        result = client.infer(name, _triton_inputs(rows, project.contract), outputs=outputs)
        with pytest.raises(InferenceServerException) as unknown:
            client.infer("other-model", _triton_inputs(rows, project.contract))
        bad = httpx.post(
            f"{base}/v2/models/{name}/infer",
            json={"inputs": [{"name": "salary", "shape": [2], "datatype": "FP64", "data": [1.0]}]},
        )
    assert result.as_numpy("predictions").tolist() == plain["predictions"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), plain["probabilities"])
    assert result.get_response()["model_version"] == "1"
    assert "other-model" in str(unknown.value)
    assert bad.status_code == 400 and "salary" in bad.json()["error"]

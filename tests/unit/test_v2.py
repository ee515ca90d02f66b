"""The Open Inference Protocol shape: v2 tensors to instances, answers to v2 tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from champion.service import v2
from champion.service.validation import RequestInvalid
from champion.training.config import Contract
from tests.unit.conftest import make_contract


@pytest.fixture
def contract(tmp_path: Path) -> Contract:
    return make_contract(tmp_path)


def _tensor(name: str, data: list[Any], datatype: str = "FP64", shape: Any = None) -> dict:
    return {"name": name, "shape": shape or [len(data)], "datatype": datatype, "data": data}


def test_tensors_become_rows_feature_by_feature(contract: Contract) -> None:
    """It turns one tensor per feature into one instance per row, in order."""
    body = {
        "inputs": [
            _tensor("salary", [50_000.0, 60_000.0]),
            _tensor("elevel", ["e1", "e2"], "BYTES", [2, 1]),
        ]
    }
    assert v2.instances(body, contract, max_rows=10) == {
        "instances": [{"salary": 50_000.0, "elevel": "e1"}, {"salary": 60_000.0, "elevel": "e2"}]
    }


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"rows": []}, '"inputs"'),
        ({"inputs": [_tensor("salary", [1.0], shape=[2])]}, "does not match"),
        ({"inputs": [_tensor("salary", [1.0], shape=[1, 2])]}, "shape must be"),
        ({"inputs": [_tensor("salary", [1.0]), _tensor("salary", [2.0])]}, "given twice"),
        ({"inputs": [_tensor("salary", [1.0]), _tensor("age", [1.0, 2.0])]}, "has 2 rows"),
        ({"inputs": [_tensor("salary", ["x"], "BYTES")]}, "the contract wants a numeric"),
        ({"inputs": [_tensor("elevel", [1.0])]}, "the contract wants BYTES"),
        (
            {"inputs": [_tensor("salary", [1.0]) | {"parameters": {"binary_data_size": 8}}]},
            "binary tensor extension",
        ),
        ({"inputs": [{"name": "salary", "shape": [1], "datatype": "FP64"}]}, "no data list"),
    ],
)
def test_a_malformed_request_is_a_400_naming_the_problem(
    contract: Contract, body: dict, says: str
) -> None:
    """It refuses a request that is not a v2 tensor set, saying what is wrong."""
    with pytest.raises(RequestInvalid) as refused:
        v2.instances(body, contract, max_rows=10)
    assert refused.value.status == 400 and says in refused.value.message


def test_more_rows_than_allowed_is_a_413(contract: Contract) -> None:
    """It applies the same row limit as /predict."""
    with pytest.raises(RequestInvalid) as refused:
        v2.instances({"inputs": [_tensor("salary", [1.0] * 11)]}, contract, max_rows=10)
    assert refused.value.status == 413


def test_the_answer_becomes_prediction_and_probability_tensors() -> None:
    """It answers `predictions` [n] and `probabilities` [n, classes] with the class order."""
    answer = {
        "predictions": [0, 1],
        "probabilities": [[0.9, 0.1], [0.2, 0.8]],
        "classes": [0, 1],
        "model_version": "3",
    }
    body = v2.response(answer, model_name="m", request_id="r1")
    predictions, probabilities = body["outputs"]
    assert body["model_name"] == "m" and body["model_version"] == "3" and body["id"] == "r1"
    assert predictions == {"name": "predictions", "shape": [2], "datatype": "INT64", "data": [0, 1]}
    assert probabilities["shape"] == [2, 2] and probabilities["data"] == [0.9, 0.1, 0.2, 0.8]
    assert probabilities["parameters"] == {"classes": [0, 1]}


def test_metadata_names_every_feature_with_its_datatype(contract: Contract) -> None:
    """It lists the contract's features as inputs: numeric FP64, categorical BYTES."""
    meta = v2.model_metadata(contract, versions=["1"], classes=[0, 1])
    kinds = {i["name"]: i["datatype"] for i in meta["inputs"]}
    assert list(kinds) == list(contract.features)
    assert {kinds[n] for n in contract.numeric} == {"FP64"}
    assert {kinds[n] for n in contract.categorical} == {"BYTES"}
    assert [o["name"] for o in meta["outputs"]] == ["predictions", "probabilities"]

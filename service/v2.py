"""The Open Inference Protocol (KServe v2) REST shape: feature tensors in, prediction tensors out.

A request carries one tensor per contract feature, `shape` `[n]` or `[n, 1]`, in the JSON
tensor form (`data` a flat list); the rows it describes then go through the same validation as
`/predict`. The answer has `predictions` (`[n]`) and, for a classifier, `probabilities`
(`[n, classes]`, the class order in its `parameters`). Triton's binary tensor extension is not
supported: a request using it is refused with a 400 that says so.

The infer operation is specified by the KServe v2 REST protocol, not by this service's OpenAPI:
its rules across tensors (one per feature, equal row counts) are beyond what JSON Schema can
state, so the OpenAPI that clients and fuzzers read lists only the metadata and health routes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from champion.service.validation import RequestInvalid
from champion.training.config import Contract

NUMERIC = frozenset({"FP64", "FP32", "FP16", "INT64", "INT32", "INT16", "INT8"})
NUMERIC |= {"UINT64", "UINT32", "UINT16", "UINT8"}
PROTOCOL = "v2"


def _refuse(message: str) -> RequestInvalid:
    return RequestInvalid(400, message, reason="bad_envelope")


def instances(payload: Any, contract: Contract, *, max_rows: int) -> dict[str, Any]:
    """The `{"instances": [...]}` body a v2 infer request describes; raises RequestInvalid."""
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise _refuse('a v2 infer request is an object with an "inputs" list of tensors')
    columns: dict[str, list[Any]] = {}
    rows: int | None = None
    for tensor in payload["inputs"]:
        name, data = _tensor(tensor, contract)
        if name in columns:
            raise _refuse(f"input {name!r} is given twice")
        if rows is not None and len(data) != rows:
            raise _refuse(f"input {name!r} has {len(data)} rows, the others {rows}")
        rows = len(data)
        columns[name] = data
    if rows is not None and rows > max_rows:
        raise RequestInvalid(
            413, f"{rows} rows in one request, limit {max_rows}", reason="too_many_rows"
        )
    # Missing or unknown features are left to the shared validation, which names each one.
    n = rows or 0
    return {"instances": [{k: v[i] for k, v in columns.items()} for i in range(n)]}


def _tensor(tensor: Any, contract: Contract) -> tuple[str, list[Any]]:
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise _refuse("each input is an object with a name, shape, datatype and data")
    name = tensor["name"]
    if (tensor.get("parameters") or {}).get("binary_data_size") is not None:
        raise _refuse(f"input {name!r} uses the binary tensor extension; send JSON data")
    shape, datatype, data = tensor.get("shape"), tensor.get("datatype"), tensor.get("data")
    if not isinstance(data, list):
        raise _refuse(f"input {name!r} has no data list")
    if not (
        isinstance(shape, list)
        and shape
        and all(isinstance(d, int) for d in shape)
        and (len(shape) == 1 or shape[1:] == [1])
    ):
        raise _refuse(f"input {name!r}: shape must be [rows] or [rows, 1], not {shape!r}")
    if shape[0] != len(data):
        raise _refuse(f"input {name!r}: shape {shape} does not match {len(data)} values")
    feature = contract.features.get(name)
    if feature is not None:
        wanted = "BYTES" if feature.type == "categorical" else "a numeric datatype"
        if (datatype == "BYTES") != (feature.type == "categorical") or (
            datatype != "BYTES" and datatype not in NUMERIC
        ):
            raise _refuse(f"input {name!r} is {datatype!r}; the contract wants {wanted}")
    return name, data


def _datatype(values: np.ndarray) -> str:
    if values.dtype.kind in "iub":
        return "INT64"
    if values.dtype.kind == "f":
        return "FP64"
    return "BYTES"


def response(
    answer: Mapping[str, Any], *, model_name: str, request_id: str | None
) -> dict[str, Any]:
    """The v2 infer response for `/predict`'s answer (`predictions`, `probabilities`, ...)."""
    predictions = np.asarray(answer["predictions"])
    outputs: list[dict[str, Any]] = [
        {
            "name": "predictions",
            "shape": [len(predictions)],
            "datatype": _datatype(predictions),
            "data": predictions.tolist(),
        }
    ]
    if answer.get("probabilities") is not None:
        proba = np.asarray(answer["probabilities"], dtype=np.float64)
        outputs.append(
            {
                "name": "probabilities",
                "shape": list(proba.shape),
                "datatype": "FP64",
                "data": proba.reshape(-1).tolist(),
                "parameters": {"classes": list(answer.get("classes") or [])},
            }
        )
    body: dict[str, Any] = {
        "model_name": model_name,
        "model_version": str(answer["model_version"]),
        "outputs": outputs,
    }
    if request_id is not None:
        body["id"] = request_id
    return body


def model_metadata(
    contract: Contract, *, versions: Sequence[str], classes: Sequence[Any] | None
) -> dict[str, Any]:
    """GET /v2/models/{name}: what a client must send and will get back."""
    inputs = [
        {
            "name": name,
            "datatype": "BYTES" if feature.type == "categorical" else "FP64",
            "shape": [-1],
        }
        for name, feature in contract.features.items()
    ]
    outputs: list[dict[str, Any]] = [
        {"name": "predictions", "datatype": _prediction_type(classes), "shape": [-1]}
    ]
    if contract.task == "classification":
        outputs.append(
            {"name": "probabilities", "datatype": "FP64", "shape": [-1, len(classes or ())]}
        )
    return {
        "name": contract.project.name,
        "versions": list(versions),
        "platform": "champion (scikit-learn / ONNX Runtime)",
        "inputs": inputs,
        "outputs": outputs,
    }


def _prediction_type(classes: Sequence[Any] | None) -> str:
    if classes is None:
        return "FP64"
    return "INT64" if all(isinstance(c, int) for c in classes) else "BYTES"

"""Compile a fitted pipeline for serving at registration, kept only on parity with scikit-learn."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from champion.service.runtime import (
    RUNTIME_ONNX,
    RUNTIME_SKLEARN,
    CompiledModel,
    Encoder,
    NotCompilable,
    converted_model,
    frame_columns,
    parity,
    parity_frame,
)
from champion.training.config import Contract

PARITY_SAMPLE_ROWS = 500  # x3 with the missing-value and unseen-category copies: 1,500 rows


@dataclass(frozen=True)
class Compilation:
    """What registration records: the runtime that will serve, and why."""

    runtime: str
    reason: str
    onnx: bytes | None = None
    max_diff: float | None = None
    rows: int = 0
    seconds: float = 0.0
    # Held-out rows stored with the version: each worker re-checks parity on them at load.
    sample: pd.DataFrame | None = None

    @property
    def sha256(self) -> str | None:
        return hashlib.sha256(self.onnx).hexdigest() if self.onnx is not None else None


def _convert(model: Any, width: int, dtype: type[np.floating[Any]]) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    tensor = FloatTensorType if dtype is np.float32 else DoubleTensorType
    onx = convert_sklearn(
        model,
        initial_types=[("x", tensor([None, width]))],
        target_opset={"": 18, "ai.onnx.ml": 3},
        options={id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None,
        custom_conversion_functions=_fixed_converters(),
    )
    return bytes(onx.SerializeToString())


def _input_types(model: Any) -> tuple[type[np.floating[Any]], ...]:
    """Trees first in float32 (scikit-learn's trees compare float32 features: their exact
    form); anything else first in float64, which keeps a linear model's sums exact."""
    from sklearn.ensemble import (
        BaseEnsemble,
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
    )
    from sklearn.tree import BaseDecisionTree

    trees = (BaseEnsemble, BaseDecisionTree, HistGradientBoostingClassifier)
    if isinstance(model, (*trees, HistGradientBoostingRegressor)):
        return (np.float32, np.float64)
    return (np.float64, np.float32)


def _fixed_converters() -> dict[type, Any]:
    """skl2onnx's own histogram gradient boosting converters, with integer attributes.

    skl2onnx 1.20 writes Python `False` into the TreeEnsemble's integer list
    `nodes_missing_value_tracks_true` for every leaf, and onnx 1.23 refuses a bool there
    ("Expected an int, got a boolean"). The trees, thresholds and missing-value routing are
    skl2onnx's; only the attribute types are corrected, and parity is still checked after.
    """
    from skl2onnx.operator_converters.random_forest import (
        convert_sklearn_random_forest_classifier,
        convert_sklearn_random_forest_regressor_converter,
    )
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    return {
        HistGradientBoostingClassifier: _integer_attributes(
            convert_sklearn_random_forest_classifier
        ),
        HistGradientBoostingRegressor: _integer_attributes(
            convert_sklearn_random_forest_regressor_converter
        ),
    }


def _integer_attributes(converter: Callable[[Any, Any, Any], None]) -> Callable[..., None]:
    """Run `converter` with bools in list attributes written as the integers ONNX wants."""

    def convert(scope: Any, operator: Any, container: Any) -> None:
        add_node = container.add_node

        def add_typed_node(*args: Any, **attrs: Any) -> Any:
            for name, value in attrs.items():
                if isinstance(value, list):
                    attrs[name] = [int(v) if isinstance(v, bool | np.bool_) else v for v in value]
            return add_node(*args, **attrs)

        container.add_node = add_typed_node
        try:
            converter(scope, operator, container)
        finally:
            container.add_node = add_node

    return convert


def compile_pipeline(
    pipeline: Any, contract: Contract, holdout: pd.DataFrame, *, seed: int = 0
) -> Compilation:
    """Try ONNX Runtime; keep it only on parity with scikit-learn. Never raises."""
    started = time.monotonic()
    names = list(contract.features)
    classes = (
        list(pipeline.classes_)
        if contract.task == "classification" and hasattr(pipeline, "classes_")
        else None
    )
    rows = parity_frame(holdout, contract, seed=seed)
    reasons: list[str] = []
    if rows.empty:
        return Compilation(RUNTIME_SKLEARN, "no held-out rows to check parity on")
    try:
        encoder = Encoder.from_pipeline(pipeline)
        encoded = encoder.encode(frame_columns(rows, names), len(rows))
        expected = np.asarray(pipeline[:-1].transform(rows), dtype=np.float64)
        if encoded.shape != expected.shape or not np.allclose(
            encoded, expected, rtol=1e-12, atol=1e-12
        ):
            raise NotCompilable("the NumPy encoding differs from the pipeline's")
    except Exception as exc:  # NotCompilable, or a pipeline that fails on the parity rows
        return Compilation(RUNTIME_SKLEARN, str(exc), seconds=time.monotonic() - started)
    try:
        model, inverse = converted_model(pipeline)
    except NotCompilable as exc:
        return Compilation(RUNTIME_SKLEARN, str(exc), seconds=time.monotonic() - started)
    for dtype in _input_types(model):
        try:
            onnx = _convert(model, encoded.shape[1], dtype)
            compiled = CompiledModel(encoder, onnx, classes=classes, inverse=inverse)
            diff = parity(compiled, pipeline, rows, names)
        except NotCompilable as exc:
            reasons.append(f"{np.dtype(dtype).name}: {exc}")
            continue
        except Exception as exc:  # converter gaps surface as any exception type
            first = (str(exc).splitlines() or [""])[0].split(" and attributes")[0]
            reasons.append(f"{np.dtype(dtype).name}: {type(exc).__name__}: {first[:160]}")
            continue
        return Compilation(
            RUNTIME_ONNX,
            f"{np.dtype(dtype).name} inputs; parity {diff:.2g} on {len(rows)} rows",
            onnx,
            diff,
            len(rows),
            time.monotonic() - started,
            sample=holdout[names].head(PARITY_SAMPLE_ROWS).reset_index(drop=True),
        )
    return Compilation(
        RUNTIME_SKLEARN,
        "; ".join(reasons) or "no conversion attempted",
        rows=len(rows),
        seconds=time.monotonic() - started,
    )

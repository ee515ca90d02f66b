"""The model runtime: a pipeline's compiled form (NumPy encoding + ONNX Runtime), checked.

The pipeline's encoding (median impute + scale, constant impute + one-hot, optional PCA) is
replayed in NumPy from its fitted parameters, with the same float64 operations in the same
order, straight from validated request columns: no DataFrame per request.  The estimator alone
goes to ONNX: tree ensembles read float32 like scikit-learn's own trees do, so their splits
agree; a converted model is only used after its outputs match scikit-learn's on held-out rows.
Anything this module does not recognise is refused with a reason, and scikit-learn serves.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler, TargetEncoder

from champion.training.config import Contract

log = logging.getLogger(__name__)

RUNTIME_ONNX = "onnxruntime"
RUNTIME_SKLEARN = "sklearn"
ONNX_FILE = "model.onnx"
PARITY_TOLERANCE = 1e-5  # max absolute difference of a probability
# Regression outputs are compared relative to the target's scale: tree ensembles add their
# leaves in float32, whose spacing is 1.2e-7 of the value, so a sum of a few hundred leaves
# can move by ~1e-5 of it. 1e-6 of the largest prediction, never tighter than the absolute
# 1e-5, is far below any model's own error and still catches a wrong conversion.
REGRESSION_RELATIVE_TOLERANCE = 1e-6
PARITY_ROWS = 2000
UNSEEN_MARK = "\x00unseen"  # a category no contract or training batch can hold

Columns = Mapping[str, Sequence[Any]]


class NotCompilable(Exception):
    """The pipeline (or its converted form) cannot serve in ONNX Runtime; the message says why."""


# -- encoding ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Numeric:
    names: tuple[str, ...]
    fill: np.ndarray  # the imputer's medians
    mean: np.ndarray | None
    scale: np.ndarray | None

    @cached_property
    def width(self) -> int:
        return len(self.names)

    @cached_property
    def _steps(self) -> tuple[tuple[str, float, float, float], ...]:
        zeros, ones = [0.0] * self.width, [1.0] * self.width
        mean = self.mean.tolist() if self.mean is not None else zeros
        scale = self.scale.tolist() if self.scale is not None else ones
        return tuple(zip(self.names, self.fill.tolist(), mean, scale, strict=True))

    def encode(self, columns: Columns, n: int, out: np.ndarray) -> None:
        # One C-level conversion; NumPy reads None as NaN in a float64 array.
        block = np.array([columns[name] for name in self.names], dtype=np.float64).T
        missing = np.isnan(block)
        if missing.any():
            block = np.where(missing, self.fill, block)
        # In place and in this order, as StandardScaler.transform does: bit-identical output.
        if self.mean is not None:
            block -= self.mean
        if self.scale is not None:
            block /= self.scale
        out[:, : block.shape[1]] = block

    def encode_row(self, columns: Columns, out: list[float]) -> None:
        """Row 0 in plain floats: the same IEEE operations, without NumPy's per-call cost.

        Subtracting 0.0 and dividing by 1.0 (when the scaler skips a step) change no value.
        """
        for name, fill, mean, scale in self._steps:
            value = columns[name][0]
            if value is None or value != value:
                value = fill
            out.append((value - mean) / scale)


@dataclass(frozen=True)
class _Categorical:
    names: tuple[str, ...]
    fill: str
    index: tuple[dict[str, int], ...]  # category -> position within its feature's block
    widths: tuple[int, ...]

    @cached_property
    def width(self) -> int:
        return sum(self.widths)

    def encode_row(self, columns: Columns, out: list[float]) -> None:
        for name, index, width in zip(self.names, self.index, self.widths, strict=True):
            value = columns[name][0]
            hot = [0.0] * width
            j = index.get(self.fill if value is None else value)
            if j is not None:
                hot[j] = 1.0
            out.extend(hot)

    def encode(self, columns: Columns, n: int, out: np.ndarray) -> None:
        offset = 0
        for name, index, width in zip(self.names, self.index, self.widths, strict=True):
            values = columns[name]
            for i in range(n):
                value = values[i]
                j = index.get(self.fill if value is None else value)
                if j is not None:  # unknown levels encode as all zeros (handle_unknown=ignore)
                    out[i, offset + j] = 1.0
            offset += width


@dataclass(frozen=True)
class _Target:
    """TargetEncoder's fitted means: per feature, level -> its `outputs` values (one per class
    for a multiclass target, else one); an unknown level gets the overall target mean."""

    names: tuple[str, ...]
    fill: str
    table: tuple[dict[str, tuple[float, ...]], ...]
    default: tuple[float, ...]

    @cached_property
    def width(self) -> int:
        return len(self.names) * len(self.default)

    def encode_row(self, columns: Columns, out: list[float]) -> None:
        for name, table in zip(self.names, self.table, strict=True):
            value = columns[name][0]
            out.extend(table.get(self.fill if value is None else value, self.default))

    def encode(self, columns: Columns, n: int, out: np.ndarray) -> None:
        k = len(self.default)
        for f, (name, table) in enumerate(zip(self.names, self.table, strict=True)):
            values = columns[name]
            out[:, f * k : (f + 1) * k] = [
                table.get(self.fill if v is None else v, self.default) for v in values[:n]
            ]


@dataclass(frozen=True)
class Encoder:
    """The fitted encoding steps of a pipeline, replayed on request columns."""

    blocks: tuple[_Numeric | _Categorical | _Target, ...]
    pca_components_t: np.ndarray | None
    pca_offset: np.ndarray | None

    @cached_property
    def width(self) -> int:
        return sum(b.width for b in self.blocks)

    def encode(self, columns: Columns, n: int) -> np.ndarray:
        if n == 1 and self.pca_components_t is None:
            # A single row (the common request) costs less in plain Python than in NumPy.
            row: list[float] = []
            for block in self.blocks:
                block.encode_row(columns, row)
            return np.array([row], dtype=np.float64)
        out = np.zeros((n, self.width), dtype=np.float64)
        start = 0
        for block in self.blocks:
            block.encode(columns, n, out[:, start : start + block.width])
            start += block.width
        if self.pca_components_t is not None and self.pca_offset is not None:
            # PCA._transform: X @ components.T, then minus mean @ components.T.
            out = out @ self.pca_components_t
            out -= self.pca_offset
        return out

    @classmethod
    def from_pipeline(cls, pipeline: Any) -> Encoder:
        """Read the fitted encoding parameters; refuse any step this replay does not cover."""
        if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 3:
            raise NotCompilable("not a (features, reduce, model) pipeline")
        features, reduce = pipeline.steps[0][1], pipeline.steps[1][1]
        if not isinstance(features, ColumnTransformer):
            raise NotCompilable(f"unexpected encoding step {type(features).__name__}")
        blocks: list[_Numeric | _Categorical | _Target] = []
        for name, transformer, cols in features.transformers_:
            if transformer == "drop" or (isinstance(cols, list | tuple) and len(cols) == 0):
                continue
            if not isinstance(transformer, Pipeline):
                raise NotCompilable(f"unexpected transformer {name!r}: {transformer!r}")
            blocks.append(_block(name, transformer, [str(c) for c in cols]))
        pca_t: np.ndarray | None = None
        pca_offset: np.ndarray | None = None
        if isinstance(reduce, PCA):
            if reduce.whiten:
                raise NotCompilable("whitened PCA is not replayed")
            pca_t = np.asarray(reduce.components_, dtype=np.float64).T
            pca_offset = np.reshape(np.asarray(reduce.mean_, dtype=np.float64), (1, -1)) @ pca_t
        elif reduce != "passthrough" and reduce is not None:
            raise NotCompilable(f"unexpected reduction step {type(reduce).__name__}")
        return cls(tuple(blocks), pca_t, pca_offset)


def _block(name: str, transformer: Pipeline, cols: list[str]) -> _Numeric | _Categorical | _Target:
    steps = [s for _, s in transformer.steps]
    imputer = steps[0] if steps and isinstance(steps[0], SimpleImputer) else None
    if imputer is None or imputer.add_indicator or len(imputer.statistics_) != len(cols):
        raise NotCompilable(f"transformer {name!r}: expected an imputer keeping every column")
    rest = steps[1:]
    if len(rest) == 1 and isinstance(rest[0], StandardScaler):
        stats = np.asarray(imputer.statistics_, dtype=np.float64)
        if not np.isfinite(stats).all():
            raise NotCompilable(f"transformer {name!r}: an imputer statistic is not finite")
        scaler = rest[0]
        return _Numeric(
            tuple(cols),
            stats,
            np.asarray(scaler.mean_, dtype=np.float64) if scaler.with_mean else None,
            np.asarray(scaler.scale_, dtype=np.float64) if scaler.with_std else None,
        )
    if len(rest) == 1 and isinstance(rest[0], OneHotEncoder):
        encoder = rest[0]
        if encoder.drop_idx_ is not None or getattr(encoder, "infrequent_categories_", None):
            raise NotCompilable(f"transformer {name!r}: dropped or infrequent categories")
        if imputer.strategy != "constant" or not isinstance(imputer.fill_value, str):
            raise NotCompilable(f"transformer {name!r}: expected a constant text fill")
        index = tuple({str(c): j for j, c in enumerate(cats)} for cats in encoder.categories_)
        return _Categorical(
            tuple(cols), imputer.fill_value, index, tuple(len(c) for c in encoder.categories_)
        )
    if len(rest) == 1 and isinstance(rest[0], TargetEncoder):
        if imputer.strategy != "constant" or not isinstance(imputer.fill_value, str):
            raise NotCompilable(f"transformer {name!r}: expected a constant text fill")
        return _target_block(tuple(cols), imputer.fill_value, rest[0])
    raise NotCompilable(
        f"transformer {name!r}: unexpected steps {[type(s).__name__ for s in rest]}"
    )


def _target_block(cols: tuple[str, ...], fill: str, encoder: TargetEncoder) -> _Target:
    """TargetEncoder.transform as a lookup: for multiclass, feature i's class-j means are
    `encodings_[i * n_classes + j]` and its output columns are feature-major."""
    k = len(encoder.classes_) if encoder.target_type_ == "multiclass" else 1
    default = tuple(float(v) for v in np.atleast_1d(np.asarray(encoder.target_mean_, float)))
    if len(default) != k:
        raise NotCompilable("target encoder: unexpected target mean shape")
    table = []
    for i, cats in enumerate(encoder.categories_):
        columns = [np.asarray(encoder.encodings_[i * k + j], dtype=np.float64) for j in range(k)]
        table.append({str(c): tuple(float(col[p]) for col in columns) for p, c in enumerate(cats)})
    return _Target(cols, fill, tuple(table), default)


def frame_columns(frame: pd.DataFrame, names: Sequence[str]) -> dict[str, list[Any]]:
    """Columns of a prepared feature frame, missing values as None (the request form)."""
    out: dict[str, list[Any]] = {}
    for name in names:
        col = frame[name]
        out[name] = [None if pd.isna(v) else v for v in col.tolist()]
    return out


# -- the compiled model -----------------------------------------------------------------------


class CompiledModel:
    """Encoder + ONNX Runtime session, answering like the pipeline it was compiled from."""

    def __init__(
        self,
        encoder: Encoder,
        onnx_bytes: bytes,
        *,
        classes: Sequence[Any] | None,
        threads: int = 1,
        inverse: str | None = None,
    ) -> None:
        import onnxruntime as ort  # serving-only dependency; imported when a model loads

        options = ort.SessionOptions()
        # One small request at a time per worker: extra threads only add hand-off latency.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise NotCompilable(f"the ONNX model takes {len(inputs)} inputs, expected 1")
        self.input_name = inputs[0].name
        self.dtype = np.float32 if inputs[0].type == "tensor(float)" else np.float64
        outputs = [o.name for o in self.session.get_outputs()]
        self.classes = None if classes is None else list(classes)
        if self.classes is not None and "probabilities" not in outputs:
            raise NotCompilable("the ONNX classifier has no 'probabilities' output")
        self.output = "probabilities" if self.classes is not None else outputs[0]
        self.encoder = encoder
        if inverse not in (None, "expm1"):
            raise NotCompilable(f"unknown target inverse {inverse!r}")
        self.inverse = inverse

    def run(self, columns: Columns, n: int) -> np.ndarray:
        """Probabilities (n, classes) for a classifier, predictions (n,) for a regressor."""
        x = self.encoder.encode(columns, n).astype(self.dtype, copy=False)
        out = self.session.run([self.output], {self.input_name: x})[0]
        out = np.asarray(out, dtype=np.float64)
        if self.classes is not None:
            return out
        out = out.reshape(-1)
        return np.expm1(out) if self.inverse == "expm1" else out


def converted_model(pipeline: Any) -> tuple[Any, str | None]:
    """The estimator the ONNX file holds, and the inverse serving applies to its output: a
    log1p target transform (`TransformedTargetRegressor`) compiles its regressor, the
    predictions then go through expm1 as scikit-learn's inverse_func does."""
    from sklearn.compose import TransformedTargetRegressor

    model = pipeline.steps[-1][1]
    if not isinstance(model, TransformedTargetRegressor):
        return model, None
    if model.func is not np.log1p or model.inverse_func is not np.expm1:
        raise NotCompilable("a target transform other than log1p is not compiled")
    return model.regressor_, "expm1"


def reference_outputs(pipeline: Any, frame: pd.DataFrame, *, classification: bool) -> np.ndarray:
    if classification:
        return np.asarray(pipeline.predict_proba(frame), dtype=np.float64)
    return np.asarray(pipeline.predict(frame), dtype=np.float64).reshape(-1)


def parity_tolerance(want: np.ndarray, *, classification: bool) -> float:
    """The largest output difference parity allows: absolute for probabilities, relative to
    the predictions' scale for a regression."""
    if classification or not want.size:
        return PARITY_TOLERANCE
    scale = float(np.max(np.abs(want)))
    return max(PARITY_TOLERANCE, REGRESSION_RELATIVE_TOLERANCE * scale)


def parity(
    compiled: CompiledModel, pipeline: Any, frame: pd.DataFrame, names: Sequence[str]
) -> float:
    """Max absolute output difference on `frame`; raises NotCompilable when it is too large."""
    classification = compiled.classes is not None
    want = reference_outputs(pipeline, frame, classification=classification)
    got = compiled.run(frame_columns(frame, names), len(frame))
    if got.shape != want.shape:
        raise NotCompilable(f"output shape {got.shape} differs from scikit-learn's {want.shape}")
    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
    allowed = parity_tolerance(want, classification=classification)
    if not np.isfinite(got).all() or diff > allowed:
        raise NotCompilable(
            f"outputs differ from scikit-learn's by up to {diff:.3g} "
            f"(tolerance {allowed:.3g}) on {len(frame)} rows"
        )
    if classification and not np.array_equal(got.argmax(axis=1), want.argmax(axis=1)):
        raise NotCompilable("predicted classes differ from scikit-learn's")
    return diff


def parity_frame(frame: pd.DataFrame, contract: Contract, *, seed: int) -> pd.DataFrame:
    """Held-out rows plus copies with missing values and unseen categories in every feature."""
    rng = np.random.default_rng(seed)
    base = frame.iloc[rng.permutation(len(frame))[:PARITY_ROWS]].reset_index(drop=True)
    names = list(contract.features)
    variants = [base]
    if len(base):
        holes = base.copy()
        for k, name in enumerate(names):  # row i loses feature i mod k: every feature, all types
            holes.loc[holes.index % len(names) == k, name] = np.nan
        variants.append(holes)
        if contract.categorical:
            unseen = base.copy()
            for name in contract.categorical:
                unseen.loc[unseen.index % 2 == 0, name] = UNSEEN_MARK
            variants.append(unseen)
    out = pd.concat(variants, ignore_index=True)
    for name in contract.encoded_numeric:
        out[name] = out[name].astype("float64")
    for name in contract.categorical:
        out[name] = out[name].astype("object")
    return out[names]

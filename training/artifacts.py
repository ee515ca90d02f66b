"""A registered model's recorded facts and files, and how each file is verified: no MLflow.

The tags and artifact names every version carries, `ModelRef`, and the checks of a model
folder's files (skops with a digest and a trusted-type list, the compiled ONNX file, the
held-out parity rows, the input signature against the contract). The serving worker loads its
cached champion with these alone, before the registry client (MLflow) is imported.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from champion.service.runtime import ONNX_FILE, RUNTIME_SKLEARN
from champion.training.config import Contract
from champion.training.errors import IntegrityError

# The only types a model file may contain beyond skops' own safe defaults. Declared here, in
# code, and never read from the artifact: a tampered file cannot widen what it may load.
TRUSTED_TYPES: tuple[str, ...] = (
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
)
MODEL_FILE = "model.skops"
PARITY_FILE = "parity_rows.parquet"  # held-out rows the compiled form is re-checked on at load

TAG_SHA256 = "champion.sha256"
TAG_CANDIDATE = "champion.candidate"
TAG_RUNTIME = "champion.runtime"
TAG_RUNTIME_NOTE = "champion.runtime_note"
TAG_ONNX_SHA256 = "champion.onnx_sha256"
TAG_PARITY_SHA256 = "champion.parity_rows_sha256"
TAG_VERDICT = "champion.verdict"
TAG_KIND = "champion.kind"
TAG_DATA = "champion.data_sha256"
TAG_ROWS = "champion.rows"
TAG_TRIGGER = "champion.trigger"
TAG_CHAMPION_BEFORE = "champion.champion_before"
TAG_SOURCE = "champion.source"
TAG_ERROR = "champion.error"
TAG_REASON = "champion.reason"
# Where the cycle's lease lives: a reconcile holding the cycle lease of the same domain knows
# the run's process is gone; a run of another domain may still be alive and is left alone.
TAG_LEASE_DOMAIN = "champion.lease_domain"
CV_PREFIX = "cv_"
# Artifact names a run carries, read back by the gate, the service and the monitor.
FINGERPRINT = "fingerprint.json"
REFERENCE_PROFILE = "reference_profile.json"
CV_SCORES = "cv_scores.json"
GATE_FOLDS = "gate_folds.json"
VERDICT_FILE = "verdict.json"
PLOTS = "plots"


@dataclass(frozen=True)
class ModelRef:
    """A registered model version and the facts recorded on it."""

    version: str
    run_id: str | None
    tags: Mapping[str, str]
    created_ms: int = 0

    @property
    def sha256(self) -> str | None:
        return self.tags.get(TAG_SHA256)

    @property
    def candidate_json(self) -> str | None:
        return self.tags.get(TAG_CANDIDATE)

    @property
    def rows(self) -> str | None:
        return self.tags.get(TAG_ROWS)

    @property
    def runtime(self) -> str:
        """What registration chose to serve it: `onnxruntime` or `sklearn`."""
        return self.tags.get(TAG_RUNTIME, RUNTIME_SKLEARN)

    @property
    def runtime_note(self) -> str | None:
        return self.tags.get(TAG_RUNTIME_NOTE)

    @property
    def verdict(self) -> str | None:
        return self.tags.get(TAG_VERDICT)


@dataclass(frozen=True)
class RunSummary:
    """The numbers a cycle run recorded, in champion's terms (no MLflow object leaves here)."""

    run_id: str
    status: str
    metrics: Mapping[str, float]
    started_ms: int | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def cv_metrics(self) -> dict[str, float]:
        """The cross-validated summaries (means and spreads, fold values left out)."""
        return {
            k: v for k, v in self.metrics.items() if k.startswith(CV_PREFIX) and "_fold_" not in k
        }

    def cv_mean(self, metric: str) -> float | None:
        return self.metrics.get(f"{CV_PREFIX}{metric}_mean")


def cv_metrics(
    metric: str,
    *,
    mean: float,
    std: float,
    folds: Sequence[float],
    guardrails: Mapping[str, float],
) -> dict[str, float]:
    """The cycle run's cross-validation metrics under their recorded names."""
    out = {f"{CV_PREFIX}{metric}_mean": mean, f"{CV_PREFIX}{metric}_std": std}
    out |= {f"{CV_PREFIX}{metric}_fold_{i}": s for i, s in enumerate(folds)}
    out |= {f"{CV_PREFIX}{name}_mean": value for name, value in guardrails.items()}
    return out


def load_model(
    local_dir: Path, facts: Mapping[str, Any], *, expected_sha256: str | None
) -> tuple[Any, str]:
    """A model folder's model file, after checking its format, that its name (read from the
    artifact) stays inside the folder, and its digest; loaded from the very bytes hashed.
    `facts` holds `serialization_format` and `model_file` as `registry.model_facts` reads them
    from the MLmodel file."""
    import skops.io as sio  # loads scikit-learn: only when a model is loaded

    stored_as = facts.get("serialization_format")
    if stored_as != "skops":
        raise IntegrityError(
            f"model in {local_dir} is stored as {stored_as!r}; only 'skops' is loaded"
        )
    if expected_sha256 is None:
        raise IntegrityError(f"model in {local_dir} has no recorded digest ({TAG_SHA256})")
    name = str(facts.get("model_file", MODEL_FILE))
    root = local_dir.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise IntegrityError(f"model file {name!r} is not a file inside the model folder")
    data = path.read_bytes()  # hashed and loaded from the same bytes: nothing swapped between
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise IntegrityError(
            f"model file digest {digest[:12]}… does not match the recorded {expected_sha256[:12]}…"
        )
    try:
        return sio.loads(data, trusted=list(TRUSTED_TYPES)), digest
    except sio.exceptions.UntrustedTypesFoundException as exc:
        raise IntegrityError(f"model file holds types outside the trusted list: {exc}") from None


def read_onnx(local_dir: Path, *, expected_sha256: str | None) -> bytes:
    """The compiled model file of a downloaded version, after checking its recorded digest."""
    path = local_dir / ONNX_FILE
    if expected_sha256 is None:
        raise IntegrityError(f"compiled model in {local_dir} has no recorded digest")
    if not path.is_file():
        raise IntegrityError(f"compiled model {ONNX_FILE} is missing from {local_dir}")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise IntegrityError(f"{ONNX_FILE} digest does not match the recorded one")
    return data


def parity_rows(local_dir: Path, *, expected_sha256: str | None) -> pd.DataFrame | None:
    """The held-out rows stored with a compiled version (None for versions without them)."""
    path = local_dir / PARITY_FILE
    if expected_sha256 is None or not path.is_file():
        return None
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise IntegrityError(f"{PARITY_FILE} digest does not match the recorded one")
    return pd.read_parquet(io.BytesIO(data))


def signature_problems(inputs: Mapping[str, str] | None, contract: Contract) -> list[str]:
    """Differences between a model's input signature (name -> type, as MLflow names types)
    and the contract's features."""
    if inputs is None:
        return ["the model has no input signature"]
    declared = list(contract.features)
    problems = []
    if missing := [n for n in declared if n not in inputs]:
        problems.append(f"missing features {missing}")
    if extra := [n for n in inputs if n not in declared]:
        problems.append(f"unexpected features {extra}")
    for name in declared:
        if name not in inputs:
            continue
        kind = contract.features[name].type
        found = inputs[name].lower()
        numeric = any(t in found for t in ("double", "float", "long", "integer"))
        if (kind != "categorical") != numeric:  # ordinal and boolean reach it as numbers
            problems.append(f"feature '{name}' is {found} in the model, {kind} in the contract")
    return problems

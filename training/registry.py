"""The MLflow adapter: the only code that talks to the tracking server and model registry."""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.tracking import MlflowClient

from champion.service.runtime import ONNX_FILE, RUNTIME_SKLEARN
from champion.training.artifacts import (
    MODEL_FILE,
    PARITY_FILE,
    TAG_KIND,
    TAG_ONNX_SHA256,
    TAG_PARITY_SHA256,
    TAG_RUNTIME,
    TAG_RUNTIME_NOTE,
    TAG_SHA256,
    TRUSTED_TYPES,
    ModelRef,
    RunSummary,
    load_model,
)
from champion.training.compile import Compilation
from champion.training.errors import RegistryError
from champion.training.files import sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    ref: ModelRef
    pipeline: Any
    sha256: str
    input_names: tuple[str, ...]
    local_dir: Path


def load_verified(local_dir: Path, *, expected_sha256: str | None) -> tuple[Any, str]:
    """Load a downloaded model directory after checking its format and digest."""
    return load_model(
        local_dir, _file_facts(Model.load(str(local_dir))), expected_sha256=expected_sha256
    )


def model_facts(local_dir: Path) -> dict[str, Any]:
    """What loading a model folder needs from its MLmodel file, in plain values: how the model
    file is stored and its name, the input signature and the input example (split form), so a
    cached copy can be loaded again without MLflow (`champion.service.slot`)."""
    mlmodel = Model.load(str(local_dir))
    example = mlmodel.load_input_example(str(local_dir))
    return _file_facts(mlmodel) | {
        "signature": signature_inputs(mlmodel),
        "example": example.to_dict(orient="split") if isinstance(example, pd.DataFrame) else None,
    }


def _file_facts(mlmodel: Model) -> dict[str, Any]:
    flavor = mlmodel.flavors.get("sklearn", {})
    return {
        "serialization_format": flavor.get("serialization_format"),
        "model_file": str(flavor.get("pickled_model", MODEL_FILE)),
    }


def signature_inputs(mlmodel: Model) -> dict[str, str] | None:
    if mlmodel.signature is None:
        return None
    return {
        str(s.name): str(getattr(s, "type", "")).lower() for s in mlmodel.signature.inputs.inputs
    }


def _ref(mv: Any) -> ModelRef:
    return ModelRef(
        version=str(mv.version),
        run_id=mv.run_id,
        tags=dict(mv.tags or {}),
        created_ms=int(mv.creation_timestamp or 0),
    )


def is_server(tracking_uri: str) -> bool:
    """Whether `tracking_uri` names an MLflow tracking server (`http://`, `https://`)."""
    return urlparse(tracking_uri).scheme.lower() in ("http", "https")


def artifact_location(tracking_uri: str, artifact_root: Path | None, model_name: str) -> str | None:
    """Where a new experiment's artifacts go: the rule `Registry` creates experiments by.

    - Tracking server (`http(s)://`): None, always, whatever `artifact_root` says. The server
      then applies its own default (`mlflow-artifacts:/…` under `--serve-artifacts`), so
      artifacts travel through the server and every host downloads them over HTTP. A `file://`
      location here would pin them to the disk of whichever host created the experiment.
    - Store opened directly (the embedded default, `sqlite:///…`): `artifact_root/model_name`
      as a `file://` URI when `artifact_root` is given, else None (MLflow's default).
    """
    if is_server(tracking_uri) or artifact_root is None:
        return None
    return (artifact_root / model_name).resolve().as_uri()


class Registry:
    """Runs, model versions and aliases of one registered model.

    Everything goes through `tracking_uri` (also the registry URI), never MLflow's global
    tracking URI, so one process may hold registries on different stores. With a tracking
    server, artifacts are uploaded to and downloaded from the server (see `artifact_location`):
    nothing assumes a filesystem shared between hosts. `artifact_root` applies to a store
    opened directly only.
    """

    def __init__(self, *, tracking_uri: str, model_name: str, artifact_root: Path | None = None):
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.artifact_root = artifact_root
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._experiment_id: str | None = None

    # -- read side (also used by the service) ------------------------------------------------

    def alias(self, alias: str) -> ModelRef | None:
        try:
            return _ref(self.client.get_model_version_by_alias(self.model_name, alias))
        except MlflowException as exc:
            if exc.error_code in (
                "RESOURCE_DOES_NOT_EXIST",
                "INVALID_PARAMETER_VALUE",
                "NOT_FOUND",
            ):
                return None
            raise RegistryError(f"registry lookup of alias '{alias}' failed: {exc}") from exc

    def aliases(self) -> dict[str, str]:
        try:
            rm = self.client.get_registered_model(self.model_name)
        except MlflowException:
            return {}
        return {str(k): str(v) for k, v in (rm.aliases or {}).items()}

    def version(self, version: str) -> ModelRef:
        try:
            return _ref(self.client.get_model_version(self.model_name, str(version)))
        except MlflowException as exc:
            raise RegistryError(f"model version {self.model_name} v{version} not found") from exc

    def download(self, ref: ModelRef, dst: Path) -> Path:
        dst.mkdir(parents=True, exist_ok=True)
        # Resolve through our own client: MLflow resolves `models:/` URIs through the global
        # registry URI, which may point elsewhere.
        try:
            source = self.client.get_model_version_download_uri(self.model_name, ref.version)
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(dst), tracking_uri=self.tracking_uri
            )
        except (MlflowException, OSError) as exc:
            raise RegistryError(f"cannot download v{ref.version}: {exc}") from exc
        return Path(local)

    def load(self, ref: ModelRef, *, cache_dir: Path) -> LoadedModel:
        """Download into `cache_dir` (the caller owns and removes it), verify and load."""
        local = self.download(ref, cache_dir / f"v{ref.version}")
        pipeline, digest = load_verified(local, expected_sha256=ref.sha256)
        signature = Model.load(str(local)).signature
        names = tuple(signature.inputs.input_names()) if signature else ()
        return LoadedModel(ref, pipeline, digest, tuple(str(n) for n in names), local)

    def run_json(self, run_id: str, path: str) -> dict[str, Any] | None:
        # Into a folder we remove: without dst_path MLflow leaves a temp folder per call.
        with tempfile.TemporaryDirectory(prefix="champion-artifact-") as tmp:
            try:
                local = mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=path, dst_path=tmp, tracking_uri=self.tracking_uri
                )
            except (MlflowException, OSError):
                return None
            return dict(json.loads(Path(local).read_text(encoding="utf-8")))

    def run_summary(self, run_id: str) -> RunSummary | None:
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        return _summary(run)

    def runs(
        self, *, kind: str | None = None, parent: str | None = None, status: str | None = None
    ) -> list[RunSummary]:
        """This model's runs, oldest first: cycles (`kind="cycle"`), or a cycle's trials."""
        clauses = []
        if kind is not None:
            clauses.append(f"tags.`{TAG_KIND}` = '{kind}'")
        if parent is not None:
            clauses.append(f"tags.`mlflow.parentRunId` = '{parent}'")
        if status is not None:
            clauses.append(f"attributes.status = '{status}'")
        exp = self._experiment_id or getattr(
            self.client.get_experiment_by_name(self.model_name), "experiment_id", None
        )
        if exp is None:
            return []  # nothing has run yet
        found = self.client.search_runs(
            [exp],
            filter_string=" and ".join(clauses),
            order_by=["attributes.start_time ASC"],
        )
        return [_summary(r) for r in found]

    def artifacts(self, run_id: str, path: str = "") -> list[str]:
        """Paths of a run's artifacts directly under `path`."""
        return [str(a.path) for a in self.client.list_artifacts(run_id, path or None)]

    def prepare(self) -> None:
        """Create (or migrate) the tracking store's tables now rather than on first use."""
        self.client.search_experiments()

    # -- write side (training only) ----------------------------------------------------------

    def _experiment(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.model_name)
            if exp is not None:
                self._experiment_id = exp.experiment_id
            else:
                location = artifact_location(self.tracking_uri, self.artifact_root, self.model_name)
                try:
                    self._experiment_id = self.client.create_experiment(
                        self.model_name, artifact_location=location
                    )
                except MlflowException:
                    # Lost a creation race with another process: use theirs.
                    exp = self.client.get_experiment_by_name(self.model_name)
                    if exp is None:
                        raise
                    self._experiment_id = exp.experiment_id
        return self._experiment_id

    def ensure_model(self) -> None:
        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            try:
                self.client.create_registered_model(
                    self.model_name,
                    description="Managed by champion: aliases "
                    "'champion' (serving), 'previous' (rollback), 'challenger' (latest candidate).",
                )
            except MlflowException:
                self.client.get_registered_model(self.model_name)

    def start_run(self, *, name: str, tags: Mapping[str, str], parent: str | None = None) -> str:
        all_tags = dict(tags)
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self._experiment(), run_name=name, tags=all_tags)
        return str(run.info.run_id)

    def log(
        self,
        run_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[
                Metric(k, float(v), now, 0)
                for k, v in (metrics or {}).items()
                if v is not None and math.isfinite(float(v))
            ],
            params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()],
        )

    def log_json(self, run_id: str, obj: Any, path: str) -> None:
        self.client.log_dict(run_id, obj, path)

    def log_files(self, run_id: str, files: Sequence[Path], artifact_path: str) -> None:
        for f in files:
            self.client.log_artifact(run_id, str(f), artifact_path)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def register(
        self,
        run_id: str,
        pipeline: Any,
        *,
        example: pd.DataFrame,
        tags: Mapping[str, str],
        compilation: Compilation | None = None,
    ) -> ModelRef:
        """Log the pipeline (skops, signature, example) and its compiled form; register it.

        The compiled ONNX file sits beside the skops file in the model's artifacts, and the
        version records which runtime serves it, why, and the file's digest.
        """
        self.ensure_model()
        signature = infer_signature(example, pipeline.predict(example))
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.sklearn.log_model(
                pipeline,
                name="model",
                serialization_format="skops",
                skops_trusted_types=list(TRUSTED_TYPES),
                signature=signature,
                input_example=example,
                # Explicit requirements: inferring them spawns a subprocess for seconds.
                pip_requirements=_requirements(),
            )
        # Leaving the fluent context marks the run finished; the cycle is not done yet.
        self.client.update_run(run_id, status="RUNNING")
        runtime_tags = self._log_compiled(info.model_id, compilation)
        digest = self._stored_digest(info.artifact_path)
        mv = self.client.create_model_version(
            self.model_name,
            source=info.model_uri,
            run_id=run_id,
            tags={**tags, TAG_SHA256: digest, **runtime_tags},
            # A tracking server checks that a `models:/m-…` source names this logged model.
            model_id=info.model_id,
        )
        self.client.set_registered_model_alias(self.model_name, "challenger", mv.version)
        return _ref(mv)

    def _log_compiled(self, model_id: str, compilation: Compilation | None) -> dict[str, str]:
        """Put the ONNX file beside the model; the tags saying which runtime serves, and why."""
        tags = {TAG_RUNTIME: RUNTIME_SKLEARN}
        if compilation is None:
            return tags
        tags[TAG_RUNTIME_NOTE] = compilation.reason[:5000]
        if compilation.onnx is not None and compilation.sha256 is not None:
            with tempfile.TemporaryDirectory() as tmp:
                onnx_path = Path(tmp) / ONNX_FILE
                onnx_path.write_bytes(compilation.onnx)
                self.client.log_model_artifact(model_id, str(onnx_path))
                if compilation.sample is not None and len(compilation.sample):
                    rows_path = Path(tmp) / PARITY_FILE
                    compilation.sample.to_parquet(rows_path, index=False)
                    self.client.log_model_artifact(model_id, str(rows_path))
                    tags[TAG_PARITY_SHA256] = sha256_file(rows_path)
            tags |= {TAG_RUNTIME: compilation.runtime, TAG_ONNX_SHA256: compilation.sha256}
        return tags

    def _stored_digest(self, artifact_path: str) -> str:
        """The digest of the model file as stored (read back, not as written)."""
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{artifact_path}/{MODEL_FILE}",
                    dst_path=tmp,
                    tracking_uri=self.tracking_uri,
                )
            )
            return sha256_file(local)

    def set_version_tags(self, version: str, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_model_version_tag(self.model_name, version, k, str(v)[:5000])

    def describe_version(self, version: str, description: str) -> None:
        """Set the version's description: its verdict, family and CV summary, for the UI."""
        self.client.update_model_version(
            self.model_name, str(version), description=description[:5000]
        )

    def move_champion(self, *, expected: str | None, new: str) -> bool:
        """Compare-and-set the champion alias; callers hold the registry lease.

        `previous` moves first: a crash between the two writes leaves the old champion
        serving with `previous` pointing at it too, which is still a whole state.
        """
        current = self.alias("champion")
        current_version = current.version if current else None
        if current_version != expected:
            return False
        if current_version is not None and current_version != new:
            self.client.set_registered_model_alias(self.model_name, "previous", current_version)
        self.client.set_registered_model_alias(self.model_name, "champion", new)
        # Read back: a writer that bypassed the lease (or a registry that dropped the write)
        # shows here, and the move is not reported as done.
        after = self.alias("champion")
        if after is None or after.version != new:
            raise RegistryError(
                f"the champion alias reads v{after.version if after else None} right after "
                f"moving it to v{new}: another writer moved it without the registry lease"
            )
        return True

    def running_cycle_runs(self) -> list[str]:
        return [r.run_id for r in self.runs(kind="cycle", status="RUNNING")]


def _summary(run: Any) -> RunSummary:
    return RunSummary(
        str(run.info.run_id),
        str(run.info.status),
        {str(k): float(v) for k, v in (run.data.metrics or {}).items()},
        run.info.start_time,
        {str(k): str(v) for k, v in (run.data.params or {}).items()},
        {str(k): str(v) for k, v in (run.data.tags or {}).items()},
    )


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"scikit-learn=={version('scikit-learn')}", f"skops=={version('skops')}"]


__all__ = ["LoadedModel", "Registry", "artifact_location", "is_server"]

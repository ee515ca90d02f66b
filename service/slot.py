"""The model slot: follow the `champion` alias, load + verify + warm up, then swap atomically."""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import pandas as pd

from champion.service.runtime import (
    RUNTIME_ONNX,
    RUNTIME_SKLEARN,
    CompiledModel,
    Encoder,
    converted_model,
    frame_columns,
    parity,
    parity_frame,
)
from champion.training.artifacts import (
    TAG_CANDIDATE,
    TAG_ONNX_SHA256,
    TAG_PARITY_SHA256,
    TAG_RUNTIME,
    ModelRef,
    load_model,
    parity_rows,
    read_onnx,
    signature_problems,
)
from champion.training.config import Contract
from champion.training.errors import ChampionError, IntegrityError, RegistryError
from champion.training.files import atomic_write_text
from champion.training.metrics import apply_threshold, positive_label
from champion.training.pipeline import Candidate
from champion.training.ports import LedgerStore, ModelRegistry

log = logging.getLogger(__name__)

CACHE_INDEX = "champion.json"


def _cache_name(version: str, sha256: str | None) -> str:
    return f"v{version}-{(sha256 or 'unknown')[:16]}"


def _example(split: Mapping[str, Any] | None) -> pd.DataFrame | None:
    """The input example from its `to_dict(orient="split")` form (`registry.model_facts`)."""
    if not split:
        return None
    return pd.DataFrame(split["data"], columns=split["columns"], index=split.get("index"))


class Recorded(NamedTuple):
    """The champion as the ledger recorded it: its version and the run that trained it."""

    version: str
    run_id: str | None


def recorded_champion(ledger: LedgerStore) -> Recorded | None:
    """The champion the ledger last recorded, with the run of the cycle that registered it
    (from the newest entries back); None when the ledger cannot say. Only that exact model
    is served from the cache ahead of the registry (`ModelSlot.start`)."""
    try:
        version = ledger.last_champion()
        if version is None:
            return None
        for entry in itertools.islice(ledger.tail(), 10_000):
            if entry.get("event") == "cycle" and entry.get("challenger_version") == version:
                return Recorded(version, entry.get("run_id"))
        return Recorded(version, None)
    except Exception as exc:  # an unreadable ledger must not stop the worker
        log.warning("ledger unreadable at start", extra={"error": str(exc)})
        return None


class Inputs(Protocol):
    """Validated rows: per-feature columns (None = missing) and, on demand, a DataFrame."""

    @property
    def columns(self) -> Mapping[str, Sequence[Any]]: ...

    @property
    def n(self) -> int: ...

    @property
    def frame(self) -> pd.DataFrame: ...


@dataclass(frozen=True)
class FrameInputs:
    """Inputs from an already prepared feature frame (warm-up, parity checks)."""

    frame: pd.DataFrame

    @property
    def columns(self) -> Mapping[str, Sequence[Any]]:
        return frame_columns(self.frame, [str(c) for c in self.frame.columns])

    @property
    def n(self) -> int:
        return len(self.frame)


@dataclass(frozen=True)
class Served:
    """A loaded, verified and warmed-up model: immutable, swapped in as one reference."""

    version: str
    pipeline: Any
    sha256: str
    classes: list[Any] | None
    loaded_at: str
    source: str  # "registry" | "cache"
    tags: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None
    registered_ms: int = 0
    compiled: CompiledModel | None = None
    runtime_note: str = ""
    # What loading needs from the MLmodel file (`registry.model_facts`), kept in the cache
    # index so a restart loads the cached copy without MLflow.
    facts: dict[str, Any] = field(default_factory=dict, repr=False)
    # A binary classifier's decision threshold (registered with its candidate) and the class
    # it applies to; None: the most probable class is predicted.
    threshold: float | None = None
    positive: Any = None

    @property
    def runtime(self) -> str:
        return RUNTIME_ONNX if self.compiled is not None else RUNTIME_SKLEARN

    @property
    def candidate(self) -> str | None:
        """The tuned candidate (family and parameters) as registered, JSON."""
        return self.tags.get(TAG_CANDIDATE)

    def predict(self, inputs: Inputs) -> tuple[np.ndarray, np.ndarray | None]:
        if self.compiled is not None:
            out = self.compiled.run(inputs.columns, inputs.n)
        elif self.classes is None:
            out = np.asarray(self.pipeline.predict(inputs.frame))
        else:
            out = np.asarray(self.pipeline.predict_proba(inputs.frame))
        if self.classes is None:
            return out, None
        if self.threshold is not None:
            return apply_threshold(out, self.classes, self.positive, self.threshold), out
        # One pass: a classifier's prediction is its most probable class, so deriving it from
        # the probabilities halves the model's cost per request.
        return self._class_array[out.argmax(axis=1)], out

    @cached_property
    def _class_array(self) -> np.ndarray:
        return np.asarray(self.pipeline.classes_)


def _decision(
    tags: Mapping[str, str], classes: list[Any] | None, contract: Contract
) -> tuple[float | None, Any]:
    """The registered decision threshold of a binary classifier and its positive class."""
    recipe = tags.get(TAG_CANDIDATE)
    if not recipe or classes is None or len(classes) != 2:
        return None, None
    threshold = Candidate.from_json(recipe).threshold
    if threshold is None:
        return None, None
    return threshold, positive_label(classes, contract.metrics.positive_class)


@dataclass
class SlotStatus:
    ready: bool
    version: str | None
    source: str | None
    degraded: str | None
    last_error: str | None
    swaps: int
    swap_failures: int


class ModelSlot:
    """Holds the serving model and the one before it; all swaps are one reference assignment."""

    def __init__(
        self,
        *,
        registry: ModelRegistry | Callable[[], ModelRegistry],
        contract: Contract,
        cache_dir: Path,
        on_swap: Callable[[Served], None] | None = None,
        on_swap_failure: Callable[[str], None] | None = None,
        on_error: Callable[[], None] | None = None,
        on_first_check: Callable[[], None] | None = None,
        threads: int = 1,
    ) -> None:
        # A factory defers the registry client (MLflow) until the cached champion serves.
        self._registry = registry
        self.threads = threads
        self.contract = contract
        self.cache_dir = cache_dir
        self.current: Served | None = None
        self.previous: Served | None = None
        self.degraded: str | None = None
        self.last_error: str | None = None
        self.swaps = 0
        self.swap_failures = 0
        self._lock = threading.Lock()  # one load at a time; readers never take it
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_swap = on_swap or (lambda served: None)
        self._on_swap_failure = on_swap_failure or (lambda reason: None)
        self._on_error = on_error or (lambda: None)
        self._on_first_check = on_first_check or (lambda: None)

    @cached_property
    def registry(self) -> ModelRegistry:
        source = self._registry
        return source() if callable(source) else source

    # -- status ---------------------------------------------------------------------------

    def status(self) -> SlotStatus:
        served = self.current
        return SlotStatus(
            ready=served is not None,
            version=served.version if served else None,
            source=served.source if served else None,
            degraded=self.degraded,
            last_error=self.last_error,
            swaps=self.swaps,
            swap_failures=self.swap_failures,
        )

    # -- loading --------------------------------------------------------------------------

    def _prepare(
        self,
        local_dir: Path,
        *,
        facts: Mapping[str, Any],
        sha256: str | None,
        version: str,
        source: str,
        tags: dict[str, str],
        run_id: str | None,
        registered_ms: int = 0,
    ) -> Served:
        pipeline, digest = load_model(local_dir, facts, expected_sha256=sha256)
        problems = signature_problems(facts.get("signature"), self.contract)
        if problems:
            raise ChampionError(f"v{version} does not fit the contract: {'; '.join(problems)}")
        classes = (
            [c.item() if hasattr(c, "item") else c for c in pipeline.classes_]
            if self.contract.task == "classification"
            else None
        )
        example = _example(facts.get("example"))
        if example is None or example.empty:
            raise ChampionError(f"v{version} has no input example to warm up on")
        compiled, note = self._compiled(local_dir, pipeline, tags, example, version)
        threshold, positive = _decision(tags, classes, self.contract)
        served = Served(
            version,
            pipeline,
            digest,
            classes,
            datetime.now(UTC).isoformat(timespec="seconds"),
            source,
            tags,
            run_id,
            registered_ms,
            compiled,
            note,
            dict(facts),
            threshold,
            positive,
        )
        # Warm-up: the first real request pays no lazy costs.
        served.predict(FrameInputs(example.head(1)))
        return served

    def _compiled(
        self,
        local_dir: Path,
        pipeline: Any,
        tags: Mapping[str, str],
        example: pd.DataFrame,
        version: str,
    ) -> tuple[CompiledModel | None, str]:
        """The version's compiled form, re-checked against scikit-learn; None = serve sklearn."""
        if tags.get(TAG_RUNTIME) != RUNTIME_ONNX:
            return None, "registered for scikit-learn"
        try:
            data = read_onnx(local_dir, expected_sha256=tags.get(TAG_ONNX_SHA256))
            classes = pipeline.classes_ if self.contract.task == "classification" else None
            compiled = CompiledModel(
                Encoder.from_pipeline(pipeline),
                data,
                classes=classes,
                threads=self.threads,
                inverse=converted_model(pipeline)[1],
            )
            names = list(self.contract.features)
            # The held-out rows registered with it; versions from before them: the example.
            stored = parity_rows(local_dir, expected_sha256=tags.get(TAG_PARITY_SHA256))
            base = stored if stored is not None else example
            rows = parity_frame(base[names], self.contract, seed=0)
            diff = parity(compiled, pipeline, rows, names)
        except Exception as exc:  # NotCompilable, IntegrityError, or a runtime's own
            # Slower, never wrong: the verified scikit-learn pipeline serves instead.
            log.error(
                "compiled model refused; serving with scikit-learn",
                extra={"version": version, "error": str(exc)},
            )
            return None, f"compiled form refused at load: {exc}"
        return compiled, f"parity {diff:.2g} on {len(rows)} rows at load"

    def _cached_dir(self, ref: ModelRef) -> Path:
        # Keyed by version *and* digest: a re-created registry reuses version numbers, and a
        # folder holding another model under the same number must never be taken for this one.
        target = self.cache_dir / _cache_name(ref.version, ref.sha256)
        if target.exists():
            return target
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".v{ref.version}-", dir=self.cache_dir))
        try:
            local = self.registry.download(ref, tmp / "dl")
            try:
                local.rename(target)  # atomic; another worker may have won the race
            except OSError:
                if not target.exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def _load_ref(self, ref: ModelRef) -> Served:
        from champion.training.registry import model_facts

        def prepare() -> Served:
            local_dir = self._cached_dir(ref)
            return self._prepare(
                local_dir,
                facts=model_facts(local_dir),
                sha256=ref.sha256,
                version=ref.version,
                source="registry",
                tags=dict(ref.tags),
                run_id=ref.run_id,
                registered_ms=ref.created_ms,
            )

        try:
            return prepare()
        except IntegrityError:
            # A damaged cached copy (a torn download, a changed file): fetch it once more.
            shutil.rmtree(self.cache_dir / _cache_name(ref.version, ref.sha256), ignore_errors=True)
            return prepare()

    def _write_index(self, served: Served) -> None:
        body = {
            "version": served.version,
            "folder": _cache_name(served.version, served.sha256),
            "sha256": served.sha256,
            "tags": served.tags,
            "run_id": served.run_id,
            "registered_ms": served.registered_ms,
            "facts": served.facts,
        }
        atomic_write_text(self.cache_dir / CACHE_INDEX, json.dumps(body, indent=1))

    def load_from_cache(self, *, expected: Recorded | None = None) -> bool:
        """Serve the last champion this host loaded, digest-checked: at start, before the
        registry client is imported, when it is the champion the ledger recorded (`expected`:
        the same version, trained by the same run); and, whatever it is, when the registry
        is down with nothing loaded."""
        index = self.cache_dir / CACHE_INDEX
        if not index.exists():
            return False
        try:
            meta = json.loads(index.read_text(encoding="utf-8"))
            cached = Recorded(str(meta.get("version")), meta.get("run_id"))
            if expected is not None and (expected.run_id is None or cached != expected):
                # Another version (a promotion while this host was down), or the same number
                # from another registry (its run differs): never served ahead of the registry.
                log.info(
                    "cached model is not the recorded champion; loading from the registry",
                    extra={"cached": cached.version, "champion": expected.version},
                )
                return False
            folder = meta.get("folder") or f"v{meta['version']}"
            if Path(folder).name != folder:  # the index names a folder inside the cache only
                raise ChampionError(f"cache index names {folder!r}, not a cache folder")
            facts = meta.get("facts")
            if not facts:  # an index written before the facts were kept: read the folder
                from champion.training.registry import model_facts

                facts = model_facts(self.cache_dir / folder)
            served = self._prepare(
                self.cache_dir / folder,
                facts=facts,
                sha256=meta["sha256"],
                version=str(meta["version"]),
                source="cache",
                tags=meta.get("tags", {}),
                run_id=meta.get("run_id"),
                registered_ms=int(meta.get("registered_ms", 0)),
            )
        except Exception as exc:  # a bad cache must not stop the worker
            self.last_error = f"model cache unusable ({type(exc).__name__})"
            log.warning("model cache unusable", extra={"error": str(exc)})
            return False
        self._swap(served)
        return True

    def _swap(self, served: Served) -> None:
        old = self.current
        if old is not None and old.version == served.version:
            self.current = served
            return
        self.previous = old
        self.current = served  # the swap: requests hold their own reference until they finish
        self.swaps += 1
        self._on_swap(served)
        log.info(
            "model swapped",
            extra={
                "version": served.version,
                "source": served.source,
                "previous": old.version if old else None,
            },
        )

    def refresh(self) -> bool:
        """Check the alias now; load and swap if it moved. Returns True when a swap happened."""
        with self._lock:
            try:
                ref = self.registry.alias("champion")
            except RegistryError as exc:
                # Public text (probes, /model) names no URL or path; the log has the detail.
                self.degraded = "registry unreachable"
                self.last_error = self.degraded
                log.warning("registry unreachable", extra={"error": str(exc)})
                if self.current is None:
                    self.load_from_cache()
                raise
            self.degraded = None
            if ref is None:
                return False
            current = self.current
            if current is not None and current.version == ref.version:
                if current.source == "registry":
                    return False
                if current.sha256 == ref.sha256:
                    # The cached copy is the registered champion, digest for digest: confirmed
                    # without loading it again.
                    self.current = replace(
                        current,
                        source="registry",
                        tags=dict(ref.tags),
                        run_id=ref.run_id,
                        registered_ms=ref.created_ms,
                    )
                    self.last_error = None
                    return False
            if self.previous is not None and self.previous.version == ref.version:
                # Rolled back to the model still in memory: instant.
                prev = self.previous
                self.previous, self.current = self.current, prev
                self.swaps += 1
                self._on_swap(prev)
                self._write_index(prev)
                return True
            try:
                served = self._load_ref(ref)
            except Exception as exc:
                self.swap_failures += 1
                self.last_error = (
                    f"loading v{ref.version} failed ({type(exc).__name__}); see the service log"
                )
                self._on_swap_failure(type(exc).__name__)
                log.error(
                    "model load failed; keeping the current model",
                    extra={"version": ref.version, "error": str(exc)},
                )
                return False
            self._write_index(served)
            self._swap(served)
            self.last_error = None
            return True

    # -- following the alias --------------------------------------------------------------

    def start(self, *, poll_seconds: float, recorded: Recorded | None = None) -> None:
        """Serve the cached champion at once when it is the one the ledger `recorded`, and
        confirm it against the registry (or swap to a newer champion) at the poller's first,
        immediate check; else load from the registry before returning (the cache serves
        then only if the registry is down). Then poll in a daemon thread, backing off while
        the registry is unreachable."""
        first = 0.0
        if recorded is None or not self.load_from_cache(expected=recorded):
            first = poll_seconds
            try:
                self.refresh()
            except RegistryError:
                log.warning(
                    "registry unreachable at start", extra={"serving": self.status().version}
                )
        self._thread = threading.Thread(
            target=self._follow, args=(poll_seconds, first), name="champion-slot", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        """Check the registry now rather than at the next poll (a swap notice came)."""
        self._wake.set()

    def _follow(self, poll_seconds: float, first: float) -> None:
        delay = first
        checked = False
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh()
                delay = poll_seconds
            except RegistryError:
                delay = min(max(delay * 2, poll_seconds), 300.0)  # back off while it is down
            except Exception:  # the poller must outlive any surprise
                log.exception("model refresh failed")
                self._on_error()
                delay = poll_seconds
            if not checked:  # the registry client now exists, whatever the check found
                checked = True
                try:
                    self._on_first_check()
                except Exception:
                    log.exception("first-check callback failed")
                    self._on_error()
            time.sleep(0)

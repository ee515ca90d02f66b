"""Unit tests of the model slot on a fake registry: swaps, refused loads, the local cache.

The fake registry's `download` writes a real MLflow model folder (MLflow's own writer, no
tracking server): the slot verifies the digest, the signature and the input example of
exactly such a folder, and nothing less would test it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from champion.service.slot import CACHE_INDEX, FrameInputs, ModelSlot, Recorded
from champion.training.artifacts import MODEL_FILE
from champion.training.config import Contract
from champion.training.demo.simulate import agrawal_frame
from champion.training.errors import RegistryError
from champion.training.pipeline import Candidate, build_pipeline, prepare_features
from tests.fakes import FakeRegistry
from tests.polling import eventually
from tests.unit.conftest import make_contract, raw_contract


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return agrawal_frame(200, function=1, seed=3, label_noise=0.05)


@pytest.fixture
def contract(tmp_path: Path) -> Contract:
    return make_contract(tmp_path)


def _fitted(contract: Contract, frame: pd.DataFrame, *, C: float = 1.0) -> tuple[Any, Any]:
    X = prepare_features(frame, contract)
    candidate = Candidate("logistic", {"C": C})
    pipeline = build_pipeline(contract, candidate, seed=0).fit(X, frame["approved"].to_numpy())
    return pipeline, X.head(5)


class Slot:
    """A slot on a fake registry holding two good versions, v1 and v2, with v1 champion."""

    def __init__(self, contract: Contract, frame: pd.DataFrame, cache: Path) -> None:
        self.registry = FakeRegistry()
        for C in (1.0, 0.1):
            pipeline, example = _fitted(contract, frame, C=C)
            self.registry.add_version(pipeline, example=example, run_id=f"run-C{C}")
        self.registry.set_alias("champion", "1")
        self.swapped: list[str] = []
        self.failures: list[str] = []
        self.slot = self.new_slot(contract, cache)

    def new_slot(self, contract: Contract, cache: Path) -> ModelSlot:
        return ModelSlot(
            registry=self.registry,
            contract=contract,
            cache_dir=cache,
            on_swap=lambda served: self.swapped.append(served.version),
            on_swap_failure=self.failures.append,
        )

    def downloads(self) -> int:
        return self.registry.calls.count("download")


@pytest.fixture
def world(contract: Contract, frame: pd.DataFrame, tmp_path: Path) -> Slot:
    return Slot(contract, frame, tmp_path / "cache")


def _predict(slot: ModelSlot, frame: pd.DataFrame, contract: Contract) -> np.ndarray:
    assert slot.current is not None
    labels, proba = slot.current.predict(FrameInputs(prepare_features(frame.head(3), contract)))
    assert proba is not None and proba.shape == (3, 2)
    return labels


def test_the_first_refresh_loads_verifies_and_serves_the_champion(world, frame, contract):
    """It loads the champion from the registry, serves predictions and indexes its cache."""
    assert world.slot.refresh() is True
    status = world.slot.status()
    assert (status.ready, status.version, status.source, status.swaps) == (True, "1", "registry", 1)
    assert world.swapped == ["1"] and world.slot.current is not None
    assert world.slot.current.sha256 == world.registry.versions["1"].sha256
    assert set(_predict(world.slot, frame, contract)) <= {0, 1}
    index = json.loads((world.slot.cache_dir / CACHE_INDEX).read_text())
    assert index["version"] == "1" and index["sha256"] == world.registry.versions["1"].sha256
    assert world.slot.refresh() is False, "an unmoved alias must not reload"
    assert world.downloads() == 1


def test_a_moved_alias_swaps_in_the_new_version_and_keeps_the_old_one(world):
    """It swaps to the new champion and keeps the one before it for an instant rollback."""
    world.slot.refresh()
    world.registry.set_alias("champion", "2")
    assert world.slot.refresh() is True
    assert world.slot.current is not None and world.slot.current.version == "2"
    assert world.slot.previous is not None and world.slot.previous.version == "1"
    assert world.swapped == ["1", "2"] and world.downloads() == 2

    world.registry.set_alias("champion", "1")  # a rollback: v1 is still in memory
    assert world.slot.refresh() is True
    assert world.slot.current.version == "1" and world.downloads() == 2
    assert json.loads((world.slot.cache_dir / CACHE_INDEX).read_text())["version"] == "1"


def test_a_failed_load_keeps_the_current_model(world):
    """It keeps serving the current model when the new champion cannot be downloaded."""
    world.slot.refresh()
    world.registry.set_alias("champion", "2")
    world.registry.fail_on.add("download")
    assert world.slot.refresh() is False

    status = world.slot.status()
    assert status.version == "1" and status.swap_failures == 1
    assert status.last_error is not None and "v2" in status.last_error
    assert world.failures == ["RegistryError"] and world.swapped == ["1"]
    world.registry.fail_on.clear()
    assert world.slot.refresh() is True and world.slot.status().last_error is None


def test_a_model_whose_digest_does_not_match_is_refused(world):
    """It refuses a version whose downloaded bytes differ from the recorded digest."""
    world.slot.refresh()
    world.registry.set_alias("champion", "2")
    world.registry.tamper("2")
    assert world.slot.refresh() is False
    assert world.slot.status().version == "1" and world.failures == ["IntegrityError"]
    assert world.downloads() == 3  # v1, then v2 twice: a damaged copy is fetched once more


def test_a_damaged_cached_copy_is_downloaded_again(world):
    """It replaces a cached folder whose model file was damaged instead of failing."""
    assert world.slot.refresh() is True
    [folder] = [p for p in world.slot.cache_dir.iterdir() if p.is_dir()]
    (folder / MODEL_FILE).write_bytes(b"torn download")
    fresh = world.new_slot(world.slot.contract, world.slot.cache_dir)
    assert fresh.refresh() is True
    assert fresh.status().version == "1" and world.downloads() == 2


def test_a_model_that_does_not_fit_the_contract_is_refused(world, contract, frame, tmp_path):
    """It refuses a version trained on other features and keeps the current model."""
    world.slot.refresh()
    raw = raw_contract()
    del raw["features"]["loan"]
    narrow = make_contract(tmp_path / "narrow", raw)
    pipeline, example = _fitted(narrow, frame)
    ref = world.registry.add_version(pipeline, example=example)
    world.registry.set_alias("champion", ref.version)
    assert world.slot.refresh() is False

    status = world.slot.status()
    assert status.version == "1" and status.swap_failures == 1
    assert world.failures == ["ChampionError"]


def test_an_unreachable_registry_at_start_serves_the_cached_champion(world, contract):
    """It serves the last champion from the local cache when the registry is down."""
    world.slot.refresh()  # a first worker filled the cache
    world.registry.fail_on.add("alias")
    restarted = world.new_slot(contract, world.slot.cache_dir)
    with pytest.raises(RegistryError):
        restarted.refresh()

    status = restarted.status()
    assert (status.ready, status.version, status.source) == (True, "1", "cache")
    assert status.degraded == "registry unreachable"
    world.registry.fail_on.clear()
    downloads = world.downloads()
    assert restarted.refresh() is False, "the cached copy is the champion: no swap"
    assert restarted.status().source == "registry" and restarted.status().degraded is None
    assert world.downloads() == downloads, "confirmed by digest, not downloaded again"


def test_start_serves_the_cache_before_the_registry_client_is_made(world, contract):
    """It serves the cached champion as soon as `start` returns, building the registry
    client (MLflow, in the service) only afterwards, in the poller, which confirms it."""
    world.slot.refresh()  # an earlier start filled the cache
    made: list[str] = []
    allowed = threading.Event()

    def registry() -> FakeRegistry:
        made.append(threading.current_thread().name)
        assert allowed.wait(10)
        return world.registry

    restarted = ModelSlot(registry=registry, contract=contract, cache_dir=world.slot.cache_dir)
    restarted.start(poll_seconds=3600, recorded=_recorded(world, "1"))
    try:
        status = restarted.status()
        assert (status.ready, status.version, status.source) == (True, "1", "cache")
        allowed.set()
        assert eventually(lambda: restarted.status().source == "registry")
        assert made == ["champion-slot"], "built once, in the poller, never in start()"
    finally:
        restarted.stop()


def test_a_cache_the_ledger_cannot_vouch_for_is_not_served_first(world, contract):
    """It loads from the registry at start, never serving the cached copy ahead of it, when
    the ledger names no champion, or names v1 trained by another run (the same number from
    a re-created registry), or cannot say which run trained it."""
    world.slot.refresh()
    for recorded in (None, Recorded("1", "another-run"), Recorded("1", None)):
        restarted = world.new_slot(contract, world.slot.cache_dir)
        restarted.start(poll_seconds=3600, recorded=recorded)
        try:
            assert restarted.status().source == "registry", recorded
        finally:
            restarted.stop()


def test_a_cache_whose_model_file_was_changed_is_not_served(world, contract):
    """It refuses the cache when the cached file no longer matches the indexed digest."""
    world.slot.refresh()
    index = json.loads((world.slot.cache_dir / CACHE_INDEX).read_text())
    (world.slot.cache_dir / index["folder"] / MODEL_FILE).write_bytes(b"changed")
    restarted = world.new_slot(contract, world.slot.cache_dir)
    assert restarted.load_from_cache() is False
    assert restarted.status().ready is False
    assert "cache unusable" in (restarted.status().last_error or "")


def test_a_cache_index_pointing_outside_the_cache_is_refused(world, contract, tmp_path):
    """It serves nothing from a cache index naming a folder outside the cache."""
    world.slot.refresh()
    path = world.slot.cache_dir / CACHE_INDEX
    index = json.loads(path.read_text())
    path.write_text(json.dumps(index | {"folder": "../elsewhere"}))
    restarted = world.new_slot(contract, world.slot.cache_dir)
    assert restarted.load_from_cache() is False and restarted.current is None


def test_no_cache_and_no_champion_leave_the_slot_not_ready(world, contract, tmp_path):
    """It reports not ready, without error, when there is neither a champion nor a cache."""
    world.registry.alias_map.clear()
    slot = world.new_slot(contract, tmp_path / "empty-cache")
    assert slot.load_from_cache() is False
    assert slot.refresh() is False
    status = slot.status()
    assert (status.ready, status.last_error, status.degraded) == (False, None, None)


def test_loading_the_cache_imports_no_mlflow(world, tmp_path):
    """It loads the cached champion from the index's facts alone: in a fresh interpreter,
    MLflow is not imported by the time the model serves (it costs about a second)."""
    world.slot.refresh()
    script = f"""
import sys
from pathlib import Path
from champion.service.slot import ModelSlot
from tests.unit.conftest import make_contract

def no_registry():
    raise AssertionError("the registry client was asked for")

slot = ModelSlot(
    registry=no_registry, contract=make_contract(Path({str(tmp_path)!r})),
    cache_dir=Path({str(world.slot.cache_dir)!r}),
)
assert slot.load_from_cache(), slot.status().last_error
print(sorted(m for m in sys.modules if m.split(".")[0] == "mlflow"))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_a_cache_the_ledger_says_is_stale_is_not_served_first(world, contract):
    """It loads from the registry at start, never serving the cached v1 even briefly, when
    the ledger records that v2 became champion while this host was down; with the registry
    down too, the cached champion still serves (the fallback)."""
    world.slot.refresh()
    world.registry.set_alias("champion", "2")
    restarted = world.new_slot(contract, world.slot.cache_dir)
    restarted.start(poll_seconds=3600, recorded=_recorded(world, "2"))
    try:
        status = restarted.status()
        assert (status.version, status.source) == ("2", "registry")
        assert "1" not in world.swapped[1:], "v1 never served by the restarted slot"
    finally:
        restarted.stop()
    world.registry.fail_on.add("alias")
    down = world.new_slot(contract, world.slot.cache_dir)
    down.start(poll_seconds=3600, recorded=Recorded("3", "run-3"))
    try:
        assert down.status().ready and down.status().source == "cache"
    finally:
        down.stop()


def _recorded(world: Slot, version: str) -> Recorded:
    return Recorded(version, world.registry.version(version).run_id)


def test_a_cache_first_start_swaps_at_once_when_the_alias_moved_unrecorded(world, contract):
    """It swaps to the registry's champion at the poller's first, immediate check when the
    alias moved without the ledger knowing (by hand in the registry's UI, say)."""
    world.slot.refresh()
    world.registry.set_alias("champion", "2")
    restarted = world.new_slot(contract, world.slot.cache_dir)
    restarted.start(poll_seconds=3600, recorded=_recorded(world, "1"))
    try:
        assert eventually(lambda: restarted.status().version == "2")
        assert restarted.status().source == "registry"
        assert world.swapped[-2:] == ["1", "2"]  # the vouched-for cache served until then
    finally:
        restarted.stop()


def test_the_recorded_champion_names_the_run_that_registered_it():
    """It pairs the ledger's last champion with the run of the cycle that registered that
    version (a manual promotion back to it included), and says nothing it cannot know."""
    from champion.service.slot import recorded_champion
    from tests.fakes import FakeLedger

    ledger = FakeLedger()
    assert recorded_champion(ledger) is None
    ledger.append(
        {"event": "cycle", "challenger_version": "1", "run_id": "r1", "champion_after": "1"}
    )
    ledger.append(
        {"event": "cycle", "challenger_version": "2", "run_id": "r2", "champion_after": "2"}
    )
    assert recorded_champion(ledger) == Recorded("2", "r2")
    ledger.append({"event": "manual_promote", "champion_before": "2", "champion_after": "1"})
    assert recorded_champion(ledger) == Recorded("1", "r1")
    ledger.append({"event": "manual_promote", "champion_before": "1", "champion_after": "7"})
    assert recorded_champion(ledger) == Recorded("7", None)  # registered outside a cycle

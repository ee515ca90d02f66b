"""Unit tests of the retrain cycle on in-memory ports: verdicts, races, failures, reconciling."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from champion.training.artifacts import (
    TAG_CANDIDATE,
    TAG_KIND,
    TAG_LEASE_DOMAIN,
    TAG_VERDICT,
    ModelRef,
)
from champion.training.config import Contract
from champion.training.cycle import Context, CycleResult, reconcile, run_cycle
from champion.training.demo.simulate import agrawal_frame
from champion.training.lease import CYCLE, REGISTRY
from champion.training.pipeline import Candidate, build_pipeline, fit_rows, prepare_features
from champion.training.records import Event, LedgerEntry, Verdict
from tests.fakes import FakeBatches, FakeClock, FakeLeases, FakeLedger, FakeRegistry, FakeRun
from tests.unit.conftest import make_contract, small_raw_contract

ROWS = 200  # per batch
BOOSTING = Candidate("hist_gradient_boosting", {"max_iter": 15, "max_leaf_nodes": 8})
START = datetime(2026, 1, 1, tzinfo=UTC)


def _contract(
    tmp_path: Path, *, families: tuple[str, ...] = ("hist_gradient_boosting",), **gate: Any
) -> Contract:
    """The small contract cut to two trials of the given families (a cycle takes ~1 s)."""
    raw = small_raw_contract(families=list(families), max_trials=2)
    raw["gate"] |= gate
    return make_contract(tmp_path, raw)


def _batch(seed: int, *, day: int = 0) -> pd.DataFrame:
    start = START + timedelta(days=day)
    return agrawal_frame(ROWS, function=1, seed=seed, label_noise=0.05, start=start)


def _batches(*ids: str) -> FakeBatches:
    batches = FakeBatches()
    for i, batch_id in enumerate(ids):
        batches.add(_batch(i + 1, day=i), batch_id)
    return batches


class World:
    """One cycle's fakes, wired into a Context."""

    def __init__(
        self,
        contract: Contract,
        batches: FakeBatches,
        *,
        registry: FakeRegistry | None = None,
        **ctx: Any,
    ) -> None:
        self.registry = registry or FakeRegistry()
        self.ledger = FakeLedger()
        self.leases = FakeLeases("cycle-owner")
        self.batches = batches
        self.ctx = Context(
            contract,
            self.registry,
            self.ledger,
            self.leases,
            batches,
            lease_timeout=0.0,
            progress=False,
            **ctx,
        )

    def run(self, result: CycleResult) -> FakeRun:
        assert result.run_id is not None, "the cycle opened no run"
        return self.registry.runs[result.run_id]

    def version(self, result: CycleResult) -> ModelRef:
        assert result.version is not None, "the cycle registered no version"
        return self.registry.versions[result.version]

    def cycle_entries(self) -> list[dict[str, Any]]:
        return [r for r in self.ledger.records if r["event"] == Event.CYCLE.value]


def _champion(world: World, contract: Contract, *, trained_on: tuple[str, ...]) -> str:
    """Register and crown a champion fitted on the whole window; its run says `trained_on`."""
    frame = world.batches.window().frame
    X = prepare_features(frame, contract)
    pipeline = build_pipeline(contract, BOOSTING, seed=0).fit(X, frame["approved"].to_numpy())
    run_id = world.registry.start_run(name="old-cycle", tags={TAG_KIND: "cycle"})
    world.registry.log_json(run_id, {"batches": list(trained_on)}, "fingerprint.json")
    world.registry.end_run(run_id, "FINISHED")
    ref = world.registry.add_version(
        pipeline,
        example=X.head(5),
        tags={TAG_CANDIDATE: BOOSTING.to_json(), TAG_VERDICT: "PROMOTE"},
        run_id=run_id,
    )
    world.registry.set_alias("champion", ref.version)
    world.ledger.append(
        LedgerEntry(
            Event.MANUAL_PROMOTE,
            "seeded by the test",
            "test",
            moved=True,
            champion_before=None,
            champion_after=ref.version,
        )
    )
    return ref.version


# -- promotion and its record -----------------------------------------------------------------


def test_a_first_challenger_above_the_floor_is_promoted_and_recorded(tmp_path):
    """It promotes the first challenger reaching the floor, consumes its batches and logs all."""
    world = World(_contract(tmp_path), _batches("b1", "b2"))
    result = run_cycle(world.ctx, trigger="unit")

    assert result.verdict is Verdict.PROMOTE, result.reason
    assert result.champion_before is None and result.champion_after == result.version
    assert world.registry.alias_map == {"champion": result.version, "challenger": result.version}
    [entry] = world.cycle_entries()
    assert entry["verdict"] == "PROMOTE" and entry["trigger"] == "unit"
    assert (entry["champion_before"], entry["champion_after"]) == (None, result.version)
    assert entry["run_id"] == result.run_id and entry["challenger_version"] == result.version
    assert entry["data"]["new_batches"] == ["b1", "b2"] and entry["data"]["rows"] == 2 * ROWS
    assert world.batches.consumed == {"b1": result.run_id, "b2": result.run_id}
    run = world.run(result)
    assert run.status == "FINISHED" and run.tags[TAG_VERDICT] == "PROMOTE"
    assert run.json["fingerprint.json"]["batches"] == ["b1", "b2"]
    assert run.json["verdict.json"]["verdict"] == "PROMOTE"
    assert world.version(result).tags[TAG_VERDICT] == "PROMOTE"
    description = world.registry.descriptions[result.version]
    assert description.startswith(f"PROMOTE: {result.reason}\n")
    assert "Family: hist_gradient_boosting (hist_gradient_boosting(" in description
    assert re.search(r"CV roc_auc: 0\.\d{4} ± 0\.\d{4} over 3 folds \(time\)", description)
    assert world.leases.table == {}, "a lease outlived the cycle"
    assert world.leases.taken.count(REGISTRY) == 2  # reconcile, then the alias move


def test_a_first_challenger_below_the_floor_is_rejected_and_nothing_moves(tmp_path):
    """It rejects a first challenger under the floor: registered, consumed, never champion."""
    world = World(_contract(tmp_path, families=("logistic",), floor=0.99), _batches("b1", "b2"))
    result = run_cycle(world.ctx)

    assert result.verdict is Verdict.REJECT, result.reason
    assert "falls short of the floor" in result.reason
    assert "champion" not in world.registry.alias_map
    assert world.registry.alias_map["challenger"] == result.version
    assert world.version(result).tags[TAG_VERDICT] == "REJECT"
    assert set(world.batches.consumed) == {"b1", "b2"}
    [entry] = world.cycle_entries()
    assert entry["verdict"] == "REJECT" and entry["champion_after"] is None


def test_a_challenger_no_better_than_the_champion_leaves_it_in_place(tmp_path):
    """It holds or rejects a challenger the champion beats, trying the champion's candidate."""
    contract = _contract(tmp_path, min_delta=0.5)
    world = World(contract, _batches("b1", "b2"))
    # Its run names only b1, so b2 counts as fresh although the champion was fitted on it.
    champion = _champion(world, contract, trained_on=("b1",))
    result = run_cycle(world.ctx)

    assert result.verdict in (Verdict.HOLD, Verdict.REJECT), result.reason
    assert result.version != champion
    assert world.registry.alias_map["champion"] == champion
    assert "previous" not in world.registry.alias_map
    run = world.run(result)
    assert "gate_folds.json" in run.json and run.params["fresh_rows"] == ROWS
    trials = [r for r in world.registry.runs.values() if r.tags.get(TAG_KIND) == "trial"]
    assert trials[0].tags["champion.source"] == "champion"  # the baseline goes first
    [entry] = world.cycle_entries()
    assert (entry["champion_before"], entry["champion_after"]) == (champion, champion)
    assert set(world.batches.consumed) == {"b1", "b2"}


def test_a_champion_with_other_inputs_is_judged_on_the_floor(tmp_path):
    """It does not pair a challenger with a champion whose inputs the contract no longer has."""
    contract = _contract(tmp_path)
    world = World(contract, _batches("b1", "b2"))
    champion = _champion(world, contract, trained_on=("b1",))
    world.registry.models[champion].input_names = ("salary", "age")
    result = run_cycle(world.ctx)

    assert "takes other inputs" in result.reason and "floor" in result.reason
    assert "gate_folds.json" not in world.run(result).json
    assert result.verdict is Verdict.PROMOTE
    assert world.registry.alias_map["champion"] == result.version
    assert world.registry.alias_map["previous"] == champion


# -- nothing to do ----------------------------------------------------------------------------


def test_no_new_batches_is_skipped_without_a_run(tmp_path):
    """It skips a window whose batches were all trained on, opening no run."""
    batches = _batches("b1", "b2")
    batches.consumed = {"b1": "run-0", "b2": "run-0"}
    world = World(_contract(tmp_path), batches)
    result = run_cycle(world.ctx)

    assert result.verdict is Verdict.SKIPPED and "No new batches" in result.reason
    assert world.registry.runs == {} and world.batches.marks == []
    [entry] = world.cycle_entries()
    assert entry["verdict"] == "SKIPPED" and "champion_before" not in entry
    assert result.reason == "No new batches since the last cycle."


def test_no_new_batches_after_a_quarantine_says_so_with_the_first_reason(tmp_path):
    """It names what this cycle's intake quarantined or left to settle in the SKIPPED reason."""
    batches = FakeBatches(quarantined=["bad-1", "bad-2"], waiting=["late.csv"])
    batches.add(_batch(1), "b1")
    batches.consumed = {"b1": "run-0"}
    world = World(_contract(tmp_path), batches)
    result = run_cycle(world.ctx)

    assert result.verdict is Verdict.SKIPPED
    assert result.reason == (
        "No new batches since the last cycle: 2 quarantined (bad-1.csv: fake: quarantined); "
        "1 still being written, left for a later cycle; see `champion batches`."
    )
    [entry] = world.cycle_entries()
    assert entry["reason"] == result.reason


def test_an_empty_window_is_skipped_and_names_the_quarantined_batches(tmp_path):
    """It skips a cycle with no valid data and says how many batches intake quarantined."""
    world = World(_contract(tmp_path), FakeBatches(quarantined=["bad-1", "bad-2"]))
    result = run_cycle(world.ctx)

    assert result.verdict is Verdict.SKIPPED
    assert result.reason == (
        "No valid data in the landing zone: 2 quarantined (bad-1.csv: fake: quarantined); "
        "see `champion batches`."
    )
    assert world.batches.intakes == 1 and world.registry.runs == {}


def test_a_single_class_window_is_skipped_and_its_batches_kept_for_later(tmp_path):
    """It skips a window holding one class and leaves its batches unconsumed."""
    frame = _batch(1)
    batches = FakeBatches()
    batches.add(frame[frame["approved"] == 1], "ones")
    world = World(_contract(tmp_path), batches)
    result = run_cycle(world.ctx)

    assert result.verdict is Verdict.SKIPPED and "single class (1)" in result.reason
    assert world.batches.marks == [] and world.registry.runs == {}


def test_a_window_the_champion_was_trained_on_is_skipped_and_consumed(tmp_path):
    """It skips when the champion already saw every row, marking the batches as its own."""
    contract = _contract(tmp_path)
    world = World(contract, _batches("b1", "b2"))
    champion = _champion(world, contract, trained_on=("b1", "b2"))
    runs_before = set(world.registry.runs)
    result = run_cycle(world.ctx)

    assert result.verdict is Verdict.SKIPPED and f"v{champion} was already" in result.reason
    assert world.batches.consumed == {"b1": "already-in-champion", "b2": "already-in-champion"}
    assert set(world.registry.runs) == runs_before


def test_a_held_cycle_lease_skips_as_busy_and_touches_nothing(tmp_path):
    """It does nothing but record a busy SKIPPED while another owner runs a cycle."""
    world = World(_contract(tmp_path), _batches("b1"))
    other = world.leases.peer("other-host")
    other.acquire(CYCLE)
    result = run_cycle(world.ctx)

    assert result.verdict is Verdict.SKIPPED and result.busy and result.report().busy
    assert world.batches.intakes == 0 and world.registry.calls == []
    assert world.leases.holder(CYCLE) == "other-host"
    [entry] = world.cycle_entries()
    assert entry["verdict"] == "SKIPPED" and "Another retrain cycle" in entry["reason"]


# -- races and failures -----------------------------------------------------------------------


def test_a_champion_moved_during_the_cycle_makes_it_stale(tmp_path):
    """It moves nothing when the champion changed between its read and the compare-and-set."""
    world = World(_contract(tmp_path), _batches("b1", "b2"))
    outsider = world.registry.add_version("someone else's model")

    def checkpoint(stage: str) -> None:
        if stage == "promote":  # after the gate, before the move
            world.registry.set_alias("champion", outsider.version)

    world.ctx.checkpoint = checkpoint
    result = run_cycle(world.ctx)

    assert result.verdict is Verdict.STALE, result.reason
    assert f"from none to {outsider.version}" in result.reason
    assert world.registry.alias_map["champion"] == outsider.version
    assert "previous" not in world.registry.alias_map
    assert world.version(result).tags[TAG_VERDICT] == "STALE"
    assert world.registry.descriptions[result.version].startswith("STALE: The champion changed")
    assert world.batches.marks == [], "a stale cycle's batches must be trained on again"
    assert world.run(result).status == "FINISHED"
    [entry] = world.cycle_entries()
    # It records the champion now in place (the other writer's), not the one it judged
    # against: the ledger's last champion stays the registry's.
    assert entry["verdict"] == "STALE" and entry["champion_before"] is None
    assert entry["champion_after"] == outsider.version
    assert world.ledger.last_champion() == outsider.version


@pytest.mark.parametrize("method", ["register", "log_files", "describe_version"])
def test_a_registry_failure_mid_cycle_fails_it_and_ends_the_run_failed(tmp_path, method):
    """It turns a registry error into FAILED: the run ended FAILED, no alias, batches kept."""
    registry = FakeRegistry(fail_on={method})
    world = World(_contract(tmp_path), _batches("b1", "b2"), registry=registry)
    result = run_cycle(world.ctx)

    assert result.verdict is Verdict.FAILED and result.exit_code == 1
    assert f"fake registry: {method} failed" in result.reason
    run = world.run(result)
    assert run.status == "FAILED" and run.tags[TAG_VERDICT] == "FAILED"
    assert method in run.tags["champion.error"]
    assert "champion" not in world.registry.alias_map
    assert world.batches.marks == []
    [entry] = world.cycle_entries()
    assert entry["verdict"] == "FAILED" and entry["run_id"] == result.run_id
    assert "champion_before" not in entry  # a failed cycle records no alias move
    assert world.leases.table == {}


def test_a_run_that_cannot_be_ended_is_killed_by_the_next_reconcile(tmp_path):
    """It still records FAILED when ending runs fails, and the next cycle cleans the run up."""
    registry = FakeRegistry(fail_on={"end_run"})
    world = World(_contract(tmp_path), _batches("b1", "b2"), registry=registry)
    result = run_cycle(world.ctx)
    assert result.verdict is Verdict.FAILED
    assert world.run(result).status == "RUNNING"

    world.registry.fail_on.clear()
    world.batches.consumed = {"b1": "x", "b2": "x"}  # the next cycle has nothing new
    again = run_cycle(world.ctx)
    assert again.verdict is Verdict.SKIPPED
    assert world.run(result).status == "KILLED"
    interrupted = world.ledger.last(Event.CYCLE_INTERRUPTED.value)
    assert interrupted is not None and interrupted["run_id"] == result.run_id


def test_a_cycle_is_timed_on_the_contexts_clock(tmp_path):
    """It reports the seconds its context's clock says passed, not the machine's."""
    clock = FakeClock()
    world = World(_contract(tmp_path), FakeBatches(), clock=clock)
    world.ctx.checkpoint = lambda stage: clock.advance(5.0) if stage == "intake" else None
    result = run_cycle(world.ctx)

    assert result.verdict is Verdict.SKIPPED
    assert result.seconds == pytest.approx(5.0, abs=0.5)


# -- reconcile --------------------------------------------------------------------------------


def test_reconcile_records_a_cycle_run_left_running_as_interrupted(tmp_path):
    """It ends a cycle run left RUNNING as KILLED and records it as an interrupted cycle."""
    world = World(_contract(tmp_path), FakeBatches())
    run_id = world.registry.start_run(name="crashed", tags={TAG_KIND: "cycle"})
    trial = world.registry.start_run(name="trial-000", tags={TAG_KIND: "trial"}, parent=run_id)
    written = reconcile(world.ctx)

    assert [w["event"] for w in written] == ["cycle_interrupted"]
    assert written[0]["run_id"] == run_id and written[0]["verdict"] == "FAILED"
    assert world.registry.runs[run_id].status == "KILLED"
    assert world.registry.runs[trial].status == "RUNNING"  # only cycle runs are reconciled
    assert world.ledger.events() == ["cycle_interrupted"]


def test_reconcile_leaves_a_running_cycle_of_another_lease_domain_alone(tmp_path):
    """It kills only runs provably dead: a RUNNING cycle that took its cycle lease elsewhere
    (another deployment's lock folder or database) may be alive, and is not touched."""
    world = World(_contract(tmp_path), FakeBatches())
    ours = world.registry.start_run(
        name="ours", tags={TAG_KIND: "cycle", TAG_LEASE_DOMAIN: world.leases.domain}
    )
    theirs = world.registry.start_run(
        name="theirs", tags={TAG_KIND: "cycle", TAG_LEASE_DOMAIN: "file://other-host/var/locks"}
    )
    written = reconcile(world.ctx)

    assert [w["run_id"] for w in written] == [ours]
    assert world.registry.runs[ours].status == "KILLED"
    assert world.registry.runs[theirs].status == "RUNNING"


def test_a_cycle_run_records_its_lease_domain(tmp_path):
    """It tags each cycle run with the domain of the cycle lease it holds."""
    world = World(_contract(tmp_path), _batches("b1", "b2"))
    result = run_cycle(world.ctx)
    assert world.run(result).tags[TAG_LEASE_DOMAIN] == world.leases.domain


def test_reconcile_records_an_alias_the_ledger_does_not_know(tmp_path):
    """It writes a `reconciled` entry when the registry's champion is not the ledger's."""
    world = World(_contract(tmp_path), FakeBatches())
    world.ledger.append({"event": "cycle", "verdict": "PROMOTE", "champion_after": "1"})
    world.registry.add_version("v1")
    v2 = world.registry.add_version("v2", tags={TAG_VERDICT: "PROMOTE"})
    world.registry.set_alias("champion", v2.version)
    [entry] = reconcile(world.ctx)

    assert entry["event"] == "reconciled" and entry["verdict"] == "PROMOTE"
    assert (entry["champion_before"], entry["champion_after"]) == ("1", v2.version)
    assert world.ledger.last_champion() == v2.version
    assert reconcile(world.ctx) == [], "a second pass must find nothing to record"


def test_reconcile_writes_nothing_when_registry_and_ledger_agree(tmp_path):
    """It leaves the ledger alone when the champion alias matches its last record."""
    world = World(_contract(tmp_path), FakeBatches())
    v1 = world.registry.add_version("v1")
    world.registry.set_alias("champion", v1.version)
    world.ledger.append({"event": "manual_promote", "champion_after": v1.version})
    assert reconcile(world.ctx) == []
    assert len(world.ledger.records) == 1


def test_a_held_registry_lease_fails_the_cycle_before_intake(tmp_path):
    """It fails a cycle whose reconcile cannot take the registry lease, moving nothing."""
    world = World(_contract(tmp_path), _batches("b1", "b2"))
    world.leases.peer("admin").acquire(REGISTRY)
    result = run_cycle(world.ctx)

    assert result.verdict is Verdict.FAILED and "registry" in result.reason
    assert world.batches.intakes == 0 and world.registry.runs == {}
    assert world.leases.holder(CYCLE) is None


def test_a_threshold_metric_registers_the_tuned_threshold_with_the_version(tmp_path):
    """With f1 primary, the cycle tunes the threshold out of fold and registers it with the
    candidate (what serving applies); the run records it and the f1 it gave."""
    raw = small_raw_contract(families=["logistic"], max_trials=2)
    raw["metrics"] |= {"primary": "f1", "guardrails": {}}
    raw["gate"]["floor"] = 0.0
    world = World(make_contract(tmp_path, raw), _batches("b1", "b2"))
    result = run_cycle(world.ctx)

    registered = Candidate.from_json(world.version(result).tags[TAG_CANDIDATE])
    assert registered.threshold is not None and 0.0 < registered.threshold < 1.0
    run = world.run(result)
    assert float(run.params["decision_threshold"]) == registered.threshold
    assert run.params["threshold_on"] == "f1"
    assert run.metrics["threshold_f1"] >= run.metrics["threshold_f1_at_0.5"]
    assert f"threshold={registered.threshold:.3g}" in world.registry.descriptions[result.version]


def test_a_threshold_free_metric_registers_no_threshold(tmp_path):
    world = World(_contract(tmp_path), _batches("b1", "b2"))
    result = run_cycle(world.ctx)
    assert Candidate.from_json(world.version(result).tags[TAG_CANDIDATE]).threshold is None
    assert "decision_threshold" not in world.run(result).params


def test_a_weight_column_weighs_the_registered_fit(tmp_path):
    """With `weight` declared, the registered model is the weighted fit of the window."""
    raw = small_raw_contract(families=["logistic"], max_trials=1)
    raw["weight"] = "w"
    contract = make_contract(tmp_path, raw)
    batches = FakeBatches()
    for i in range(2):
        frame = _batch(i + 1, day=i)
        frame["w"] = np.where(frame["salary"] > 75_000, 3.0, 0.5)
        batches.add(frame, f"b{i + 1}")
    world = World(contract, batches)
    result = run_cycle(world.ctx)

    assert result.version is not None, result.reason
    registered = world.registry.models[result.version].pipeline
    candidate = Candidate.from_json(world.version(result).tags[TAG_CANDIDATE])
    window = batches.window().frame
    X, y = prepare_features(window, contract), window["approved"].to_numpy()
    weighted = fit_rows(
        build_pipeline(contract, candidate, seed=contract.search.seed),
        X,
        y,
        weights=window["w"].to_numpy(),
    )
    plain = build_pipeline(contract, candidate, seed=contract.search.seed).fit(X, y)
    coef = registered.named_steps["model"].coef_
    np.testing.assert_allclose(coef, weighted.named_steps["model"].coef_)
    assert not np.allclose(coef, plain.named_steps["model"].coef_)

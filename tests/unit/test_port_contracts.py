"""Behavioural contracts of the ports: each test runs on the local adapter and on the fake.

A second backend (PostgreSQL) for a port passes when it passes these tests: add it to the
port's fixture. Where an implementation is known not to keep a contract the test says so.
"""

from __future__ import annotations

import inspect
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from champion.monitoring.capture import Captured, Fresh, PredictionLog, Written
from champion.monitoring.state import DriftFiles
from champion.training import ports
from champion.training.clock import SystemClock
from champion.training.errors import LeaseBusyError
from champion.training.lease import FileLeases
from champion.training.ledger import Ledger
from champion.training.records import Event, LedgerEntry, Verdict
from tests.fakes import FakeClock, FakeDriftStore, FakeLeases, FakeLedger, FakePredictions
from tests.unit.test_ports import _members

KINDS = ["adapter", "fake"]
ROTATE_BYTES = 2_000  # the file ledger archives past this: a few dozen short entries


def _known_gap(request: pytest.FixtureRequest, kind: str, reason: str) -> None:
    """Expect this test to fail on `kind` (a documented simplification), and to pass elsewhere."""
    if kind in request.node.callspec.params.values():
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


# -- LedgerStore ------------------------------------------------------------------------------


@pytest.fixture(params=KINDS)
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> ports.LedgerStore:
    clock = FakeClock()
    if request.param == "adapter":
        return Ledger(tmp_path / "home" / "ledger.jsonl", max_bytes=ROTATE_BYTES, clock=clock)
    return FakeLedger(clock)


def _clock(store: Any) -> FakeClock:
    clock = store.clock
    assert isinstance(clock, FakeClock)
    return clock


def _fill(store: ports.LedgerStore, n: int) -> list[dict[str, Any]]:
    """Append `n` cycle entries long enough to make the file ledger archive several times."""
    return [
        store.append({"event": "cycle", "verdict": "HOLD", "reason": "x" * 60, "n": i})
        for i in range(n)
    ]


def test_appends_are_numbered_from_one_and_stamped_with_the_clock(ledger):
    """It returns each appended entry with `seq` 1, 2, 3 and `at` the clock's time then."""
    clock = _clock(ledger)
    stored, times = [], []
    for verdict in ("PROMOTE", "HOLD", "REJECT"):
        times.append(clock.now().isoformat())
        stored.append(ledger.append({"event": "cycle", "verdict": verdict}))
        clock.advance(60)
    assert [s["seq"] for s in stored] == [1, 2, 3]
    assert [s["at"] for s in stored] == times
    assert [s["verdict"] for s in stored] == ["PROMOTE", "HOLD", "REJECT"]


def test_a_seq_given_in_the_entry_is_replaced_by_the_stores_own(ledger):
    """It numbers an entry itself even when the entry brings a `seq` of its own."""
    assert ledger.append({"event": "cycle", "seq": 99})["seq"] == 1
    assert ledger.append({"event": "cycle", "seq": 1})["seq"] == 2


def test_entries_are_every_append_oldest_first(ledger):
    """It reads back every appended entry, as append returned it, oldest first."""
    assert ledger.entries() == []
    stored = [ledger.append({"event": "cycle", "n": i, "numbers": {"d": i / 10}}) for i in range(4)]
    assert ledger.entries() == stored


def test_tail_is_the_entries_newest_first(ledger):
    """It yields the same entries as `entries()`, newest first."""
    assert list(ledger.tail()) == []
    _fill(ledger, 3)
    assert list(ledger.tail()) == ledger.entries()[::-1]


def test_last_is_the_newest_entry_of_one_event(ledger):
    """It returns the newest entry of the event asked for, and None for an event never seen."""
    ledger.append({"event": "cycle", "n": 1})
    rollback = ledger.append({"event": "rollback", "champion_after": "1"})
    second = ledger.append({"event": "cycle", "n": 2})
    ledger.append({"event": "drift_trigger"})
    assert ledger.last("cycle") == second
    assert ledger.last("rollback") == rollback
    assert ledger.last("manual_promote") is None


def test_last_champion_follows_champion_after(ledger):
    """It returns the champion_after of the newest entry recording one (None before any)."""
    assert ledger.last_champion() is None
    ledger.append({"event": "cycle", "verdict": "REJECT"})
    assert ledger.last_champion() is None
    ledger.append({"event": "cycle", "verdict": "PROMOTE", "champion_after": "1"})
    ledger.append({"event": "cycle", "verdict": "PROMOTE", "champion_after": "2"})
    ledger.append({"event": "cycle", "verdict": "HOLD"})
    assert ledger.last_champion() == "2"
    ledger.append({"event": "rollback", "champion_before": "2", "champion_after": "1"})
    assert ledger.last_champion() == "1"


def test_a_ledger_entry_round_trips_in_its_stored_form(ledger):
    """It stores a LedgerEntry as its `to_record()` plus `at` and `seq`, and reads it back."""
    entry = LedgerEntry(
        Event.CYCLE,
        "challenger better",
        "scheduler",
        verdict=Verdict.PROMOTE,
        moved=True,
        champion_before="1",
        champion_after="2",
        trigger="schedule",
        run_id="run-7",
        challenger_version="2",
        numbers={"mean_delta": 0.012, "folds": 3},
        seconds=12.5,
        trials=4,
        features=("salary", "elevel"),
    )
    at = _clock(ledger).now().isoformat()
    expected = {**entry.to_record(), "at": at, "seq": 1}
    assert ledger.append(entry) == expected
    assert ledger.entries() == [expected]
    assert LedgerEntry.from_record(ledger.entries()[0]) == replace(entry, at=at, seq=1)
    assert ledger.last_champion() == "2"


def test_append_returns_the_entry_exactly_as_it_is_read_back(ledger):
    """It returns from `append` what `entries()` later reads (the port: "as stored")."""
    stored = ledger.append({"event": "manual_promote", "features": ("salary", "elevel")})
    assert ledger.entries() == [stored]


def test_a_value_json_cannot_encode_is_stored_as_text(request, ledger, tmp_path):
    """It stores a value JSON cannot encode (a path) as its text instead of failing."""
    ledger.append({"event": "manual_promote", "model": tmp_path / "model.skops"})
    assert ledger.entries()[0]["model"] == str(tmp_path / "model.skops")


def test_entries_numbering_and_champion_survive_archiving(ledger):
    """It keeps every entry, in order and numbered without a gap, past archiving."""
    ledger.append({"event": "cycle", "verdict": "PROMOTE", "champion_after": "3"})
    stored = [ledger.entries()[0], *_fill(ledger, 60)]
    if isinstance(ledger, Ledger):
        assert len(ledger.archives()) >= 2, "the file ledger never archived"
    assert ledger.entries() == stored
    assert [e["seq"] for e in ledger.entries()] == list(range(1, 62))
    assert ledger.append({"event": "cycle"})["seq"] == 62
    assert ledger.last_champion() == "3"
    assert ledger.last("cycle") == ledger.entries()[-1]


def test_last_finds_an_event_from_before_archiving(ledger):
    """It finds the newest entry of any event, however many entries came after it."""
    rollback = ledger.append({"event": "rollback", "champion_after": "1"})
    _fill(ledger, 60)
    if isinstance(ledger, Ledger):
        assert ledger.archives(), "the file ledger never archived"
    assert ledger.last("rollback") == rollback


def test_tail_stays_the_entries_newest_first_after_archiving(ledger):
    """It yields every entry newest first, and no bookkeeping entry, however long the ledger."""
    _fill(ledger, 60)
    if isinstance(ledger, Ledger):
        assert ledger.archives(), "the file ledger never archived"
    assert list(ledger.tail()) == ledger.entries()[::-1]


# -- Leases -----------------------------------------------------------------------------------


@pytest.fixture(params=KINDS)
def leases_for(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], ports.Leases]:
    """Leases for one owner over shared state: `leases_for("b")` is another process."""
    if request.param == "adapter":
        return lambda owner: FileLeases(tmp_path / "locks", owner=owner)
    table: dict[str, str] = {}
    return lambda owner: FakeLeases(owner, table=table)


def test_acquire_gives_a_lease_named_for_its_owner(leases_for):
    """It returns a lease with the name asked for and the owner of the leases, held by them."""
    mine = leases_for("a")
    assert mine.owner == "a"
    lease = mine.acquire("cycle")
    assert (lease.name, lease.owner) == ("cycle", "a")
    assert mine.holder("cycle") == "a"
    lease.release()
    assert mine.holder("cycle") is None


def test_a_second_owner_is_refused_until_the_lease_is_released(leases_for):
    """It refuses a held lease to another owner with LeaseBusyError, and grants it once freed."""
    mine, theirs = leases_for("a"), leases_for("b")
    lease = mine.acquire("cycle")
    with pytest.raises(LeaseBusyError):
        theirs.acquire("cycle")
    lease.release()
    again = theirs.acquire("cycle")
    assert theirs.holder("cycle") == "b" and mine.holder("cycle") == "b"
    again.release()


def test_the_holder_cannot_take_its_own_lease_twice(leases_for):
    """It refuses a second acquire by the owner already holding the lease: leases never nest."""
    mine = leases_for("a")
    lease = mine.acquire("cycle")
    with pytest.raises(LeaseBusyError):
        mine.acquire("cycle")
    assert mine.holder("cycle") == "a"
    lease.release()


def test_holder_names_the_owner_while_held_and_none_when_free(leases_for):
    """It tells every owner who holds a lease, and None before and after it is held."""
    mine, theirs = leases_for("a"), leases_for("b")
    assert mine.holder("registry") is None and theirs.holder("registry") is None
    lease = theirs.acquire("registry")
    assert mine.holder("registry") == "b" and theirs.holder("registry") == "b"
    lease.release()
    assert mine.holder("registry") is None and theirs.holder("registry") is None


def test_leases_of_other_names_are_independent(leases_for):
    """It lets two owners hold two differently named leases at once."""
    mine, theirs = leases_for("a"), leases_for("b")
    first, second = mine.acquire("cycle"), theirs.acquire("registry")
    assert (mine.holder("cycle"), mine.holder("registry")) == ("a", "b")
    first.release()
    second.release()


def test_hold_releases_the_lease_on_exit(leases_for):
    """It holds the lease inside the block and frees it on leaving."""
    mine, theirs = leases_for("a"), leases_for("b")
    with mine.hold("cycle") as lease:
        assert (lease.name, lease.owner) == ("cycle", "a")
        assert theirs.holder("cycle") == "a"
        with pytest.raises(LeaseBusyError):
            theirs.acquire("cycle")
    assert theirs.holder("cycle") is None
    theirs.acquire("cycle").release()


def test_hold_releases_the_lease_when_the_block_raises(leases_for):
    """It frees the lease when the block raises, and lets the exception through."""
    mine, theirs = leases_for("a"), leases_for("b")
    with pytest.raises(RuntimeError, match="boom"), mine.hold("cycle"):
        raise RuntimeError("boom")
    assert theirs.holder("cycle") is None
    theirs.acquire("cycle").release()


def test_hold_of_a_busy_lease_raises_before_the_block_runs(leases_for):
    """It raises LeaseBusyError from `hold` on a held lease without running the block."""
    mine, theirs = leases_for("a"), leases_for("b")
    ran = []
    with mine.hold("cycle"):
        with pytest.raises(LeaseBusyError), theirs.hold("cycle"):
            ran.append(True)
        assert mine.holder("cycle") == "a"
    assert ran == []


def test_a_lease_is_alive_while_held_and_not_after_release(leases_for):
    """It says a held lease is alive, and a released one is not (even once retaken)."""
    leases = leases_for("a")
    held = leases.acquire("cycle")
    assert held.alive()
    held.release()
    assert not held.alive()
    again = leases_for("b").acquire("cycle")
    assert again.alive() and not held.alive()
    again.release()


def test_releasing_twice_never_frees_a_later_holder(leases_for):
    """It ignores a second release of an old lease: the owner who took it since keeps it."""
    mine, theirs = leases_for("a"), leases_for("b")
    old = mine.acquire("cycle")
    old.release()
    new = theirs.acquire("cycle")
    old.release()
    assert mine.holder("cycle") == "b"
    with pytest.raises(LeaseBusyError):
        mine.acquire("cycle")
    new.release()


def test_a_timeout_on_a_held_lease_ends_in_lease_busy_error(leases_for):
    """It gives up with LeaseBusyError when the lease stays held for the whole timeout."""
    mine, theirs = leases_for("a"), leases_for("b")
    with mine.hold("cycle"), pytest.raises(LeaseBusyError):
        theirs.acquire("cycle", timeout=0.05)


def test_acquire_waits_for_a_release_within_its_timeout(request, leases_for):
    """It grants the lease when its holder releases it while the acquire is still waiting."""
    _known_gap(request, "fake", "FakeLeases never waits (documented: refuses at once)")
    mine, theirs = leases_for("a"), leases_for("b")
    lease = mine.acquire("cycle")
    releaser = threading.Timer(0.1, lease.release)
    releaser.start()
    try:
        got = theirs.acquire("cycle", timeout=10)
    finally:
        releaser.join()
    assert got.owner == "b" and mine.holder("cycle") == "b"
    got.release()


# -- DriftStore -------------------------------------------------------------------------------


@pytest.fixture(params=KINDS)
def drift_store(request: pytest.FixtureRequest, tmp_path: Path) -> ports.DriftStore:
    if request.param == "adapter":
        return DriftFiles(tmp_path / "drift")
    return FakeDriftStore()


_STATE = {"last_tested_id": 41, "streak": 2, "last_trigger": 1_767_225_600.5, "version": "3"}


def test_a_new_drift_store_has_no_state_summary_or_history(drift_store):
    """It answers None, None and [] before the first tick wrote anything."""
    assert drift_store.read_state() is None
    assert drift_store.latest() is None
    assert drift_store.history() == []


def test_the_state_and_the_summary_read_back_as_last_written(drift_store):
    """It returns the last state and summary written, replacing the earlier ones whole."""
    drift_store.write_state({**_STATE, "streak": 1})
    drift_store.write_state(_STATE)
    drift_store.write_latest({"at": "t1", "drift": {"share": 0.5}, "streak": 2})
    drift_store.write_latest({"at": "t2", "streak": 0})
    assert drift_store.read_state() == _STATE
    assert drift_store.latest() == {"at": "t2", "streak": 0}


def test_history_keeps_the_newest_lines_in_order(drift_store):
    """It keeps at least `keep` and at most `keep` + 10 % lines: the newest, oldest first."""
    for i in range(45):
        drift_store.append_history({"n": i}, keep=20)
        assert len(drift_store.history()) <= 22
    kept = [line["n"] for line in drift_store.history()]
    assert len(kept) >= 20
    assert kept == list(range(45 - len(kept), 45))


# -- PredictionStore --------------------------------------------------------------------------


@pytest.fixture(params=KINDS)
def store_for(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., ports.PredictionStore]]:
    """A fresh prediction store (`max_rows` optional) per call; closed at the end."""
    made: list[Any] = []

    def make(*, max_rows: int = 1_000) -> ports.PredictionStore:
        if request.param == "adapter":
            made.append(PredictionLog(tmp_path / f"p{len(made)}.db", max_rows=max_rows))
        else:
            made.append(FakePredictions(max_rows=max_rows))
        return made[-1]

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(store_for: Callable[..., ports.PredictionStore]) -> ports.PredictionStore:
    return store_for()


def _item(request_id: str, row: int = 0, *, version: str = "1", salary: float = 0.0) -> Captured:
    return Captured(
        request_id=request_id,
        row=row,
        at=1_767_225_600.0 + row,
        model_version=version,
        features={"salary": salary, "elevel": "e1"},
        prediction=1,
        score=0.75,
    )


def _items(prefix: str, n: int, *, version: str = "1") -> list[Captured]:
    return [_item(prefix, i, version=version, salary=float(i)) for i in range(n)]


def _keys(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(r["request_id"], r["row"]) for r in rows]


def test_write_counts_inserted_duplicate_and_unserialisable_rows(store):
    """It inserts new rows, skips a taken (request_id, row) and an unstorable row, counting each."""
    lone_surrogate = _item("\ud800")
    written = store.write([*_items("a", 3), _item("a", 1, salary=99.0), lone_surrogate])
    assert written == Written(inserted=3, duplicates=1, unserialisable=1)
    assert store.write([_item("a", 0, salary=42.0), _item("b")]) == Written(1, 1, 0)
    rows = store.recent(limit=10)
    assert _keys(rows) == [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
    assert [r["features"]["salary"] for r in rows] == [0.0, 1.0, 2.0, 0.0]  # the first kept
    assert store.count() == 4


def test_recent_is_the_newest_rows_oldest_first_by_version(store):
    """It returns the newest `limit` rows (of one version when asked), oldest first."""
    assert store.recent(limit=5) == []
    store.write(_items("a", 3))
    store.write(_items("b", 2, version="2"))
    store.write(_items("c", 2))
    assert _keys(store.recent(limit=3)) == [("b", 1), ("c", 0), ("c", 1)]
    assert _keys(store.recent(limit=4, version="1")) == [("a", 1), ("a", 2), ("c", 0), ("c", 1)]
    assert _keys(store.recent(limit=10, version="2")) == [("b", 0), ("b", 1)]
    assert store.recent(limit=10, version="3") == []
    ids = [r["id"] for r in store.recent(limit=10)]
    assert ids == sorted(ids) and len(set(ids)) == 7


def test_a_row_reads_back_as_it_was_captured(store):
    """It returns a row's id, key, time, version, features, prediction and score as written."""
    store.write([_item("a", 3, version="7", salary=12.5)])
    (row,) = store.recent(limit=1)
    assert isinstance(row["id"], int)
    assert {k: v for k, v in row.items() if k != "id"} == {
        "request_id": "a",
        "row": 3,
        "at": 1_767_225_603.0,
        "model_version": "7",
        "features": {"salary": 12.5, "elevel": "e1"},
        "prediction": 1,
        "score": 0.75,
    }


def test_since_is_the_newest_rows_of_a_version_after_an_id(store):
    """It returns the newest `limit` rows of a version after an id, the newest id and the count."""
    store.write(_items("a", 5))
    store.write([_item("other", version="2")])
    store.write(_items("b", 5))
    everything = store.since(0, limit=100, version="1")
    assert isinstance(everything, Fresh)
    assert everything.fresh == 10 and len(everything.rows) == 10
    assert all(r["model_version"] == "1" for r in everything.rows)
    after = everything.rows[4]["id"]  # the last row of "a"
    fresh = store.since(after, limit=3, version="1")
    assert fresh.fresh == 5
    assert _keys(fresh.rows) == [("b", 2), ("b", 3), ("b", 4)]
    assert fresh.max_id == everything.rows[-1]["id"] == everything.max_id


def test_since_with_nothing_new_returns_the_id_asked_from(store):
    """It returns no rows, a fresh count of 0 and the id asked from when nothing came after."""
    store.write(_items("a", 2))
    newest = store.recent(limit=1)[0]["id"]
    assert store.since(newest, limit=5, version="1") == Fresh([], newest, 0)
    assert store.since(0, limit=5, version="9") == Fresh([], 0, 0)


def test_label_attaches_a_label_once_and_refuses_a_second(store):
    """It labels a row once; a second label of it is refused as already labelled, unwritten."""
    store.write(_items("a", 2))
    assert store.label([("a", 0, 1)]) == ([], [])
    assert store.label([("a", 0, 0)]) == ([], ["a#0"])
    assert [(r["features"]["salary"], r["label"]) for r in store.labelled(limit=10)] == [(0.0, 1)]


def test_label_refuses_an_unknown_row_and_writes_nothing_of_the_call(store):
    """It refuses a call naming an unknown row as a whole: its known rows stay unlabelled."""
    store.write(_items("a", 2))
    unknown, done = store.label([("a", 0, 1), ("nope", 0, 1), ("a", 5, 0)])
    assert (unknown, done) == (["nope#0", "a#5"], [])
    assert store.labelled(limit=10) == []
    assert store.label([("a", 0, 1)]) == ([], [])  # nothing was written: it can be labelled


def test_label_refuses_one_row_named_twice_in_a_call(store):
    """It refuses the second label of a row named twice in one call, writing neither."""
    store.write(_items("a", 2))
    assert store.label([("a", 1, 1), ("a", 1, 0)]) == ([], ["a#1"])
    assert store.labelled(limit=10) == []


def test_a_null_label_is_a_label(store):
    """It stores a None label as a label: the row counts as labelled and is never relabelled."""
    store.write(_items("a", 1))
    assert store.label([("a", 0, None)]) == ([], [])
    assert [r["label"] for r in store.labelled(limit=10)] == [None]
    assert store.label([("a", 0, 1)]) == ([], ["a#0"])
    assert store.claim_export("b", min_rows=1) == 1


def test_labelled_returns_labelled_rows_newest_label_first(store):
    """It returns only labelled rows, with features, prediction, score and label, newest first."""
    store.write(_items("a", 4))
    assert store.labelled(limit=10) == []
    store.label([("a", 2, "two")])
    time.sleep(0.002)  # the file log orders labels by their wall time
    store.label([("a", 0, {"zero": [0]})])
    assert store.labelled(limit=10) == [
        {"features": {"salary": 0.0, "elevel": "e1"}, "prediction": 1, "score": 0.75,
         "label": {"zero": [0]}},
        {"features": {"salary": 2.0, "elevel": "e1"}, "prediction": 1, "score": 0.75,
         "label": "two"},
    ]  # fmt: skip
    assert [r["label"] for r in store.labelled(limit=1)] == [{"zero": [0]}]


def test_claim_export_names_only_labelled_unexported_rows_once_there_are_enough(store):
    """It claims every labelled, unexported row once `min_rows` are pending, else none."""
    store.write(_items("a", 5))
    assert store.claim_export("none", min_rows=1) == 0
    store.label([("a", 3, 1), ("a", 1, 0)])
    assert store.claim_export("too-few", min_rows=3) == 0
    assert store.claimed() == [] and store.export_rows("too-few") == []
    store.label([("a", 0, 1)])
    assert store.claim_export("b1", min_rows=3) == 3
    rows = store.export_rows("b1")
    assert [(f["salary"], label, at) for _, f, label, at in rows] == [
        (0.0, 1, 1_767_225_600.0),
        (1.0, 0, 1_767_225_601.0),
        (3.0, 1, 1_767_225_603.0),
    ]
    ids = [i for i, *_ in rows]
    assert ids == sorted(ids)
    assert store.claim_export("b2", min_rows=0) == 0  # each row is named into one batch only


def test_an_unfinished_claim_is_listed_and_gives_the_same_rows_again(store):
    """It lists a claimed, unfinished batch (a crash before finish) with the same rows each time."""
    store.write(_items("a", 4))
    store.label([("a", 0, 1), ("a", 1, 0)])
    assert store.claim_export("b1", min_rows=1) == 2
    store.label([("a", 2, 1)])
    assert store.claim_export("b2", min_rows=1) == 1
    assert store.claimed() == ["b1", "b2"]  # oldest first
    first = store.export_rows("b1")
    assert store.export_rows("b1") == first and len(first) == 2


def test_finish_export_marks_the_batch_and_a_second_claim_finds_none(store):
    """It marks a finished batch's rows exported once: unlisted, unclaimable, still labelled."""
    store.write(_items("a", 3))
    store.label([("a", 0, 1), ("a", 2, 0)])
    assert store.claim_export("b1", min_rows=1) == 2
    assert store.finish_export("b1") == 2
    assert store.finish_export("b1") == 0
    assert store.claimed() == []
    assert store.claim_export("b2", min_rows=0) == 0 and store.export_rows("b2") == []
    assert len(store.export_rows("b1")) == 2  # the batch can still be read back
    assert len(store.labelled(limit=10)) == 2
    store.label([("a", 1, 1)])
    assert store.claim_export("b3", min_rows=1) == 1  # a later label goes to a new batch


def test_count_is_the_rows_stored(store):
    """It counts the rows stored: inserted ones, not duplicates or unstorable ones."""
    assert store.count() == 0
    store.write(_items("a", 3))
    store.write([_item("a", 0), _item("\ud800"), _item("b")])
    assert store.count() == 4


def test_the_store_keeps_at_most_max_rows_but_every_labelled_unexported_row(store_for):
    """It drops the oldest rows past `max_rows`, keeping labelled rows until they are exported."""
    store = store_for(max_rows=10)
    store.write(_items("old", 3))
    store.label([("old", 0, 1), ("old", 2, 0)])
    for i in range(4):
        store.write(_items(f"new{i}", 10))
    assert store.count() == 12  # the 10 newest, and 2 kept by their labels
    assert _keys(store.recent(limit=2)) == [("new3", 8), ("new3", 9)]
    assert store.label([("old", 1, 1)]) == (["old#1"], [])  # rotated out: unknown
    assert store.claim_export("b", min_rows=1) == 2
    assert store.finish_export("b") == 2
    store.write([_item("last")])
    assert store.count() == 10
    assert not any(r["request_id"] == "old" for r in store.recent(limit=100))


def test_fake_predictions_offers_every_member_of_the_port():
    """It gives FakePredictions every PredictionStore method, taking the port's parameters."""
    for name in sorted(_members(ports.PredictionStore)):
        assert hasattr(FakePredictions, name), f"FakePredictions lacks {name}"
        want = set(inspect.signature(getattr(ports.PredictionStore, name)).parameters)
        have = set(inspect.signature(getattr(FakePredictions, name)).parameters)
        assert not want - have, f"FakePredictions.{name} lacks {sorted(want - have)}"


# -- Clock ------------------------------------------------------------------------------------


@pytest.fixture(params=KINDS)
def clock(request: pytest.FixtureRequest) -> ports.Clock:
    return SystemClock() if request.param == "adapter" else FakeClock()


def test_now_is_timezone_aware_utc(clock):
    """It returns wall time with a timezone whose offset is zero."""
    now = clock.now()
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(0)


def test_monotonic_never_goes_back(clock):
    """It returns a float that never decreases from one call to the next."""
    readings = [clock.monotonic() for _ in range(2_000)]
    assert all(isinstance(r, float) for r in readings)
    assert all(b >= a for a, b in itertools.pairwise(readings))

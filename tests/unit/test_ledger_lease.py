"""Unit tests of the append-only ledger and the single-writer leases."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from champion.training.errors import LeaseBusyError
from champion.training.lease import CYCLE, REGISTRY, FileLeases
from champion.training.ledger import Ledger

# --- ledger ------------------------------------------------------------------------------------


def test_ledger_appends_and_reads_back_in_order(tmp_path: Path) -> None:
    """It appends one JSON line per entry, stamps the time, and reads them back in order."""
    ledger = Ledger(tmp_path / "home" / "ledger.jsonl")
    assert ledger.entries() == []
    first = ledger.append({"verdict": "PROMOTE", "champion_after": "1"})
    ledger.append({"verdict": "HOLD", "numbers": {"mean_delta": 0.001}})
    entries = ledger.entries()
    assert [e["verdict"] for e in entries] == ["PROMOTE", "HOLD"]
    assert entries[0] == first
    assert "at" in entries[0]
    assert entries[1]["numbers"] == {"mean_delta": 0.001}
    lines = ledger.path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert all(json.loads(line) for line in lines)


def test_ledger_writes_values_json_cannot_encode_as_text(tmp_path: Path) -> None:
    """It records values JSON cannot encode (paths) as text instead of failing the append."""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.append({"model": tmp_path / "model.skops"})
    assert ledger.entries()[0]["model"] == str(tmp_path / "model.skops")


def test_torn_last_line_is_skipped_and_next_append_starts_a_new_line(tmp_path: Path) -> None:
    """It skips a torn last line on read and never glues the next entry onto it."""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.append({"verdict": "PROMOTE", "champion_after": "1"})
    with ledger.path.open("ab") as fh:
        fh.write(b'{"verdict": "PROMOTE", "champion_af')
    assert [e["verdict"] for e in ledger.entries()] == ["PROMOTE"]
    ledger.append({"verdict": "HOLD", "champion_after": "1"})
    entries = ledger.entries()
    assert [e["verdict"] for e in entries] == ["PROMOTE", "HOLD"]
    lines = ledger.path.read_bytes().split(b"\n")
    assert lines[1] == b'{"verdict": "PROMOTE", "champion_af'
    assert json.loads(lines[2])["verdict"] == "HOLD"


def test_last_champion_is_the_latest_recorded(tmp_path: Path) -> None:
    """It returns the champion_after of the newest entry that records one."""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    assert ledger.last_champion() is None
    ledger.append({"verdict": "REJECT"})
    assert ledger.last_champion() is None
    ledger.append({"verdict": "PROMOTE", "champion_after": "1"})
    ledger.append({"verdict": "PROMOTE", "champion_after": "2"})
    ledger.append({"verdict": "HOLD"})
    assert ledger.last_champion() == "2"
    ledger.append({"action": "rollback", "champion_after": "1"})
    assert ledger.last_champion() == "1"


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    """It keeps every line whole when several threads append at once."""
    path = tmp_path / "ledger.jsonl"

    def writer(n: int) -> None:
        ledger = Ledger(path)
        for i in range(25):
            ledger.append({"writer": n, "i": i, "pad": "x" * 500})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = Ledger(path).entries()
    assert len(entries) == 100
    assert len(path.read_text(encoding="utf-8").splitlines()) == 100


# --- lease -------------------------------------------------------------------------------------


def _try_in_thread(lock_dir: Path, name: str) -> BaseException | None:
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            with FileLeases(lock_dir).hold(name, timeout=0):
                outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=10)
    assert outcome, "the other thread did not finish"
    return outcome[0]


def test_held_lease_is_busy_for_another_thread(tmp_path: Path) -> None:
    """It raises LeaseBusyError, naming the lease, when another holder has it."""
    with FileLeases(tmp_path / "locks").hold(CYCLE):
        error = _try_in_thread(tmp_path / "locks", CYCLE)
    assert isinstance(error, LeaseBusyError)
    assert "'cycle'" in str(error)
    assert LeaseBusyError.exit_code == 3


def test_leases_with_other_names_are_independent(tmp_path: Path) -> None:
    """It lets another holder take a differently named lease at the same time."""
    with FileLeases(tmp_path / "locks").hold(CYCLE):
        assert _try_in_thread(tmp_path / "locks", REGISTRY) is None


def test_released_lease_can_be_taken_again(tmp_path: Path) -> None:
    """It frees the lease when the holder leaves the block, even by an exception."""
    with pytest.raises(RuntimeError), FileLeases(tmp_path).hold(CYCLE):
        raise RuntimeError("boom")
    assert _try_in_thread(tmp_path, CYCLE) is None


def test_lease_waits_up_to_its_timeout(tmp_path: Path) -> None:
    """It waits for a lease released within the timeout instead of failing at once."""
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with FileLeases(tmp_path).hold(CYCLE):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(10)
    threading.Timer(0.2, release.set).start()
    started = time.monotonic()
    with FileLeases(tmp_path).hold(CYCLE, timeout=5):
        waited = time.monotonic() - started
    thread.join(10)
    assert 0.1 < waited < 5


HOLDER = """
import sys, time
from pathlib import Path
from champion.training.lease import FileLeases
with FileLeases(Path(sys.argv[1])).hold(sys.argv[2]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_lease_of_a_killed_holder_is_free_again(tmp_path: Path) -> None:
    """It frees the lease of a process killed with SIGKILL, so a crash never wedges a cycle."""
    lock_dir = tmp_path / "locks"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_dir), CYCLE],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 20)
        assert ready, "the child never took the lease"
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(LeaseBusyError), FileLeases(lock_dir).hold(CYCLE, timeout=0):
            pass
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=20) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with FileLeases(lock_dir).hold(CYCLE, timeout=0):
        pass

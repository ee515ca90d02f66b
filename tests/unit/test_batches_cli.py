"""Unit tests of `champion batches`: the listing and `retire`, on a project in a temp folder."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import tomli_w
from click.testing import Result
from typer.testing import CliRunner

from champion.service.cli import app
from champion.training.config import Contract, get_settings
from champion.training.data import intake, load_window
from champion.training.demo.simulate import agrawal_frame
from champion.training.ledger import Ledger
from champion.training.manifest import Manifest
from tests.unit.conftest import make_contract, small_raw_contract

Invoke = Callable[..., Result]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Contract]:
    """A project file with a 60 s settle time; CHAMPION_* variables point at it."""
    raw = small_raw_contract()
    raw["data"]["settle_seconds"] = 60
    (tmp_path / "champion.toml").write_text(tomli_w.dumps(raw), encoding="utf-8")
    monkeypatch.setenv("CHAMPION_PROJECT_FILE", str(tmp_path / "champion.toml"))
    monkeypatch.setenv("CHAMPION_HOME", str(tmp_path / "var"))
    monkeypatch.setenv("CHAMPION_LOG_FORMAT", "text")
    monkeypatch.setenv("CHAMPION_LEASE_TIMEOUT_SECONDS", "1")
    # Wiring only sets a default; a value here keeps it out of the other tests' environment.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'var' / 'mlflow.db'}")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    get_settings.cache_clear()
    yield make_contract(tmp_path, raw)
    get_settings.cache_clear()
    root.handlers[:], root.level = handlers, level


@pytest.fixture
def cli() -> Invoke:
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def _write(contract: Contract, frame: pd.DataFrame, name: str, *, settled: bool = True) -> Path:
    zone = contract.data.landing_zone
    zone.mkdir(parents=True, exist_ok=True)
    path = zone / name
    frame.to_csv(path, index=False)
    if settled:
        past = time.time() - 600
        os.utime(path, (past, past))
    return path


def _frame(seed: int) -> pd.DataFrame:
    return agrawal_frame(60, function=1, seed=seed, label_noise=0.05)


def _ledger(contract: Contract) -> Ledger:
    return Ledger(contract.data.manifest.parent / "ledger.jsonl")  # CHAMPION_HOME is var/


def _taken_in(contract: Contract) -> dict[str, str]:
    """Intake of two good batches and a bad one; file name -> batch id."""
    _write(contract, _frame(1), "b1.csv")
    _write(contract, _frame(2), "b2.csv")
    _write(contract, _frame(3).drop(columns=["age"]), "bad.csv")
    report = intake(contract, Manifest(contract.data.manifest))
    return {r.file: r.batch_id for r in (*report.accepted, *report.quarantined)}


def test_batches_lists_every_batch_and_the_landing_zone(project: Contract, cli: Invoke) -> None:
    """It lists each batch with status, rows, seen and trained-on, plus waiting/ignored files."""
    ids = _taken_in(project)
    Manifest(project.data.manifest).mark_consumed([ids["b1.csv"]], "run-42")
    _write(project, _frame(4), "fresh.csv", settled=False)
    (project.data.landing_zone / "notes.txt").write_text("not a batch")
    result = cli("batches")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    (b1,) = [ln for ln in lines if ln.startswith(ids["b1.csv"])]
    assert "accepted" in b1 and "60 rows" in b1 and "trained on: run-42" in b1
    (b2,) = [ln for ln in lines if ln.startswith(ids["b2.csv"])]
    assert "accepted" in b2 and "trained on: -" in b2
    bad_at = next(i for i, ln in enumerate(lines) if ln.startswith(ids["bad.csv"]))
    assert "quarantined" in lines[bad_at]
    assert lines[bad_at + 1].strip() == "column 'age': missing"
    assert any("still being written" in ln and "fresh.csv" in ln for ln in lines)
    assert any("ignored" in ln and "notes.txt" in ln for ln in lines)


def test_batches_json_prints_the_raw_entries(project: Contract, cli: Invoke) -> None:
    """It prints the manifest entries and landing-zone files as one JSON document."""
    ids = _taken_in(project)
    (project.data.landing_zone / "notes.txt").write_text("not a batch")
    result = cli("batches", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["batches"] == Manifest(project.data.manifest).records()
    assert set(body["batches"]) == set(ids.values())
    assert body["landing_zone"]["ignored"] == ["notes.txt"]
    assert body["classes"] == [0, 1]


def test_retire_removes_the_batch_from_the_next_window_and_records_it(
    project: Contract, cli: Invoke
) -> None:
    """It marks the batch retired, drops it from the window and appends a ledger entry."""
    ids = _taken_in(project)
    result = cli("batches", "retire", ids["b2.csv"], "--reason", "labels were shifted")
    assert result.exit_code == 0, result.output
    manifest = Manifest(project.data.manifest)
    assert manifest.batches[ids["b2.csv"]].status == "retired"
    assert load_window(project, manifest).batch_ids == (ids["b1.csv"],)
    (entry,) = _ledger(project).entries()
    assert entry["event"] == "batch_retired"
    assert entry["batch"] == ids["b2.csv"]
    assert entry["reason"] == "labels were shifted"
    assert "@" in entry["who"]
    listing = cli("batches").stdout
    assert any(ln.startswith(ids["b2.csv"]) and "retired" in ln for ln in listing.splitlines())


def test_retire_refuses_unknown_and_not_accepted_batches(project: Contract, cli: Invoke) -> None:
    """It exits 1 naming the batch when it is unknown, quarantined or already retired."""
    ids = _taken_in(project)
    unknown = cli("batches", "retire", "no-such-batch", "--reason", "x")
    assert unknown.exit_code == 1 and "no-such-batch" in unknown.output
    quarantined = cli("batches", "retire", ids["bad.csv"], "--reason", "x")
    assert quarantined.exit_code == 1
    assert ids["bad.csv"] in quarantined.output and "quarantined" in quarantined.output
    assert cli("batches", "retire", ids["b1.csv"], "--reason", "x").exit_code == 0
    again = cli("batches", "retire", ids["b1.csv"], "--reason", "x")
    assert again.exit_code == 1 and "retired" in again.output
    assert [e["batch"] for e in _ledger(project).entries()] == [ids["b1.csv"]]


def test_retire_needs_a_reason(project: Contract, cli: Invoke) -> None:
    """It exits non-zero without changing anything when the reason is empty or missing."""
    ids = _taken_in(project)
    blank = cli("batches", "retire", ids["b1.csv"], "--reason", "  ")
    assert blank.exit_code != 0 and "reason" in blank.output
    assert cli("batches", "retire", ids["b1.csv"]).exit_code != 0
    assert Manifest(project.data.manifest).batches[ids["b1.csv"]].status == "accepted"


def test_empty_manifest_is_said_so(project: Contract, cli: Invoke) -> None:
    """It says no batch was taken in yet rather than printing nothing."""
    result = cli("batches")
    assert result.exit_code == 0 and "No batch taken in yet" in result.stdout


class _NoRegistry:
    """Just enough registry for `champion status` before any champion exists."""

    def aliases(self) -> dict[str, str]:
        return {}


def test_status_counts_retired_batches_and_files_not_taken_in(
    project: Contract, cli: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It counts retired batches, and waiting files even after accepted ones left the zone."""
    from champion.service import cli as cli_module
    from champion.service.root import build

    monkeypatch.setattr(cli_module, "_root", lambda: build(registry=_NoRegistry()))
    ids = _taken_in(project)
    assert cli("batches", "retire", ids["b2.csv"], "--reason", "drill").exit_code == 0
    (project.data.landing_zone / "b1.csv").unlink()
    (project.data.landing_zone / "b2.csv").unlink()
    _write(project, _frame(4), "settled.csv")
    _write(project, _frame(5), "fresh.csv", settled=False)
    (project.data.landing_zone / "notes.txt").write_text("not a batch")
    result = cli("status")
    assert result.exit_code == 0, result.output
    assert "batches:     1 accepted (1 not yet trained on), 1 retired, 1 quarantined" in (
        result.stdout
    )
    assert "landing:     2 waiting to be taken in, 1 ignored" in result.stdout


def test_batches_lists_the_duplicate_rows_intake_dropped(project: Contract, cli: Invoke) -> None:
    """It says how many fully duplicated rows intake dropped from an accepted batch."""
    frame = _frame(1)
    _write(project, pd.concat([frame, frame.head(3)], ignore_index=True), "dupes.csv")
    _write(project, _frame(2), "clean.csv")
    intake(project, Manifest(project.data.manifest))
    lines = cli("batches").stdout.splitlines()
    at = next(i for i, ln in enumerate(lines) if "duplicate" in ln)
    assert lines[at].strip() == "3 duplicate rows dropped"
    assert "accepted" in lines[at - 1] and "60 rows" in lines[at - 1]
    assert sum("duplicate" in ln for ln in lines) == 1  # the clean batch says nothing


def test_retrain_prints_what_intake_did_before_the_verdict(
    project: Contract, cli: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It prints accepted (with duplicates), quarantined (first reason) and settling files."""
    from champion.service import cli as cli_module
    from champion.service.root import build
    from tests.fakes import FakeRegistry

    monkeypatch.setattr(cli_module, "_root", lambda: build(registry=FakeRegistry()))
    one_class = _frame(1).assign(approved=0)  # a single-class window skips before tuning
    _write(project, pd.concat([one_class, one_class.head(2)], ignore_index=True), "dupes.csv")
    _write(project, _frame(2).drop(columns=["age", "car"]), "bad.csv")
    _write(project, _frame(3), "fresh.csv", settled=False)
    result = cli("retrain", "--no-progress")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "intake: accepted dupes.csv (62 rows, 2 duplicate rows dropped)",
        "intake: quarantined bad.csv: column 'age': missing (and 1 more reasons)",
        "intake: still being written, left for the next cycle: fresh.csv",
    ]
    assert lines[3].startswith("SKIPPED: The training window holds a single class")
    again = cli("retrain", "--no-progress")
    assert again.stdout.splitlines()[0] == (
        "intake: still being written, left for the next cycle: fresh.csv"
    )
    assert cli("retrain", "--no-progress", "--json").stdout.startswith("{")


def test_retrain_after_a_quarantine_says_why_there_is_nothing_new(
    project: Contract, cli: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It names the quarantined batch in the SKIPPED reason, not only 'No new batches'."""
    from champion.service import cli as cli_module
    from champion.service.root import build
    from tests.fakes import FakeRegistry

    monkeypatch.setattr(cli_module, "_root", lambda: build(registry=FakeRegistry()))
    ids = _taken_in(project)
    manifest = Manifest(project.data.manifest)
    manifest.mark_consumed([ids["b1.csv"], ids["b2.csv"]], "run-1")
    _write(project, _frame(4), "semi.csv")
    path = project.data.landing_zone / "semi.csv"
    path.write_text(path.read_text().replace(",", ";"))
    os.utime(path, (time.time() - 600, time.time() - 600))
    result = cli("retrain", "--no-progress")
    assert result.exit_code == 0, result.output
    hint = "the header looks `;`-separated ("
    assert result.stdout.startswith(f"intake: quarantined semi.csv: {hint}")
    (verdict,) = [ln for ln in result.stdout.splitlines() if ln.startswith("SKIPPED")]
    assert verdict.startswith(
        f"SKIPPED: No new batches since the last cycle: 1 quarantined (semi.csv: {hint}"
    )
    assert verdict.endswith("batches must be comma-separated CSV); see `champion batches`.")


def test_bootstrap_writes_no_demo_data_for_a_contract_that_is_not_the_demos(
    tmp_path, monkeypatch
) -> None:
    """It leaves an empty landing zone alone, and says why, when the contract's features are
    not the loan-approval demo's (its batches would only be quarantined)."""
    from typer.testing import CliRunner

    from champion.service.cli import app
    from champion.training.config import get_settings

    root = Path(__file__).resolve().parents[2]
    project = tmp_path / "champion.toml"
    project.write_text((root / "examples" / "regression" / "champion.toml").read_text())
    monkeypatch.setenv("CHAMPION_PROJECT_FILE", str(project))
    monkeypatch.setenv("CHAMPION_HOME", str(tmp_path / "var"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["bootstrap"])
    finally:
        get_settings.cache_clear()
    assert "no demo data for this contract" in result.output, result.output
    landing = tmp_path / "var" / "landing"
    assert not landing.exists() or not any(landing.iterdir())

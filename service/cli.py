"""The `champion` command line: a thin Typer layer over the retraining core."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer

from champion.training.errors import ChampionError

if TYPE_CHECKING:
    from champion.service.root import Components
    from champion.training.config import Contract
    from champion.training.data import IntakeReport, TrainingData
    from champion.training.demo.simulate import SimulationPlan
    from champion.training.manifest import BatchEntry
    from champion.training.ports import BatchStore
    from champion.training.records import CycleReport

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="champion: the right model, always serving, never silently worse.",
)


def _root() -> Components:
    """The components for one command (the composition root)."""
    from champion.service.root import build

    return build()


def _fail(exc: ChampionError) -> typer.Exit:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(exc.exit_code)


def _clean_errors(command: Callable[P, R]) -> Callable[P, R]:
    """A ChampionError anywhere in a command is a one-line message and its exit code."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ChampionError as exc:
            raise _fail(exc) from None

    return run


@app.command()
def retrain(
    progress: Annotated[bool, typer.Option(help="Show a progress bar while tuning.")] = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the outcome as one JSON line.")
    ] = False,
    trigger: Annotated[str, typer.Option(hidden=True, help="Recorded in the ledger.")] = "cli",
    nice: Annotated[int, typer.Option(min=0, max=19, help="Lower this process's priority.")] = 0,
    result_file: Annotated[
        Path | None, typer.Option(hidden=True, help="Write the outcome here as JSON.")
    ] = None,
    exit_with_parent: Annotated[
        bool, typer.Option(hidden=True, help="Stop when the starting process dies.")
    ] = False,
) -> None:
    """Run one retrain cycle (bootstraps a champion when there is none).

    Exit status 0 for every verdict but FAILED (1); `--json` prints the verdict, reason,
    versions and timing as one JSON line: the record the scheduler reads from its result file.
    """
    from champion.training.cycle import run_cycle
    from champion.training.records import CycleReport, Verdict

    if nice:
        os.nice(nice)
    if exit_with_parent:
        from champion.training.process import exit_with_parent as watch_parent

        watch_parent(what="retrain")
    try:
        ctx = _root().cycle_context(progress=progress or None)
    except ChampionError as exc:
        report = CycleReport(Verdict.FAILED, str(exc))
        _report(report, result_file=result_file, as_json=as_json)
        raise _fail(exc) from None
    recorder = _IntakeRecorder(ctx.batches)
    ctx.batches = recorder
    result = run_cycle(ctx, trigger=trigger)
    _report(result.report(), result_file=result_file, as_json=as_json)
    if not as_json:
        if recorder.report is not None:
            for line in _intake_lines(recorder.report):
                typer.echo(line)
        color = {Verdict.PROMOTE: typer.colors.GREEN, Verdict.FAILED: typer.colors.RED}
        typer.secho(f"{result.verdict.value}: {result.reason}", fg=color.get(result.verdict))
        if result.version:
            typer.echo(f"challenger v{result.version}; champion: {result.champion_after or 'none'}")
        typer.echo(f"{result.trials} trials in {result.seconds:.1f}s")
    raise typer.Exit(result.exit_code)


class _IntakeRecorder:
    """A batch store that keeps what the cycle's intake did, for `retrain` to print."""

    def __init__(self, inner: BatchStore) -> None:
        self.inner = inner
        self.report: IntakeReport | None = None

    def intake(self) -> IntakeReport:
        self.report = self.inner.intake()
        return self.report

    def window(self) -> TrainingData:
        return self.inner.window()

    def mark_consumed(self, batch_ids: Sequence[str], by: str) -> None:
        self.inner.mark_consumed(batch_ids, by)


def _duplicates(count: int | None) -> str:
    return f", {count} duplicate row{'s' if count != 1 else ''} dropped" if count else ""


def _intake_lines(report: IntakeReport) -> list[str]:
    """What intake did, one line per batch file: accepted, quarantined, left to settle."""
    lines = [
        f"intake: accepted {r.file} ({r.rows} rows{_duplicates(r.duplicates_dropped)})"
        for r in report.accepted
    ]
    for r in report.quarantined:
        more = f" (and {len(r.reasons) - 1} more reasons)" if len(r.reasons) > 1 else ""
        first = r.reasons[0] if r.reasons else "no reason recorded"
        lines.append(f"intake: quarantined {r.file}: {first}{more}")
    if report.waiting:
        lines.append(
            f"intake: still being written, left for the next cycle: {', '.join(report.waiting)}"
        )
    return lines or ["intake: no new batch files in the landing zone"]


def _report(report: CycleReport, *, result_file: Path | None, as_json: bool) -> None:
    from champion.training.files import atomic_write_text

    if result_file is not None:
        atomic_write_text(result_file, report.to_json())
    if as_json:
        typer.echo(report.to_json())


def _describe(record: dict[str, Any]) -> str:
    from champion.training.records import Event, LedgerEntry

    entry = LedgerEntry.from_record(record)
    at = (entry.at or "")[:19].replace("T", " ")
    if entry.event is Event.CYCLE:
        head = str(entry.verdict or "")
    elif entry.event is Event.CYCLE_INTERRUPTED:
        head = "FAILED"
    else:
        head = entry.event.replace("_", " ").upper()
    moved = ""
    if entry.moved or entry.champion_after is not None:
        before, after = entry.champion_before, entry.champion_after
        moved = f" v{before} → v{after}" if before != after else f" (champion v{after})"
        moved = moved.replace("vNone", "none")
    version = f" challenger v{entry.challenger_version}" if entry.challenger_version else ""
    batch = f" {entry.batch}" if entry.batch else ""
    return f"{at}  {head:<15}{moved}{version}{batch}  [{entry.who}]\n    {entry.reason}"


@app.command()
@_clean_errors
def history(
    limit: Annotated[int, typer.Option(min=1, help="Show the last N entries.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print raw ledger lines.")] = False,
) -> None:
    """Show the promotion ledger: every verdict, promotion and rollback, newest last."""
    w = _root()
    entries = w.ledger.entries()[-limit:]
    if not entries:
        typer.echo("The ledger is empty: no cycle has run yet (try `champion retrain`).")
        return
    for entry in entries:
        typer.echo(json.dumps(entry, sort_keys=True) if as_json else _describe(entry))


@app.command()
@_clean_errors
def status() -> None:
    """Show the champion, the aliases, the last verdict and the landing zone."""
    from collections import Counter

    from champion.training.data import landing_status
    from champion.training.lease import CYCLE, SCHEDULER
    from champion.training.manifest import BatchStatus

    w = _root()
    registry = w.registry
    aliases = registry.aliases()
    manifest = w.manifest()
    champion = aliases.get("champion")
    typer.echo(
        f"model:       {w.contract.project.name} ({w.contract.task}, "
        f"primary metric {w.contract.metrics.primary})"
    )
    typer.echo(f"registry:    {w.tracking_uri}")
    state = w.database.safe_url if w.shared else f"files under {w.settings.home}"
    typer.echo(f"state:       {state}" + (" (shared mode)" if w.shared else ""))
    held = {name: w.leases.holder(name) for name in (SCHEDULER, CYCLE)}
    typer.echo(
        "leases:      "
        + ", ".join(f"{name} {'held by ' + who if who else 'free'}" for name, who in held.items())
    )
    typer.echo(
        "aliases:     "
        + (
            ", ".join(f"{k}=v{v}" for k, v in sorted(aliases.items()))
            or "none (no champion yet: run `champion retrain`)"
        )
    )
    if champion:
        ref = registry.version(champion)
        created = datetime.fromtimestamp(ref.created_ms / 1000).isoformat(timespec="seconds")
        typer.echo(
            f"champion:    v{champion}, registered {created}, "
            f"{ref.rows or '?'} rows, {ref.candidate_json or ''}"
        )
        typer.echo(
            f"serves with: {ref.runtime}" + (f" ({ref.runtime_note})" if ref.runtime_note else "")
        )
    last = next(w.ledger.tail(), None)
    if last is not None:
        typer.echo("last entry:  " + _describe(last).replace("\n", "\n             "))
    counts = Counter(e.status for e in manifest.batches.values())
    landing = landing_status(w.contract, manifest)
    typer.echo(
        f"batches:     {counts[BatchStatus.ACCEPTED]} accepted ({len(manifest.unconsumed())} "
        f"not yet trained on), {counts[BatchStatus.RETIRED]} retired, "
        f"{counts[BatchStatus.QUARANTINED]} quarantined"
    )
    # Accepted files may stay in the landing zone or go: only files not taken in count here.
    typer.echo(
        f"landing:     {len(landing.new) + len(landing.waiting)} waiting to be taken in, "
        f"{len(landing.ignored)} ignored (`champion batches` names them)"
    )


batches_app = typer.Typer(
    help="List the batches intake has seen (no subcommand), or retire one.",
    no_args_is_help=False,
)
app.add_typer(batches_app, name="batches")


def _batch_line(batch_id: str, entry: BatchEntry) -> str:
    from champion.training.manifest import BatchStatus

    seen = (entry.seen_at or "")[:19].replace("T", " ")
    rows = next((n for n in (entry.usable_rows, entry.rows) if n is not None), "?")
    trained = entry.consumed_by or "-"
    line = f"{batch_id}  {entry.status:<11} {rows:>7} rows  seen {seen}  trained on: {trained}"
    if entry.status is BatchStatus.ACCEPTED and entry.duplicates_dropped:
        line += f"\n    {_duplicates(entry.duplicates_dropped).removeprefix(', ')}"
    if entry.status is BatchStatus.QUARANTINED and entry.reasons:
        line += f"\n    {entry.reasons[0]}"
    elif entry.status is BatchStatus.RETIRED:
        line += f"\n    retired: {entry.retired_reason or ''}"
    return line


@batches_app.callback(invoke_without_command=True)
@_clean_errors
def batches(
    ctx: typer.Context,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the raw manifest entries.")
    ] = False,
) -> None:
    """List every batch in the manifest, and the landing-zone files not taken in."""
    if ctx.invoked_subcommand is not None:
        return
    from champion.training.data import landing_status

    w = _root()
    manifest = w.manifest()
    landing = landing_status(w.contract, manifest)
    if as_json:
        body = {
            "batches": manifest.records(),
            "classes": manifest.classes,
            "landing_zone": {
                "new": list(landing.new),
                "waiting": list(landing.waiting),
                "ignored": list(landing.ignored),
            },
        }
        typer.echo(json.dumps(body, indent=1, sort_keys=True))
        return
    if not manifest.batches:
        typer.echo("No batch taken in yet.")
    for batch_id in sorted(manifest.batches, key=lambda b: manifest.batches[b].seen_at or ""):
        typer.echo(_batch_line(batch_id, manifest.batches[batch_id]))
    for label, names in (
        ("new (taken in by the next cycle)", landing.new),
        (
            f"still being written (younger than {w.contract.data.settle_seconds:g}s)",
            landing.waiting,
        ),
        ("ignored (not .csv, .csv.gz or .parquet)", landing.ignored),
    ):
        if names:
            typer.echo(f"landing zone, {label}: {', '.join(names)}")


@batches_app.command("retire")
@_clean_errors
def retire_batch(
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="Accepted batch to retire.")],
    reason: Annotated[str, typer.Option(help="Why; recorded in the ledger.")],
) -> None:
    """Take an accepted batch out of every future training window (its stored copy stays)."""
    from champion.training.lease import CYCLE, REGISTRY
    from champion.training.process import actor
    from champion.training.records import Event, LedgerEntry

    reason = reason.strip()
    if not reason:
        raise ChampionError("a reason is required (--reason TEXT); it goes into the ledger")
    w = _root()
    timeout = w.settings.lease_timeout_seconds
    # The cycle lease keeps a running cycle from saving its older copy of the manifest
    # over this change; the registry lease serialises ledger writes.
    with w.leases.hold(CYCLE, timeout=timeout), w.leases.hold(REGISTRY, timeout=timeout):
        manifest = w.manifest()
        who = actor()
        manifest.retire(batch_id, reason=reason, who=who)
        w.ledger.append(LedgerEntry(Event.BATCH_RETIRED, reason, who, batch=batch_id))
    typer.secho(
        f"batch {batch_id} retired: it leaves every future training window", fg=typer.colors.GREEN
    )


@app.command()
@_clean_errors
def promote(
    version: Annotated[str, typer.Argument(help="Registered version to make the champion.")],
    reason: Annotated[str, typer.Option(help="Why; recorded in the ledger.")],
) -> None:
    """Manually make VERSION the champion (recorded in the ledger)."""
    from champion.training import actions

    _manual(actions.promote, version, reason=reason)


@app.command()
@_clean_errors
def rollback(
    reason: Annotated[str, typer.Option(help="Why; recorded in the ledger.")],
) -> None:
    """Make `previous` the champion again (a second rollback undoes the first)."""
    from champion.training import actions

    _manual(actions.rollback, reason=reason)


def _manual(action: Callable[..., dict[str, Any]], *args: str, reason: str) -> None:
    """Run a manual promote or rollback on this home's ports and say what moved."""
    w = _root()
    entry = action(
        *args,
        reason=reason,
        registry=w.registry,
        ledger=w.ledger,
        leases=w.leases,
        lease_timeout=w.settings.lease_timeout_seconds,
    )
    before, after = entry["champion_before"], entry["champion_after"]
    typer.secho(f"champion: v{before} → v{after}", fg=typer.colors.GREEN)


@app.command()
@_clean_errors
def simulate(
    batches: Annotated[int, typer.Option(min=1, help="How many batches to write.")] = 5,
    rows: Annotated[int, typer.Option(min=1, help="Rows per batch.")] = 1000,
    drift_at: Annotated[
        int | None, typer.Option(min=0, help="Global batch index from which the concept changes.")
    ] = None,
    seed: Annotated[int, typer.Option(min=0)] = 7,
    noise: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="Share of flipped labels.")
    ] = 0.05,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet")] = "csv",
) -> None:
    """Write demo batches (a drifting loan-approval stream) into the landing zone."""
    from champion.training.demo.simulate import SimulationPlan

    w = _root()
    try:
        plan = SimulationPlan(
            batches=batches, rows=rows, drift_at=drift_at, seed=seed, label_noise=noise, fmt=fmt
        )
        written = _land_demo(w, plan)
    except (ValueError, FileExistsError) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    for where in written:
        typer.echo(f"wrote {where}")


def _demo_fits(contract: Contract) -> bool:
    """Whether the demo's loan-approval batches are this contract's data (features, target)."""
    from champion.training.demo.simulate import (
        FEATURES_CATEGORICAL,
        FEATURES_NUMERIC,
        TARGET,
    )

    return contract.target == TARGET and set(contract.features) == {
        *FEATURES_NUMERIC,
        *FEATURES_CATEGORICAL,
    }


def _land_demo(w: Components, plan: SimulationPlan) -> list[str]:
    """Write a demo plan's batches into the landing zone, a local folder or an object store
    (written in a temporary folder first, then put there whole; numbering continues after
    the batch files already in the landing zone)."""
    import re
    import tempfile

    from champion.training.demo.simulate import simulate_batches
    from champion.training.storage import location

    landing = w.contract.data.landing_zone
    if isinstance(landing, Path):
        return [str(p) for p in simulate_batches(plan, landing_zone=landing)]
    folder = location(landing)
    numbers = [int(m.group(1)) for e in folder.list() if (m := re.match(r"batch-(\d+)\.", e.name))]
    with tempfile.TemporaryDirectory(prefix="champion-demo-") as tmp:
        made = simulate_batches(plan, landing_zone=Path(tmp), first_index=max(numbers, default=0))
        for path in made:
            folder.write_bytes(path.name, path.read_bytes())
        return [folder.join(path.name) for path in made]


@app.command()
@_clean_errors
def bootstrap(
    demo: Annotated[
        bool,
        typer.Option(
            "--demo/--no-demo",
            envvar="CHAMPION_DEMO_DATA",
            help="Write demo batches when there is no data at all (a real deployment: off).",
        ),
    ] = True,
) -> None:
    """Prepare a fresh checkout: demo data if the landing zone is empty, a champion if none."""
    import time

    from champion.training.cycle import run_cycle
    from champion.training.data import pending_files
    from champion.training.demo.simulate import SimulationPlan

    w = _root()
    landing = w.contract.data.landing_zone
    fits = _demo_fits(w.contract)
    if demo and not fits and not pending_files(landing) and not w.manifest().batches:
        typer.echo(
            f"no demo data for this contract (it is not the loan-approval demo's): put batches "
            f"into {landing}"
        )
    elif demo and not pending_files(landing) and not w.manifest().batches:
        _land_demo(w, SimulationPlan(batches=4, rows=1000, drift_at=None, seed=7))
        typer.echo(f"wrote 4 demo batches into {landing}")
        if not isinstance(landing, Path):
            # An object's age is the store's to say: wait until intake takes them as settled.
            settle = w.contract.data.settle_seconds
            typer.echo(f"waiting {settle:g} s for them to settle")
            time.sleep(settle + 1)
    if (current := w.registry.alias("champion")) is not None:
        typer.echo(f"champion v{current.version} is in place")
        return
    result = run_cycle(w.cycle_context(), trigger="bootstrap")
    typer.echo(f"{result.verdict.value}: {result.reason}")
    raise typer.Exit(result.exit_code)


@app.command()
@_clean_errors
def serve(
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(min=1, help="Service worker processes.")] = 2,
) -> None:
    """Serve the API (BentoML) with the scheduler: one retrain leader across all workers."""
    import shutil
    import sys

    w = _root()
    env = dict(os.environ)
    env["BENTOML_CONFIG_OPTIONS"] = " ".join(
        filter(None, [env.get("BENTOML_CONFIG_OPTIONS"), f"services.champion.workers={workers}"])
    )
    env.setdefault("CHAMPION_PROJECT_FILE", str(w.settings.project_file.resolve()))
    env.setdefault("CHAMPION_HOME", str(w.settings.home.resolve()))
    base = f"http://{host}:{port}"
    typer.echo(
        f"champion serving {w.contract.project.name} with {workers} workers\n"
        f'  API      {base}/predict   (POST {{"instances": [...]}})\n'
        f"  docs     {base}/docs\n"
        f"  model    {base}/model\n"
        f"  ready    {base}/readyz\n"
        f"  metrics  {base}/metrics\n"
        f"  MLflow   mlflow ui --backend-store-uri {w.tracking_uri}  (then http://127.0.0.1:5000)"
    )
    bentoml = shutil.which("bentoml") or str(Path(sys.executable).with_name("bentoml"))
    os.execve(
        bentoml,
        [bentoml, "serve", "champion.service.app:Champion", "--port", str(port), "--host", host],
        env,
    )


@app.command()
@_clean_errors
def predict(
    file: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="CSV of feature rows.")],
    url: Annotated[str, typer.Option(help="Service base URL.")] = "http://127.0.0.1:3000",
) -> None:
    """Send the rows of a CSV file to a running service and print its answer.

    A file longer than the service takes in one request (its OpenAPI `maxItems`, else
    CHAMPION_MAX_ROWS) goes in chunks; the answers are printed as one, with the request id
    of each chunk (`request_ids`, `chunk_rows` rows each) for feedback.
    """
    import httpx
    import pandas as pd

    from champion.service.scoring import instances

    frame = pd.read_csv(file, dtype=str, keep_default_na=False)
    w = _root()
    # The target or a timestamp column of a batch file is left out; numbers parsed from text.
    rows = instances(frame, w.contract)
    base = url.rstrip("/")
    try:
        limit = _max_rows(base, default=w.settings.max_rows)
        answers = _predict_chunks(base, rows, limit)
    except httpx.HTTPError as exc:
        typer.secho(f"error: cannot reach {url}: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    except _Refused as refused:
        if refused.chunks > 1:
            typer.secho(
                f"error: rows {refused.start + 1} to {refused.start + refused.rows} refused "
                f"(HTTP {refused.status}); nothing printed for the other chunks",
                err=True,
                fg=typer.colors.RED,
            )
        typer.echo(json.dumps(refused.body, indent=1))
        raise typer.Exit(1) from None
    typer.echo(json.dumps(_merge_answers(answers, limit), indent=1))
    raise typer.Exit(0)


def _max_rows(base: str, *, default: int) -> int:
    """Rows the service takes in one /predict request: its OpenAPI schema's, else `default`."""
    import httpx

    try:
        schema = httpx.get(f"{base}/openapi.json", timeout=10).json()
        limit = schema["components"]["schemas"]["PredictRequest"]["properties"]["instances"][
            "maxItems"
        ]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return default
    return limit if isinstance(limit, int) and limit >= 1 else default


class _Refused(Exception):
    """A chunk the service refused: its answer, with row numbers counted in the whole file."""

    def __init__(self, status: int, body: Any, *, start: int, rows: int, chunks: int) -> None:
        super().__init__(status)
        self.status, self.body = status, body
        self.start, self.rows, self.chunks = start, rows, chunks


def _predict_chunks(base: str, rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """POST the rows in chunks of at most `limit`; the answers in order (_Refused on a 4xx/5xx)."""
    import httpx
    from tqdm import tqdm

    starts = range(0, max(len(rows), 1), limit)
    answers: list[dict[str, Any]] = []
    # A bar on a terminal only, and only when there is more than one request to wait for.
    with tqdm(total=len(rows), unit="rows", disable=True if len(starts) < 2 else None) as bar:
        for start in starts:
            chunk = rows[start : start + limit]
            response = httpx.post(f"{base}/predict", json={"instances": chunk}, timeout=30)
            try:
                body = response.json()
            except ValueError:
                body = {"error": response.text}
            if not response.is_success:
                if start and isinstance(body, dict):
                    for problem in body.get("problems") or []:
                        if isinstance(problem, dict) and isinstance(problem.get("row"), int):
                            problem["row"] += start
                raise _Refused(
                    response.status_code, body, start=start, rows=len(chunk), chunks=len(starts)
                )
            answers.append(body)
            bar.update(len(chunk))
    return answers


def _merge_answers(answers: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """One answer for the whole file; a single chunk's answer is printed as the service gave it."""
    if len(answers) == 1:
        return answers[0]
    merged = dict(answers[0])
    for key in ("predictions", "probabilities"):
        if key in merged:
            merged[key] = [value for answer in answers for value in answer.get(key) or []]
    versions = list(dict.fromkeys(answer.get("model_version") for answer in answers))
    # A model swap between chunks shows: every version that answered, in order.
    merged["model_version"] = versions[0] if len(versions) == 1 else versions
    merged.pop("request_id", None)
    merged["request_ids"] = [answer.get("request_id") for answer in answers]
    merged["chunk_rows"] = limit
    return merged


@app.command()
@_clean_errors
def score(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="CSV or Parquet rows to score.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Where to write them, .csv or .parquet.")],
    url: Annotated[
        str | None, typer.Option(help="Score through a running service instead of offline.")
    ] = None,
    chunk_rows: Annotated[int, typer.Option(min=1, help="Rows per chunk.")] = 1000,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Score a file of any size with the champion, in chunks: its rows, then `prediction`,
    one `probability_<class>` column per class, and `error` for a row that could not be scored.

    Offline (the default), the champion is loaded and checked as a serving worker loads it.
    """
    from tqdm import tqdm

    from champion.service.scoring import OfflineScorer, RemoteScorer, Scorer, count_rows, score_file

    w = _root()
    scorer: Scorer
    if url is not None:
        scorer = RemoteScorer(url)
    else:
        from champion.service.slot import ModelSlot

        slot = ModelSlot(registry=w.registry, contract=w.contract, cache_dir=w.settings.cache_dir)
        slot.refresh()
        scorer = OfflineScorer(slot, w.contract)
    with tqdm(total=count_rows(file), unit="row", desc="scoring", disable=not progress) as bar:
        summary = score_file(
            file, out, scorer, w.contract, chunk_rows=chunk_rows, on_chunk=bar.update
        )
    typer.echo(
        f"scored {summary.scored} of {summary.rows} rows with v{summary.version} into {out} "
        f"({summary.chunks} chunk{'s' if summary.chunks != 1 else ''})"
    )
    if summary.failed:
        typer.secho(
            f"{summary.failed} row(s) could not be scored: their `error` column says why",
            err=True,
            fg=typer.colors.YELLOW,
        )
        raise typer.Exit(1)


@app.command()
@_clean_errors
def demo(
    url: Annotated[str, typer.Option(help="Base URL of a running `champion serve`.")] = (
        "http://127.0.0.1:3000"
    ),
    batches: Annotated[int, typer.Option(min=1, help="Batches with the concept change.")] = 3,
) -> None:
    """Send traffic, feed a concept change, and watch a new champion swap in."""
    from champion.training.demo.traffic import run_demo
    from champion.training.storage import local_path

    w = _root()
    token = w.settings.admin_token.get_secret_value() if w.settings.admin_token else None
    try:
        promoted = run_demo(
            base=url.rstrip("/"),
            landing_zone=local_path(w.contract.data.landing_zone, "champion demo"),
            token=token,
            say=typer.echo,
            drifted_batches=batches,
        )
    except TimeoutError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    raise typer.Exit(0 if promoted else 1)


@app.command("tune-worker")
@_clean_errors
def tune_worker(
    study: Annotated[
        str | None,
        typer.Option(help="Join this study (default: the newest open one of this project)."),
    ] = None,
    wait: Annotated[
        float, typer.Option(min=0.0, help="Seconds to wait for a study to open.")
    ] = 60.0,
) -> None:
    """Join a running cycle's tuning study (shared mode) and score trials until its budget
    is spent or the cycle closes it; prints one line: trials run and best score."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    from champion.training.errors import ConfigError
    from champion.training.tune_worker import run_worker

    w = _root()
    store = w.tuning_storage()
    if store is None:
        why = (
            "CHAMPION_SHARED_TUNING is off"
            if w.shared
            else "no CHAMPION_DATABASE_URL: each cycle tunes alone in embedded mode"
        )
        raise ConfigError(f"tune-worker needs a shared tuning database ({why})")
    try:
        run = run_worker(
            store,
            w.contract,
            w.batches(),
            study=study,
            wait=wait,
            threads=w.settings.train_threads,
        )
    except (SQLAlchemyError, optuna.exceptions.OptunaError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ChampionError(f"the shared study failed: {first}") from None
    if run.result is None:
        typer.echo(f"study {run.study} has ended (its cycle closed it): no trial to run")
        return
    result, primary = run.result, w.contract.metrics.primary
    best = (
        f"best {primary}={result.best.mean:.4f} {result.best.candidate.label()}"
        if result.best is not None
        else "no complete trial"
    )
    typer.echo(
        f"{run.study}: {len(result.trials)} trials by {run.owner} in {result.seconds:.1f}s, "
        f"{best} (stopped: {result.stopped_by})"
    )


@app.command("drift-report")
@_clean_errors
def drift_report(
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("drift-report.html"),
    rows: Annotated[int, typer.Option(min=1, help="Live rows to compare.")] = 2000,
) -> None:
    """Write a self-contained HTML drift report for the champion's recent predictions."""
    from champion.monitoring.report import render

    w = _root()
    registry = w.registry
    ref = registry.alias("champion")
    if ref is None:
        raise ChampionError("no champion yet: nothing to compare against")
    watch = w.watch(settings=w.settings.model_copy(update={"drift_window_rows": rows}))
    profile = watch.profile(ref)
    if profile is None:
        raise ChampionError(f"v{ref.version} has no reference profile")
    report = watch.drift(ref)
    assert report is not None
    live, _, _ = watch.window(ref.version)
    page = render(
        title=w.contract.project.name,
        model_version=ref.version,
        report=report,
        profile=profile,
        live=live,
        history=w.ledger.entries(),
    )
    out.write_text(page, encoding="utf-8")
    typer.echo(
        f"wrote {out} ({report.window_rows} live rows, drift share "
        f"{report.drift_share:.0%}, dataset drift: {report.dataset_drift})"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""The `champion` command line: a thin Typer layer over the retraining core."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from champion.training.config import Contract, Settings, get_settings, load_contract
from champion.training.errors import ChampionError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="champion: the right model, always serving, never silently worse.",
)


class Wiring:
    """Settings, contract, registry and ledger, built once per command."""

    def __init__(self, settings: Settings | None = None) -> None:
        from champion.training import logs

        self.settings = settings or get_settings()
        logs.configure(level=self.settings.log_level, fmt=self.settings.log_format)
        self.contract: Contract = load_contract(self.settings.project_file)
        # MLflow reads its own variables; we only supply the local default.
        os.environ.setdefault("MLFLOW_TRACKING_URI", self.settings.default_tracking_uri)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.settings.home.mkdir(parents=True, exist_ok=True)

    @property
    def tracking_uri(self) -> str:
        return os.environ["MLFLOW_TRACKING_URI"]

    def registry(self) -> Any:
        from champion.training.registry import Registry

        return Registry(
            tracking_uri=self.tracking_uri,
            model_name=self.contract.project.name,
            artifact_root=self.settings.artifact_root,
        )

    def ledger(self) -> Any:
        from champion.training.ledger import Ledger

        return Ledger(self.settings.ledger_path)


def _fail(exc: ChampionError) -> typer.Exit:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(exc.exit_code)


@app.command()
def retrain(
    progress: Annotated[bool, typer.Option(help="Show a progress bar while tuning.")] = True,
    trigger: Annotated[str, typer.Option(hidden=True, help="Recorded in the ledger.")] = "cli",
    nice: Annotated[int, typer.Option(min=0, max=19, help="Lower this process's priority.")] = 0,
    result_file: Annotated[
        Path | None, typer.Option(hidden=True, help="Write the outcome here as JSON.")
    ] = None,
    exit_with_parent: Annotated[
        bool, typer.Option(hidden=True, help="Stop when the starting process dies.")
    ] = False,
) -> None:
    """Run one retrain cycle (bootstraps a champion when there is none)."""
    from champion.training.cycle import Context, run_cycle

    if nice:
        os.nice(nice)
    if exit_with_parent:
        from champion.training.process import exit_with_parent as watch_parent

        watch_parent(what="retrain")
    try:
        w = Wiring()
        ctx = Context(w.contract, w.settings, w.registry(), w.ledger(), progress=progress or None)
    except ChampionError as exc:
        if result_file is not None:
            _write_result(result_file, {"verdict": "FAILED", "reason": str(exc)})
        raise _fail(exc) from None
    result = run_cycle(ctx, trigger=trigger)
    if result_file is not None:
        _write_result(
            result_file,
            {"verdict": result.verdict.value, "reason": result.reason, "busy": result.busy},
        )
    color = {"PROMOTE": typer.colors.GREEN, "FAILED": typer.colors.RED}.get(result.verdict.value)
    typer.secho(f"{result.verdict.value}: {result.reason}", fg=color)
    if result.version:
        typer.echo(f"challenger v{result.version}; champion: {result.champion_after or 'none'}")
    typer.echo(f"{result.trials} trials in {result.seconds:.1f}s")
    raise typer.Exit(result.exit_code)


def _write_result(path: Path, body: dict[str, Any]) -> None:
    from champion.training.files import atomic_write_text

    atomic_write_text(path, json.dumps(body))


def _describe(entry: dict[str, Any]) -> str:
    at = entry.get("at", "")[:19].replace("T", " ")
    event = entry.get("event", "?")
    verdict = entry.get("verdict")
    head = verdict if event == "cycle" else event.replace("_", " ").upper()
    if event == "cycle_interrupted":
        head = "FAILED"
    moved = ""
    if "champion_after" in entry:
        before, after = entry.get("champion_before"), entry.get("champion_after")
        moved = f" v{before} → v{after}" if before != after else f" (champion v{after})"
        moved = moved.replace("vNone", "none")
    version = (
        f" challenger v{entry['challenger_version']}" if entry.get("challenger_version") else ""
    )
    batch = f" {entry['batch']}" if entry.get("batch") else ""
    who = entry.get("who", "")
    return f"{at}  {head:<15}{moved}{version}{batch}  [{who}]\n    {entry.get('reason', '')}"


@app.command()
def history(
    limit: Annotated[int, typer.Option(min=1, help="Show the last N entries.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print raw ledger lines.")] = False,
) -> None:
    """Show the promotion ledger: every verdict, promotion and rollback, newest last."""
    try:
        w = Wiring()
    except ChampionError as exc:
        raise _fail(exc) from None
    entries = w.ledger().entries()[-limit:]
    if not entries:
        typer.echo("The ledger is empty: no cycle has run yet (try `champion retrain`).")
        return
    for entry in entries:
        typer.echo(json.dumps(entry, sort_keys=True) if as_json else _describe(entry))


@app.command()
def status() -> None:
    """Show the champion, the aliases, the last verdict and the landing zone."""
    from collections import Counter

    from champion.training.data import Manifest, landing_status

    try:
        w = Wiring()
        registry = w.registry()
        aliases = registry.aliases()
        manifest = Manifest(w.contract.data.manifest)
    except ChampionError as exc:
        raise _fail(exc) from None
    champion = aliases.get("champion")
    typer.echo(
        f"model:       {w.contract.project.name} ({w.contract.task}, "
        f"primary metric {w.contract.metrics.primary})"
    )
    typer.echo(f"registry:    {w.tracking_uri}")
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
            f"{ref.tags.get('champion.rows', '?')} rows, {ref.tags.get('champion.candidate', '')}"
        )
        typer.echo(
            f"serves with: {ref.tags.get('champion.runtime', 'sklearn')}"
            + (f" ({note})" if (note := ref.tags.get("champion.runtime_note")) else "")
        )
    entries = w.ledger().entries()
    if entries:
        typer.echo("last entry:  " + _describe(entries[-1]).replace("\n", "\n             "))
    counts = Counter(e["status"] for e in manifest.batches.values())
    landing = landing_status(w.contract, manifest)
    typer.echo(
        f"batches:     {counts['accepted']} accepted ({len(manifest.unconsumed())} not yet "
        f"trained on), {counts['retired']} retired, {counts['quarantined']} quarantined"
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


def _batch_line(batch_id: str, entry: dict[str, Any]) -> str:
    seen = str(entry.get("seen_at", ""))[:19].replace("T", " ")
    rows = entry.get("usable_rows", entry.get("rows", "?"))
    trained = entry.get("consumed_by") or "-"
    line = f"{batch_id}  {entry['status']:<11} {rows:>7} rows  seen {seen}  trained on: {trained}"
    if entry["status"] == "quarantined" and entry.get("reasons"):
        line += f"\n    {entry['reasons'][0]}"
    elif entry["status"] == "retired":
        line += f"\n    retired: {entry.get('retired_reason', '')}"
    return line


@batches_app.callback(invoke_without_command=True)
def batches(
    ctx: typer.Context,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the raw manifest entries.")
    ] = False,
) -> None:
    """List every batch in the manifest, and the landing-zone files not taken in."""
    if ctx.invoked_subcommand is not None:
        return
    from champion.training.data import Manifest, landing_status

    try:
        w = Wiring()
        manifest = Manifest(w.contract.data.manifest)
        landing = landing_status(w.contract, manifest)
    except ChampionError as exc:
        raise _fail(exc) from None
    if as_json:
        body = {
            "batches": manifest.batches,
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
    for batch_id in sorted(manifest.batches, key=lambda b: manifest.batches[b].get("seen_at", "")):
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
def retire_batch(
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="Accepted batch to retire.")],
    reason: Annotated[str, typer.Option(help="Why; recorded in the ledger.")],
) -> None:
    """Take an accepted batch out of every future training window (its stored copy stays)."""
    from champion.training.data import Manifest
    from champion.training.lease import CYCLE, REGISTRY, lease
    from champion.training.process import actor

    try:
        reason = reason.strip()
        if not reason:
            raise ChampionError("a reason is required (--reason TEXT); it goes into the ledger")
        w = Wiring()
        timeout = w.settings.lease_timeout_seconds
        # The cycle lease keeps a running cycle from saving its older copy of the manifest
        # over this change; the registry lease serialises ledger writes.
        with (
            lease(w.settings.lock_dir, CYCLE, timeout=timeout),
            lease(w.settings.lock_dir, REGISTRY, timeout=timeout),
        ):
            manifest = Manifest(w.contract.data.manifest)
            who = actor()
            manifest.retire(batch_id, reason=reason, who=who)
            w.ledger().append(
                {"event": "batch_retired", "batch": batch_id, "reason": reason, "who": who}
            )
    except ChampionError as exc:
        raise _fail(exc) from None
    typer.secho(
        f"batch {batch_id} retired: it leaves every future training window", fg=typer.colors.GREEN
    )


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Registered version to make the champion.")],
    reason: Annotated[str, typer.Option(help="Why; recorded in the ledger.")],
) -> None:
    """Manually make VERSION the champion (recorded in the ledger)."""
    from champion.training import actions

    try:
        w = Wiring()
        entry = actions.promote(
            version, reason=reason, registry=w.registry(), ledger=w.ledger(), settings=w.settings
        )
    except ChampionError as exc:
        raise _fail(exc) from None
    typer.secho(
        f"champion: v{entry['champion_before']} → v{entry['champion_after']}", fg=typer.colors.GREEN
    )


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why; recorded in the ledger.")],
) -> None:
    """Make `previous` the champion again (a second rollback undoes the first)."""
    from champion.training import actions

    try:
        w = Wiring()
        entry = actions.rollback(
            reason=reason, registry=w.registry(), ledger=w.ledger(), settings=w.settings
        )
    except ChampionError as exc:
        raise _fail(exc) from None
    typer.secho(
        f"champion: v{entry['champion_before']} → v{entry['champion_after']}", fg=typer.colors.GREEN
    )


@app.command()
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
    from champion.training.demo.simulate import SimulationPlan, simulate_batches

    try:
        w = Wiring()
        plan = SimulationPlan(
            batches=batches, rows=rows, drift_at=drift_at, seed=seed, label_noise=noise, fmt=fmt
        )
        paths = simulate_batches(plan, landing_zone=w.contract.data.landing_zone)
    except ChampionError as exc:
        raise _fail(exc) from None
    except ValueError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    for p in paths:
        typer.echo(f"wrote {p}")


@app.command()
def bootstrap() -> None:
    """Prepare a fresh checkout: demo data if the landing zone is empty, a champion if none."""
    from champion.training.cycle import Context, run_cycle
    from champion.training.data import Manifest, pending_files
    from champion.training.demo.simulate import SimulationPlan, simulate_batches

    try:
        w = Wiring()
        landing = w.contract.data.landing_zone
        if not pending_files(landing) and not Manifest(w.contract.data.manifest).batches:
            simulate_batches(
                SimulationPlan(batches=4, rows=1000, drift_at=None, seed=7), landing_zone=landing
            )
            typer.echo(f"wrote 4 demo batches into {landing}")
        registry = w.registry()
        if registry.alias("champion") is not None:
            typer.echo(f"champion v{registry.alias('champion').version} is in place")
            return
        result = run_cycle(
            Context(w.contract, w.settings, registry, w.ledger()), trigger="bootstrap"
        )
    except ChampionError as exc:
        raise _fail(exc) from None
    typer.echo(f"{result.verdict.value}: {result.reason}")
    raise typer.Exit(result.exit_code)


@app.command()
def serve(
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(min=1, help="Service worker processes.")] = 2,
) -> None:
    """Serve the API (BentoML) with the scheduler: one retrain leader across all workers."""
    import shutil
    import sys

    try:
        w = Wiring()
    except ChampionError as exc:
        raise _fail(exc) from None
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
def predict(
    file: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="CSV of feature rows.")],
    url: Annotated[str, typer.Option(help="Service base URL.")] = "http://127.0.0.1:3000",
) -> None:
    """Send the rows of a CSV file to a running service and print its answer."""
    import httpx
    import pandas as pd

    frame = pd.read_csv(file, dtype=str, keep_default_na=False)
    try:
        w = Wiring()
        features = w.contract.features
    except ChampionError as exc:
        raise _fail(exc) from None
    rows = []
    for record in frame.to_dict(orient="records"):
        row: dict[str, Any] = {}
        for name, value in record.items():
            if name not in features:
                continue  # e.g. the target or a timestamp column in a batch file
            if value == "":
                row[name] = None
            elif features[name].type == "numeric":
                try:
                    row[name] = float(value)
                except ValueError:
                    row[name] = value  # let the service name the problem
            else:
                row[name] = value
        rows.append(row)
    try:
        response = httpx.post(f"{url.rstrip('/')}/predict", json={"instances": rows}, timeout=30)
    except httpx.HTTPError as exc:
        typer.secho(f"error: cannot reach {url}: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(response.json(), indent=1))
    raise typer.Exit(0 if response.is_success else 1)


@app.command()
def demo(
    url: Annotated[str, typer.Option(help="Base URL of a running `champion serve`.")] = (
        "http://127.0.0.1:3000"
    ),
    batches: Annotated[int, typer.Option(min=1, help="Batches with the concept change.")] = 3,
) -> None:
    """Send traffic, feed a concept change, and watch a new champion swap in."""
    from champion.training.demo.traffic import run_demo

    try:
        w = Wiring()
    except ChampionError as exc:
        raise _fail(exc) from None
    token = w.settings.admin_token.get_secret_value() if w.settings.admin_token else None
    try:
        promoted = run_demo(
            base=url.rstrip("/"),
            landing_zone=w.contract.data.landing_zone,
            token=token,
            say=typer.echo,
            drifted_batches=batches,
        )
    except TimeoutError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    raise typer.Exit(0 if promoted else 1)


@app.command("drift-report")
def drift_report(
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("drift-report.html"),
    rows: Annotated[int, typer.Option(min=1, help="Live rows to compare.")] = 2000,
) -> None:
    """Write a self-contained HTML drift report for the champion's recent predictions."""
    from champion.monitoring.capture import PredictionLog
    from champion.monitoring.report import render
    from champion.monitoring.watch import Watch

    try:
        w = Wiring()
        registry = w.registry()
        ref = registry.alias("champion")
        if ref is None:
            raise ChampionError("no champion yet: nothing to compare against")
        settings = w.settings.model_copy(update={"drift_window_rows": rows})
        watch = Watch(
            contract=w.contract,
            settings=settings,
            registry=registry,
            prediction_log=PredictionLog(settings.prediction_log_path),
            ledger=w.ledger(),
        )
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
            history=w.ledger().entries(),
        )
    except ChampionError as exc:
        raise _fail(exc) from None
    out.write_text(page, encoding="utf-8")
    typer.echo(
        f"wrote {out} ({report.window_rows} live rows, drift share "
        f"{report.drift_share:.0%}, dataset drift: {report.dataset_drift})"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()

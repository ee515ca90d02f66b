"""Benchmark the champion service against its baselines; write JSON and a Markdown report.

    python -m benchmarks.run [--quick] [--only stack|openloop] [--out benchmarks/results.json]
                             [--markdown docs/performance.md]

One run builds its own temporary project (demo data from `champion simulate`) and registers,
with `training.cycle`: the default champion, the one the shipped contract's own search picks on
the demo data (only its fold count reduced, for time), which every primary row measures; and two
secondary versions from contracts whose search space admits one candidate each, a random forest
and a histogram gradient boosting (the swap's target). It measures:

1. single-row serving at 1, 8 and 32 connections (wrk + a Lua POST script; a Python
   asyncio + httpx generator only when wrk cannot be installed), load generator pinned to one
   core and server to the other, for: the champion service (1 worker, scheduler off, capture
   on), a BentoML no-op service (the framework's ceiling), a naive BentoML service
   (skops + predict_proba per request) and `mlflow models serve` on the same version; the
   secondary versions at 32 connections only; the champion's Open Inference Protocol route
   (POST /v2/models/<name>/infer) at 32; with every row the worker processes' CPU time per
   answered request. Then, with the baselines still up: the no-op under the lean BentoML
   configuration champion ships (`champion.service.stack.SERVICE_CONFIG`, applied through a
   BENTOML_CONFIG file), head-to-head rounds, open-loop latency (`benchmarks.openloop`: 25, 50
   and 75 % of the default no-op's 32-connection req/s offered at fixed times to the default
   no-op, the lean no-op and the champion) and the "BentoML stack" ladder (the no-op at 32
   connections from BentoML's defaults to the lean configuration, one setting at a time);
2. 1,000-row requests against the in-process `pipeline.predict_proba` on the same rows;
3. capture on vs off (interleaved, two servers) and the drift evaluation time of 30 numeric
   features over a 10,000-row window;
4. a champion swap (training.actions.promote, default -> gbt) under 32 connections;
5. cold start (process start to /readyz 200) and resident memory per worker;
6. one `champion retrain` with the shipped contract (bayes) against an exhaustive grid over
   the same space and folds, the two at once, each pinned to a core of its own.

Every section's start and end is logged and its wall time kept (meta.sections).

Every server is started in its own process group and stopped in a `finally`. Nothing here
asserts a timing: targets are reported as met / not met.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from benchmarks.load import LoadGen, LoadResult, ensure_wrk, wrk_version
from benchmarks.project import (
    FORCED_FAMILY,
    ROOT,
    BenchProject,
    champion_exe,
    default_raw,
    demo_rows,
    forced_raw,
    grid_raw,
    shipped_raw,
)
from benchmarks.report import dig, evaluate_targets, render_markdown
from benchmarks.servers import (
    Server,
    bentoml_config_file,
    cpu_used,
    free_port,
    pin_prefix,
    serving,
    stop,
    worker_cpu,
    worker_memory,
)


@dataclass(frozen=True)
class Plan:
    quick: bool
    seconds: float  # per concurrency level
    levels: tuple[int, ...]
    batch_seconds: float
    batch_connections: int
    capture_rounds: int  # interleaved capture-on / capture-off runs of `seconds` each
    swap: bool
    swap_seconds: float  # one continuous run at 32 connections ...
    swap_lead_seconds: float  # ... with the promotion this far into it
    settle_seconds: float  # pause between runs: the server drains what the last run left
    h2h_rounds: int  # head to head: all servers up, 32-connection runs interleaved by round
    h2h_seconds: float
    services: tuple[str, ...]
    secondary: bool  # serve the gbt and forest versions after the swap ...
    secondary_levels: tuple[int, ...]  # ... at these connection counts
    retrain: bool
    grid: bool
    demo_batches: int
    demo_rows: int
    setup_folds: int
    drift_repeats: int
    in_process_seconds: float
    warmup_seconds: float
    grid_timeout: float
    v2: bool  # the champion's /v2/models/<name>/infer at 32 connections
    openloop_fractions: tuple[float, ...]  # of the default no-op's 32-connection req/s
    openloop_seconds: float  # per server and rate
    stack_seconds: float  # per configuration of the BentoML stack ladder
    budget_seconds: float | None  # the whole run; bounds the grid search's timeout


QUICK = Plan(
    quick=True,
    seconds=1,
    levels=(32,),
    batch_seconds=1,
    batch_connections=4,
    capture_rounds=0,
    swap=True,
    swap_seconds=5,
    swap_lead_seconds=1.5,
    settle_seconds=0.5,
    h2h_rounds=0,
    h2h_seconds=0,
    services=("champion", "noop"),
    secondary=True,
    secondary_levels=(32,),
    retrain=False,
    grid=False,
    demo_batches=2,
    demo_rows=600,
    setup_folds=2,
    drift_repeats=3,
    in_process_seconds=1,
    warmup_seconds=0,
    grid_timeout=0,
    v2=True,
    openloop_fractions=(0.5,),
    openloop_seconds=2,
    stack_seconds=1,
    budget_seconds=None,
)

# Under 15 minutes in all (meta.sections has each section's seconds). For the open-loop and
# stack sections: sweeps 8 -> 6 s, settle 1.5 -> 0.75 s (32 requests in flight drain in
# well under 0.1 s), head-to-head runs 5 -> 4 s, in-process cases 3 -> 2 s, the two retrain
# searches at once on the two cores, and the grid's timeout cut to what the budget leaves.
FULL = Plan(
    quick=False,
    seconds=6,
    levels=(1, 8, 32),
    batch_seconds=10,
    batch_connections=4,
    capture_rounds=3,
    swap=True,
    swap_seconds=15,
    swap_lead_seconds=5,
    settle_seconds=0.75,
    h2h_rounds=3,
    h2h_seconds=4,
    services=("champion", "noop", "naive", "mlflow"),
    secondary=True,
    secondary_levels=(32,),
    retrain=True,
    grid=True,
    demo_batches=4,
    demo_rows=1000,
    setup_folds=3,
    drift_repeats=7,
    in_process_seconds=4,
    warmup_seconds=1,
    grid_timeout=480,
    v2=True,
    openloop_fractions=(0.25, 0.5, 0.75),
    openloop_seconds=12,
    stack_seconds=6,
    budget_seconds=14.5 * 60,
)

# Above the 32 connections of the ladder's runs: the step measures the middleware, not 503s.
MAX_CONCURRENCY = 64


def stack_ladder() -> list[tuple[str, str, dict[str, Any] | None]]:
    """The no-op's BentoML configurations, cumulative from BentoML's defaults (None) to the
    lean one champion ships, then that plus `traffic.max_concurrency`: (key, label, config)."""
    from champion.service.stack import SERVICE_CONFIG

    lean = copy.deepcopy(SERVICE_CONFIG)
    access = {"logging": lean["logging"]}
    metrics = access | {"metrics": lean["metrics"]}
    capped = copy.deepcopy(lean)
    capped["traffic"] = dict(lean.get("traffic") or {}, max_concurrency=MAX_CONCURRENCY)
    return [
        ("default", "BentoML defaults (as the no-op ships)", None),
        ("access_log_off", "access log off", access),
        ("metrics_off", "+ BentoML metrics off", metrics),
        ("lean", "+ tracing excluded for hot paths (= champion's lean config)", lean),
        (
            "lean_max_concurrency",
            f"lean + traffic.max_concurrency={MAX_CONCURRENCY}",
            capped,
        ),
    ]


def say(message: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


class Sections:
    """Wall time per section of the run, each start and end logged."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        say(f"== {name}: start")
        t0 = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - t0
            self.seconds[name] = round(self.seconds.get(name, 0.0) + took, 1)
            say(f"== {name}: end ({took:.1f} s)")


# -- machine facts --------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def machine() -> dict[str, Any]:
    mem_mb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_mb = round(int(line.split()[1]) / 1024)
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "nproc": int(nproc) if nproc.isdigit() else os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_mb": mem_mb,
        "kernel": platform.release(),
        "loadavg_start": loadavg(),
    }


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    # Everything a figure here depends on: serving, compiling, and the search's proposals.
    names = ("bentoml", "mlflow", "scikit-learn", "numpy", "pandas", "skops", "fastapi")
    for name in (*names, "onnxruntime", "skl2onnx", "optuna", "uvicorn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


# -- the run --------------------------------------------------------------------------------------


class Bench:
    def __init__(
        self,
        plan: Plan,
        *,
        work: Path,
        loadgen: LoadGen,
        cpus: dict[str, Any],
        clock: Sections | None = None,
        started: float | None = None,
    ):
        self.plan = plan
        self.clock = clock or Sections()
        self.started = time.monotonic() if started is None else started
        self.work = work
        self.loadgen = loadgen
        self.cpus = cpus
        self.project = BenchProject(work / "project")
        self.logs = work / "logs"
        self.versions: dict[str, str] = {}  # scenario (default, forest, gbt) -> version
        self.models: dict[str, dict[str, Any]] = {}  # scenario -> version, family, runtime
        self.bodies: dict[str, Path] = {}
        self.rows: list[dict[str, Any]] = []

    # -- setup --------------------------------------------------------------------------------

    def setup(self) -> dict[str, Any]:
        plan, project = self.plan, self.project
        t0 = time.monotonic()
        # The default champion: the shipped contract's own search on the demo data, in a fresh
        # project (no champion yet), as a user's first `champion retrain` gets it.
        raw = default_raw(folds=plan.setup_folds)
        project.write_contract(raw)
        project.simulate(batches=plan.demo_batches, rows=plan.demo_rows)
        say(
            f"demo data: {plan.demo_batches} batches x {plan.demo_rows} rows; registering the "
            f"default champion (the shipped contract's search, {plan.setup_folds} folds)"
        )
        default = project.cycle()
        if not default.version:
            raise RuntimeError(f"the default champion was not registered: {default.reason}")
        self.versions["default"] = default.version
        registry = project.registry()
        self.models["default"] = describe(registry, default.version) | {
            "verdict": default.verdict.value,
            "trials": default.trials,
            "cycle_seconds": round(default.seconds, 1),
            "search": {k: raw["search"][k] for k in ("strategy", "max_trials", "max_seconds")},
            "folds": raw["cv"]["folds"],
            "shipped_folds": shipped_raw()["cv"]["folds"],
        }
        say(
            f"  default champion v{default.version}: {self.models['default']['label']}, "
            f"serving runtime {self.models['default']['runtime']} ({default.trials} trials, "
            f"{default.seconds:.0f}s, {default.verdict.value})"
        )
        if plan.secondary or plan.swap:
            self.register_forced(registry)
            project.write_contract(raw)
        project.promote(self.versions["default"], reason="benchmark: the default champion")
        contract = project.contract()
        self.write_bodies()
        return {
            "seconds": round(time.monotonic() - t0, 1),
            "demo_batches": plan.demo_batches,
            "extra_batches_for_secondary": len(self.versions) - 1,
            "rows_per_batch": plan.demo_rows,
            "folds": plan.setup_folds,
            "model_name": contract.project.name,
            "models": self.models,
            "default_champion": self.models["default"],
            "champion": project.champion_version(),
            "request_row": self.rows[0],
        }

    def write_bodies(self) -> None:
        """The request bodies, from the first demo rows: /predict (one row, 1,000 rows), mlflow's
        dataframe_records, and the v2 infer form (one tensor per contract feature)."""
        contract = self.project.contract()
        self.rows = demo_rows(self.project.demo_frame(), contract, 1000)
        row = self.rows[0]
        v2_inputs = [
            {
                "name": name,
                "shape": [1],
                "datatype": "BYTES" if feature.type == "categorical" else "FP64",
                "data": [row[name]],
            }
            for name, feature in contract.features.items()
        ]
        bodies = self.work / "bodies"
        bodies.mkdir(parents=True, exist_ok=True)
        for name, payload in {
            "one": {"instances": self.rows[:1]},
            "batch": {"instances": self.rows[:1000]},
            "mlflow_one": {"dataframe_records": self.rows[:1]},
            "v2_one": {"inputs": v2_inputs},
        }.items():
            path = bodies / f"{name}.json"
            path.write_text(json.dumps(payload), encoding="utf-8")
            self.bodies[name] = path

    def register_forced(self, registry: Any) -> None:
        """The secondary versions, forest and gbt, each on one more demo batch.

        A cycle's search scores the champion's own candidate first when its family is in the
        space; with a one-candidate space that trial would be the only one. So each forced
        cycle runs while the champion is of another family (the order and a promotion see to
        it), and registers the forced candidate, whatever its gate verdict.
        """
        plan, project = self.plan, self.project
        order = ["forest", "gbt"]
        if self.models["default"]["family"] == FORCED_FAMILY["forest"]:
            order.reverse()
        for i, scenario in enumerate(order):
            family = FORCED_FAMILY[scenario]
            current = project.champion_version()
            if current is not None and describe(registry, current)["family"] == family:
                other = next(
                    (m["version"] for m in self.models.values() if m["family"] != family), None
                )
                if other is None:
                    raise RuntimeError(f"no version of another family than {family} to promote")
                project.promote(other, reason=f"benchmark: a {family} search starts clean")
            project.simulate(batches=1, rows=plan.demo_rows, seed=8 + i)
            project.write_contract(forced_raw(scenario, folds=plan.setup_folds))
            say(f"registering {scenario} (forced {family}, one more batch)")
            result = project.cycle()
            if not result.version:
                raise RuntimeError(f"the {scenario} version was not registered: {result.reason}")
            self.versions[scenario] = result.version
            self.models[scenario] = describe(registry, result.version) | {
                "verdict": result.verdict.value
            }
            if self.models[scenario]["family"] != family:
                raise RuntimeError(f"{scenario} registered {self.models[scenario]['label']}")

    # -- servers ------------------------------------------------------------------------------

    def _bentoml(self) -> str:
        return str(Path(sys.executable).with_name("bentoml"))

    def champion_server(self, name: str, **env: str) -> contextlib.AbstractContextManager[Server]:
        port = free_port()
        # Shipped settings (alias poll every 10 s) unless a run asks otherwise: the swap run
        # polls every second so the promotion lands inside its window.
        full_env = self.project.env(
            BENTOML_CONFIG_OPTIONS="services.champion.workers=1",
            CHAMPION_SCHEDULER="false",
            **env,
        )
        return serving(
            name,
            [
                self._bentoml(),
                "serve",
                "champion.service.app:Champion",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            port=port,
            cwd=self.project.root,
            env=full_env,
            log_dir=self.logs,
            ready_path="/readyz",
            cpu=self.cpus["server"],
        )

    def bento_baseline(self, name: str, target: str, service_name: str, **env: str) -> Any:
        port = free_port()
        full_env = self.project.env(
            BENTOML_CONFIG_OPTIONS=f"services.{service_name}.workers=1", **env
        )
        return serving(
            name,
            [
                self._bentoml(),
                "serve",
                target,
                "--working-dir",
                str(ROOT),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            port=port,
            cwd=ROOT,
            env=full_env,
            log_dir=self.logs,
            ready_path="/readyz",
            cpu=self.cpus["server"],
        )

    def mlflow_server(self, model_version: str) -> Any:
        port = free_port()
        bindir = str(Path(sys.executable).parent)
        env = self.project.env(
            MLFLOW_ALLOW_PICKLE_DESERIALIZATION="true",  # our own skops file, trusted here
            PATH=bindir + os.pathsep + os.environ.get("PATH", ""),
        )
        name = self.project.contract().project.name
        return serving(
            "mlflow",
            [
                str(Path(sys.executable).with_name("mlflow")),
                "models",
                "serve",
                "-m",
                f"models:/{name}/{model_version}",
                "--env-manager",
                "local",
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
                "--workers",
                "1",
            ],
            port=port,
            cwd=self.project.root,
            env=env,
            log_dir=self.logs,
            ready_path="/ping",
            cpu=self.cpus["server"],
        )

    # -- load helpers -------------------------------------------------------------------------

    def warm(self, url: str, body: Path) -> None:
        import httpx

        content = body.read_bytes()
        with httpx.Client(timeout=30) as client:
            for _ in range(10):
                r = client.post(url, content=content, headers={"Content-Type": "application/json"})
                if r.status_code != 200:
                    raise RuntimeError(f"warm-up POST {url}: {r.status_code} {r.text[:300]}")
        if self.plan.warmup_seconds:
            self.loadgen.run(url, body, connections=8, seconds=self.plan.warmup_seconds)

    def load(
        self, server: Server, url: str, body: Path, *, connections: int, seconds: float
    ) -> tuple[LoadResult, dict[str, Any]]:
        """One load run, and the CPU time the server's workers spent on it (user + system,
        summed over the worker processes), per answered request."""
        before = worker_cpu(server)
        r = self.loadgen.run(url, body, connections=connections, seconds=seconds)
        return r, cpu_figures(cpu_used(before, worker_cpu(server)), r.ok)

    def sweep(
        self, server: Server, url: str, body: Path, levels: tuple[int, ...] | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for c in levels or self.plan.levels:
            time.sleep(self.plan.settle_seconds)
            r, cpu = self.load(server, url, body, connections=c, seconds=self.plan.seconds)
            say(
                f"  {c:>2} conns: {r.rps:8.1f} req/s  p50 {r.p50_ms} ms  p99 {r.p99_ms} ms  "
                f"CPU {cpu['cpu_ms_per_request']} ms/req  errors {r.errors}"
            )
            out[str(c)] = r.to_dict() | cpu
        return out

    def batch_load(self, server: Server, url: str) -> dict[str, Any]:
        time.sleep(self.plan.settle_seconds)
        r, cpu = self.load(
            server,
            url,
            self.bodies["batch"],
            connections=self.plan.batch_connections,
            seconds=self.plan.batch_seconds,
        )
        d = r.to_dict() | cpu
        d["rows_per_request"] = 1000
        d["rows_per_s"] = round(r.ok * 1000 / r.seconds, 1) if r.seconds else 0.0
        say(f"  batch: {d['rows_per_s']:.0f} rows/s ({r.rps:.1f} req/s, errors {r.errors})")
        return d

    # -- 1, 2, 3, 4, 5 on the champion ----------------------------------------------------------

    def champion_suite(self, out: dict[str, Any]) -> None:
        """Fills `out` as it goes, so a failure late in the suite keeps what was measured."""
        plan = self.plan
        default = self.models["default"]
        clock = self.clock
        say(f"champion service (default champion: {default['label']}, capture on)")
        # One server for all of it; each part timed as a section of its own.
        with contextlib.ExitStack() as serving_a:
            with clock("champion: start, single row, v2, batch"):
                a = serving_a.enter_context(self.champion_server("champion"))
                pid = a.ready_body.get("pid") if isinstance(a.ready_body, dict) else None
                out["cold_start"] = {
                    "seconds": round(a.ready_seconds or 0, 3),
                    "ready_body": a.ready_body,
                    "memory_at_ready": worker_memory(a, pid),
                }
                say(f"  ready in {a.ready_seconds:.2f}s")
                step(out, "runtime", lambda: self.runtime(a))
                url = f"{a.base}/predict"
                self.warm(url, self.bodies["one"])
                step(out, "single_row", lambda: self.sweep(a, url, self.bodies["one"]))
                if plan.v2:
                    step(out, "v2_single_row", lambda: self.v2_row(a))
                step(out, "batch", lambda: self.batch_load(a, url))
                out["memory_after_load"] = worker_memory(a, pid)  # the default champion's
            # The in-process baseline right away, on the same (now idle) core as the server.
            time.sleep(plan.settle_seconds)
            with clock("champion: in process"):
                step(out, "in_process", self.in_process)
            if plan.capture_rounds:
                with clock("champion: capture on/off"):
                    step(out, "capture", lambda: self.capture_compare(a))
            if plan.swap and "gbt" in self.versions:
                say("champion service for the swap (alias poll every 1 s)")
                with (
                    clock("champion: swap"),
                    self.champion_server("champion-swap", CHAMPION_POLL_SECONDS="1") as s,
                ):
                    self.warm(f"{s.base}/predict", self.bodies["one"])
                    step(out, "swap", lambda: self.swap(s))
            else:
                out["swap"] = {"skipped": "no second version registered"}
            if plan.secondary:
                # gbt first: the swap left it the champion. The server follows the alias.
                with clock("champion: secondary rows"):
                    for scenario in ("gbt", "forest"):
                        if scenario in self.versions and a.proc.poll() is None:
                            run = functools.partial(self.secondary, a, scenario)
                            step(out, f"{scenario}_single_row", run)

    def v2_row(self, server: Server) -> dict[str, Any]:
        """POST /v2/models/<name>/infer (Open Inference Protocol), one row, 32 connections."""
        name = self.project.contract().project.name
        url = f"{server.base}/v2/models/{name}/infer"
        say(f"  v2 infer: {url.removeprefix(server.base)}")
        self.warm(url, self.bodies["v2_one"])
        levels = self.sweep(server, url, self.bodies["v2_one"], levels=(32,))
        for row in levels.values():
            row["path"] = f"/v2/models/{name}/infer"
        return {"levels": levels}

    def secondary(self, server: Server, scenario: str) -> dict[str, Any]:
        """A secondary version on the same champion server: promoted, awaited, then loaded."""
        version = self.versions[scenario]
        say(f"champion service ({scenario}, secondary: {self.models[scenario]['label']})")
        self.project.promote(version, reason=f"benchmark: {scenario} (secondary rows)")
        ready = self.wait_version(server, version)
        url = f"{server.base}/predict"
        self.warm(url, self.bodies["one"])
        levels = self.sweep(server, url, self.bodies["one"], levels=self.plan.secondary_levels)
        return {"version": version, "ready": ready, "levels": levels}

    def runtime(self, server: Server) -> dict[str, Any]:
        """What serves in the champion worker: runtime, its note, event loop, HTTP parser."""
        import httpx

        model = httpx.get(f"{server.base}/model", timeout=10).json()
        ready = httpx.get(f"{server.base}/readyz", timeout=10).json()
        out = {
            "runtime": model.get("runtime"),
            "note": model.get("runtime_note"),
            "server": ready.get("server"),
        }
        say(f"  runtime {out['runtime']} ({out['note']}); {out['server']}")
        return out

    def wait_version(self, server: Server, version: str, timeout: float = 60) -> dict[str, Any]:
        """Until the server answers with `version` (it follows the alias at its own poll)."""
        import httpx

        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if httpx.get(f"{server.base}/readyz", timeout=5).json().get("model_version") == str(
                    version
                ):
                    return {"version": version, "seconds": round(time.monotonic() - t0, 2)}
            time.sleep(0.5)
        raise RuntimeError(f"{server.name} did not load v{version} within {timeout:.0f}s")

    def capture_compare(self, a: Server) -> dict[str, Any]:
        """Capture on (server a) vs off (server b), 32 connections, runs interleaved a b a b."""
        say("capture off: second champion server, interleaved runs at 32 connections")
        with self.champion_server("champion-nocapture", CHAMPION_CAPTURE_SAMPLE_RATE="0") as b:
            self.warm(f"{b.base}/predict", self.bodies["one"])
            on: list[tuple[LoadResult, dict[str, Any]]] = []
            off: list[tuple[LoadResult, dict[str, Any]]] = []
            for _ in range(self.plan.capture_rounds):
                for server, into in ((a, on), (b, off)):
                    time.sleep(self.plan.settle_seconds)
                    into.append(
                        self.load(
                            server,
                            f"{server.base}/predict",
                            self.bodies["one"],
                            connections=32,
                            seconds=self.plan.seconds / 2,
                        )
                    )
            cold_b = b.ready_seconds

        def agg(measured: list[tuple[LoadResult, dict[str, Any]]]) -> dict[str, Any]:
            runs = [r for r, _ in measured]
            secs = sum(r.seconds for r in runs)
            cpu = sum(c["worker_cpu_seconds"] for _, c in measured)
            return {
                "rps": round(sum(r.requests for r in runs) / secs, 3) if secs else 0.0,
                "p99_ms_median": statistics.median(r.p99_ms or 0 for r in runs),
                "errors": sum(r.errors for r in runs),
                **cpu_figures(cpu, sum(r.ok for r in runs)),
                "runs": [r.to_dict() | c for r, c in measured],
            }

        res_on, res_off = agg(on), agg(off)
        cost = 1 - res_on["rps"] / res_off["rps"] if res_off["rps"] else None
        # Run-to-run spread of one configuration: differences below it are noise.
        spreads = [
            (max(r.rps for r in runs) - min(r.rps for r in runs))
            / statistics.mean(r.rps for r in runs)
            for runs in ([r for r, _ in on], [r for r, _ in off])
            if len(runs) > 1 and statistics.mean(r.rps for r in runs) > 0
        ]
        say(
            f"  capture on {res_on['rps']:.1f} req/s ({res_on['cpu_ms_per_request']} ms CPU/req), "
            f"off {res_off['rps']:.1f} req/s ({res_off['cpu_ms_per_request']} ms CPU/req)"
        )
        return {
            "connections": 32,
            "capture_on": res_on,
            "capture_off": res_off,
            "throughput_cost": None if cost is None else round(cost, 4),
            "same_config_spread": round(max(spreads), 4) if spreads else None,
            "capture_off_cold_start_seconds": round(cold_b or 0, 3),
        }

    def swap(self, a: Server) -> dict[str, Any]:
        """Promote gbt over the default champion during one continuous 32-connection run that
        records every request.

        Windows on the run's own timeline: steady (after a 1 s ramp, before the promotion),
        swap (from the promotion call until 1 s after the last answer from the old version),
        after (the rest).
        """
        plan = self.plan
        old, new = self.versions["default"], self.versions["gbt"]
        url = f"{a.base}/predict"
        say(f"swap under load: v{old} -> v{new} at 32 connections, {plan.swap_seconds:g}s run")
        time.sleep(plan.settle_seconds)
        promo: dict[str, Any] = {}
        go = threading.Event()

        def promote() -> None:
            if not go.wait(timeout=plan.swap_lead_seconds + 30):
                return
            time.sleep(plan.swap_lead_seconds)
            promo["started"] = time.monotonic()
            try:
                self.project.promote(new, reason="benchmark: swap under load")
            except Exception as exc:  # reported, not raised: the measurement goes on
                promo["error"] = repr(exc)
            promo["ended"] = time.monotonic()

        thread = threading.Thread(target=promote, daemon=True)
        thread.start()
        go.set()
        run = self.loadgen.run(
            url,
            self.bodies["one"],
            connections=32,
            seconds=plan.swap_seconds,
            record=self.work / "swap-records.tsv",
        )
        thread.join(timeout=60)
        records = run.records or []
        import httpx

        served: dict[str, Any] = {}
        with contextlib.suppress(httpx.HTTPError, ValueError):
            served = httpx.get(f"{a.base}/readyz", timeout=5).json()
        if not records or "started" not in promo:
            return {"error": "no records or no promotion", "run": run.to_dict(), **promo}
        t0 = records[0][0]
        p0 = promo["started"]
        ends_old = [s + lat / 1000 for s, lat, _, v in records if v == old]
        ends_new = [s + lat / 1000 for s, lat, _, v in records if v == new]
        last_old = max(ends_old, default=p0)
        first_new = min(ends_new, default=None)
        swap_end = max(last_old, first_new or p0) + 1.0

        def window(lo: float, hi: float) -> dict[str, Any]:
            sel = [r for r in records if lo <= r[0] + r[1] / 1000 < hi]
            return summarize(sel, hi - lo)

        end = max(s + lat / 1000 for s, lat, _, _ in records)
        steady = window(t0 + 1.0, p0)
        during = window(p0, swap_end)
        after = window(swap_end, end)
        socket_errors = sum(
            v for k, v in run.error_kinds.items() if k in ("connect", "read", "write", "timeout")
        )
        failed = sum(1 for r in records if r[2] != 200) + socket_errors
        say(
            f"  swap: {failed} failed of {run.requests}; p99 steady {steady['p99_ms']} ms, "
            f"during {during['p99_ms']} ms, after {after['p99_ms']} ms; "
            f"serving v{served.get('model_version')}"
        )
        return {
            "connections": 32,
            "from_version": old,
            "to_version": new,
            "run_seconds": round(run.seconds, 2),
            "promote_at_s": round(p0 - t0, 3),
            "promote_seconds": round(promo["ended"] - p0, 3) if "ended" in promo else None,
            "promote_error": promo.get("error"),
            "first_new_answer_s": None if first_new is None else round(first_new - p0, 3),
            "last_old_answer_s": round(last_old - p0, 3),
            "windows": {"steady": steady, "swap": during, "after": after},
            "whole_run": run.to_dict(),
            "swap_p99_ms": during["p99_ms"],
            "steady_p99_ms": steady["p99_ms"],
            "errors": failed,
            "requests": run.requests,
            "serving_after": served.get("model_version"),
            "timeline": timeline(records, t0, p0),
        }

    # -- baselines, head to head, open loop, BentoML stack ----------------------------------------

    def noop_server(self, name: str, config: dict[str, Any] | None) -> Any:
        """The no-op under BentoML's defaults (None) or `config` (its `bench_noop` section of a
        BENTOML_CONFIG file written into the run's work folder)."""
        env: dict[str, str] = {}
        if config is not None:
            path = self.work / "bentoml-config" / f"{name}.yaml"
            env["BENTOML_CONFIG"] = str(bentoml_config_file(path, "bench_noop", config))
        return self.bento_baseline(name, "benchmarks.noop_service:Noop", "bench_noop", **env)

    def server_for(self, kind: str) -> tuple[Any, str, Path]:
        """(context manager, request path, body file) for one kind of server."""
        if kind == "champion":
            return self.champion_server("champion"), "/predict", self.bodies["one"]
        if kind == "noop":
            return self.noop_server("noop", None), "/predict", self.bodies["one"]
        if kind == "noop_lean":
            lean = next(c for k, _, c in stack_ladder() if k == "lean")
            return self.noop_server("noop-lean", lean), "/predict", self.bodies["one"]
        if kind == "naive":
            model = self.project.load(self.versions["default"])
            ctx = self.bento_baseline(
                "naive",
                "benchmarks.naive_service:Naive",
                "bench_naive",
                BENCH_MODEL_PATH=str(model.local_dir / "model.skops"),
            )
            return ctx, "/predict", self.bodies["one"]
        if kind == "mlflow":
            ctx = self.mlflow_server(self.versions["default"])
            return ctx, "/invocations", self.bodies["mlflow_one"]
        raise ValueError(kind)

    def start(
        self, stack: contextlib.ExitStack, kind: str, into: dict[str, Any]
    ) -> tuple[Server, str, Path] | None:
        """Start one server into `stack`, warm it, record its cold start in `into`; a server
        that fails to start is recorded there and the run goes on without it."""
        try:
            ctx, path, body = self.server_for(kind)
            say(f"{kind} service")
            server = stack.enter_context(ctx)
            into["cold_start"] = {
                "seconds": round(server.ready_seconds or 0, 3),
                "memory_at_ready": worker_memory(server),
            }
            say(f"  ready in {server.ready_seconds:.2f}s")
            self.warm(f"{server.base}{path}", body)
        except Exception as exc:
            say(f"{kind} failed to start: {exc!r}")
            into["error"] = f"{type(exc).__name__}: {exc}"[:3000]
            return None
        return server, f"{server.base}{path}", body

    def stage(self, results: dict[str, Any], baselines: dict[str, Any]) -> None:
        """The baselines' sweeps, then with them still up on the server core: head to head,
        open loop and the BentoML stack ladder. Each server starts once (sequentially, so each
        cold start has the core to itself); what no later part needs is stopped first."""
        plan, clock = self.plan, self.clock
        kinds = [k for k in plan.services if k != "champion"]
        up: dict[str, tuple[Server, str, Path]] = {}
        with contextlib.ExitStack() as noops:
            with contextlib.ExitStack() as champ:
                with contextlib.ExitStack() as rest:
                    for kind in kinds:
                        with clock(f"baseline: {kind}"):
                            into = baselines.setdefault(kind, {})
                            target = self.start(noops if kind == "noop" else rest, kind, into)
                            if target is None:
                                continue
                            up[kind] = target
                            step(into, "single_row", functools.partial(self.sweep, *up[kind]))
                            into["memory_after_load"] = worker_memory(up[kind][0])
                    with clock("head to head: start the lean no-op and the champion"):
                        lean = self.start(noops, "noop_lean", baselines.setdefault("noop_lean", {}))
                        if lean is not None:
                            up["noop_lean"] = lean
                        if "champion" in plan.services:
                            try:  # the swap and the secondary rows left another version serving
                                self.project.promote(
                                    self.versions["default"], reason="benchmark: head to head"
                                )
                                champion = self.start(champ, "champion", {})
                            except Exception as exc:
                                say(f"champion for head to head: {exc!r}")
                                champion = None
                            if champion is not None:
                                up["champion"] = champion
                    if plan.h2h_rounds:
                        with clock("head to head"):
                            step(results, "head_to_head", lambda: self.head_to_head(up))
                    else:
                        results["head_to_head"] = {
                            "skipped": "quick mode: the sweeps' figures are used"
                        }
                for kind in kinds:
                    if kind != "noop":
                        up.pop(kind, None)  # stopped with `rest`
                with clock("open loop"):
                    step(results, "open_loop", lambda: self.open_loop(up, results, baselines))
            up.pop("champion", None)
            with clock("BentoML stack"):
                step(results, "stack", lambda: self.stack(up))

    def only(self, section: str, results: dict[str, Any], baselines: dict[str, Any]) -> None:
        """One section alone, for a short check: `stack` (the no-op ladder; demo rows only, no
        model) or `openloop` (the default champion only, no secondary versions; the default
        no-op's capacity from one 32-connection run)."""
        with pinned(self.cpus["load"]), contextlib.ExitStack() as stack:
            up: dict[str, tuple[Server, str, Path]] = {}
            if section == "stack":
                with self.clock("setup (demo rows only)"):
                    self.project.write_contract(default_raw(folds=self.plan.setup_folds))
                    self.project.simulate(batches=1, rows=self.plan.demo_rows)
                    self.write_bodies()
                for kind in ("noop", "noop_lean"):
                    if (
                        target := self.start(stack, kind, baselines.setdefault(kind, {}))
                    ) is not None:
                        up[kind] = target
                with self.clock("BentoML stack"):
                    step(results, "stack", lambda: self.stack(up))
                return
            if section != "openloop":
                raise ValueError(section)
            with self.clock("setup"):
                results["setup"] = self.setup()
            for kind in ("noop", "noop_lean", "champion"):
                if (target := self.start(stack, kind, baselines.setdefault(kind, {}))) is not None:
                    up[kind] = target
            if "noop" in up:
                r, cpu = self.load(*up["noop"], connections=32, seconds=self.plan.seconds)
                baselines["noop"]["single_row"] = {"32": r.to_dict() | cpu}
                say(f"  default no-op at 32 connections: {r.rps:.0f} req/s")
            with self.clock("open loop"):
                step(results, "open_loop", lambda: self.open_loop(up, results, baselines))

    def head_to_head(self, up: dict[str, tuple[Server, str, Path]]) -> dict[str, Any]:
        """Every server up at once on the server core; 32-connection runs interleaved by round.

        A machine whose load drifts over minutes biases sweeps taken minutes apart; here each
        round runs every service back to back (order rotated), so the ratios the targets use
        compare like with like.
        """
        plan = self.plan
        # The champion, started last, comes last in the first round: its worker's start-up
        # work is behind it by then.
        order = [k for k in plan.services if k != "champion"] + ["noop_lean", "champion"]
        kinds = [k for k in order if k in up]
        if "champion" in up:
            import httpx

            ready = httpx.get(f"{up['champion'][0].base}/readyz").json()
            if ready.get("model_version") != self.versions["default"]:
                raise RuntimeError(f"champion serves {ready}, not the default champion")
        say(f"head to head at 32 connections: {', '.join(kinds)} ({plan.h2h_rounds} rounds)")
        runs: dict[str, list[tuple[LoadResult, dict[str, Any]]]] = {k: [] for k in kinds}
        for r in range(plan.h2h_rounds):
            order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
            for kind in order:
                time.sleep(plan.settle_seconds)
                server, url, body = up[kind]
                runs[kind].append(
                    self.load(server, url, body, connections=32, seconds=plan.h2h_seconds)
                )
        out: dict[str, Any] = {"connections": 32, "rounds": plan.h2h_rounds}
        for kind, measured in runs.items():
            rs = [x for x, _ in measured]
            secs = sum(x.seconds for x in rs)
            cpu = sum(c["worker_cpu_seconds"] for _, c in measured)
            out[kind] = {
                "rps": round(sum(x.requests for x in rs) / secs, 3) if secs else None,
                "p99_ms_median": statistics.median(x.p99_ms or 0 for x in rs),
                "errors": sum(x.errors for x in rs),
                **cpu_figures(cpu, sum(x.ok for x in rs)),
                "runs_rps": [round(x.rps, 2) for x in rs],
                "runs_cpu_ms_per_request": [c["cpu_ms_per_request"] for _, c in measured],
            }
            say(
                f"  {kind}: {out[kind]['rps']} req/s, {out[kind]['cpu_ms_per_request']} ms CPU/req "
                f"(runs {out[kind]['runs_rps']})"
            )
        return out

    def capacity(
        self, results: dict[str, Any], baselines: dict[str, Any]
    ) -> tuple[float | None, str]:
        """The default no-op's closed-loop req/s at 32 connections in this run."""
        h2h = dig(results, "head_to_head", "noop", "rps")
        if h2h:
            return float(h2h), "head to head, default no-op, 32 connections"
        sweep = dig(baselines, "noop", "single_row", "32", "rps")
        if sweep:
            return float(sweep), "sweep, default no-op, 32 connections"
        return None, "not measured"

    def open_loop(
        self,
        up: dict[str, tuple[Server, str, Path]],
        results: dict[str, Any],
        baselines: dict[str, Any],
    ) -> dict[str, Any]:
        """Fixed request rates (fractions of the default no-op's capacity) offered open-loop to
        the default no-op, the lean no-op and the champion, servers rotated at each rate."""
        plan = self.plan
        capacity, source = self.capacity(results, baselines)
        if not capacity:
            raise RuntimeError("no capacity figure for the default no-op")
        kinds = [k for k in ("noop", "noop_lean", "champion") if k in up]
        out: dict[str, Any] = {
            "capacity_rps": round(capacity, 2),
            "capacity_source": source,
            "seconds": plan.openloop_seconds,
            "fractions": list(plan.openloop_fractions),
            "generator": "benchmarks.openloop (asyncio"
            + (" + uvloop" if _has("uvloop") else "")
            + ", HTTP/1.1 keep-alive pool up to 256 connections)",
            "servers": {k: {} for k in kinds},
        }
        say(f"open loop: capacity {capacity:.0f} req/s ({source}); {', '.join(kinds)}")
        for i, fraction in enumerate(plan.openloop_fractions):
            rate = capacity * fraction
            for kind in kinds[i % len(kinds) :] + kinds[: i % len(kinds)]:
                server, url, body = up[kind]
                time.sleep(plan.settle_seconds)
                before = worker_cpu(server)
                r = self.loadgen.open_loop(url, body, rate=rate, seconds=plan.openloop_seconds)
                cpu = cpu_figures(cpu_used(before, worker_cpu(server)), r.ok)
                say(
                    f"  {kind} at {fraction:.0%} ({rate:.0f} req/s): achieved {r.achieved_rps:.0f}"
                    f"  p50 {r.p50_ms} p99 {r.p99_ms} p99.9 {r.p999_ms} ms  errors {r.errors}"
                    f"  generator lag p99 {r.lag_p99_ms} ms{' (BEHIND)' if r.behind else ''}"
                )
                out["servers"][kind][f"{round(fraction * 100)}"] = (
                    r.to_dict() | cpu | {"fraction": fraction}
                )
        return out

    def stack(self, up: dict[str, tuple[Server, str, Path]]) -> dict[str, Any]:
        """The no-op at 32 connections under each configuration of `stack_ladder`, back to back
        (the default and lean no-ops of the earlier sections are reused; the steps between
        are started here)."""
        plan = self.plan
        ladder = stack_ladder()
        reuse = {"default": "noop", "lean": "noop_lean"}
        steps: list[dict[str, Any]] = []
        with contextlib.ExitStack() as stack:
            servers: dict[str, tuple[Server, str, Path]] = {}
            for key, _, config in ladder:
                if reuse.get(key) in up:
                    servers[key] = up[reuse[key]]
                    continue
                ctx = self.noop_server(f"noop-{key.replace('_', '-')}", config)
                server = stack.enter_context(ctx)
                servers[key] = (server, f"{server.base}/predict", self.bodies["one"])
                self.warm(servers[key][1], self.bodies["one"])
            say(f"BentoML stack: the no-op at 32 connections, {plan.stack_seconds:g} s per step")
            previous: dict[str, Any] | None = None
            for key, label, config in ladder:
                server, url, body = servers[key]
                time.sleep(plan.settle_seconds)
                r, cpu = self.load(server, url, body, connections=32, seconds=plan.stack_seconds)
                entry = {"key": key, "label": label, "config": config} | r.to_dict() | cpu
                if previous is not None:
                    entry["delta_rps"] = round(r.rps - previous["rps"], 2)
                    if cpu["cpu_ms_per_request"] and previous["cpu_ms_per_request"]:
                        entry["delta_cpu_ms_per_request"] = round(
                            cpu["cpu_ms_per_request"] - previous["cpu_ms_per_request"], 3
                        )
                say(
                    f"  {label}: {r.rps:.0f} req/s, CPU {cpu['cpu_ms_per_request']} ms/req, "
                    f"p99 {r.p99_ms} ms, errors {r.errors}"
                )
                steps.append(entry)
                previous = entry
        return {"connections": 32, "seconds": plan.stack_seconds, "steps": steps}

    # -- in process -----------------------------------------------------------------------------

    def in_process(self) -> dict[str, Any]:
        """On the server's core: pipeline.predict_proba on the same 1,000 rows and on one row,
        and, for where the rest of a request goes, the service's own body parsing + validation."""
        import pandas as pd
        from threadpoolctl import threadpool_limits

        from champion.service.runtime import CompiledModel, Encoder
        from champion.service.validation import parse_body, validate_instances
        from champion.training.artifacts import TAG_ONNX_SHA256, read_onnx
        from champion.training.pipeline import prepare_features

        model = self.project.load(self.versions["default"])
        contract = self.project.contract()
        batch = prepare_features(pd.DataFrame(self.rows[:1000]), contract)
        one = prepare_features(pd.DataFrame(self.rows[:1]), contract)
        body_batch = self.bodies["batch"].read_bytes()
        body_one = self.bodies["one"].read_bytes()

        def validate(body: bytes) -> Callable[[], Any]:
            return lambda: validate_instances(
                parse_body(body, max_bytes=len(body) + 1), contract=contract, max_rows=1000
            )

        cases: list[tuple[str, Callable[[], Any], int]] = [
            ("batch", lambda: model.pipeline.predict_proba(batch), len(batch)),
            ("one_row", lambda: model.pipeline.predict_proba(one), 1),
            ("validate_batch", validate(body_batch), 1000),
            ("validate_one_row", validate(body_one), 1),
        ]
        sha = model.ref.tags.get(TAG_ONNX_SHA256)
        if sha:  # the compiled form the service runs, on the same validated rows
            compiled = CompiledModel(
                Encoder.from_pipeline(model.pipeline),
                read_onnx(model.local_dir, expected_sha256=sha),
                classes=list(model.pipeline.classes_),
            )
            valid_batch = validate(body_batch)()
            valid_one = validate(body_one)()
            cases += [
                ("compiled_batch", lambda: compiled.run(valid_batch.columns, 1000), 1000),
                ("compiled_one_row", lambda: compiled.run(valid_one.columns, 1), 1),
            ]
        out: dict[str, Any] = {}
        with pinned(self.cpus["server"]), threadpool_limits(limits=1):
            for name, call, rows in cases:
                call()  # warm
                n, t0 = 0, time.perf_counter()
                deadline = t0 + self.plan.in_process_seconds / 2
                while time.perf_counter() < deadline and n < 100_000:
                    call()
                    n += 1
                secs = time.perf_counter() - t0
                out[name] = {
                    "calls": n,
                    "seconds": round(secs, 3),
                    "ms_per_call": round(secs / n * 1000, 3),
                    "rows_per_s": round(n * rows / secs, 1),
                }
        say(
            f"in-process predict_proba: {out['batch']['rows_per_s']:.0f} rows/s (1,000-row frames)"
            f", {out['one_row']['ms_per_call']} ms per single row; parse + validate "
            f"{out['validate_batch']['ms_per_call']} ms per 1,000 rows"
        )
        if "compiled_batch" in out:
            say(
                f"in-process compiled (NumPy encoding + ONNX Runtime): "
                f"{out['compiled_batch']['rows_per_s']:.0f} rows/s, "
                f"{out['compiled_one_row']['ms_per_call']} ms per single row"
            )
        return out

    def drift(self) -> dict[str, Any]:
        """drift.evaluate: 30 numeric features, a 10,000-row window and reference."""
        import numpy as np

        from champion.monitoring.drift import evaluate
        from champion.monitoring.profile import build_profile

        rng = np.random.default_rng(0)
        features, rows = 30, 10_000
        names = [f"x{i:02d}" for i in range(features)]
        import pandas as pd

        ref = pd.DataFrame(rng.normal(size=(rows, features)), columns=names)
        ref_scores = rng.uniform(size=rows)
        ref_proba = np.column_stack([1 - ref_scores, ref_scores])
        t0 = time.perf_counter()
        profile = build_profile(
            ref,
            numeric=names,
            categorical=[],
            predictions=(ref_scores > 0.5).astype(int),
            probabilities=ref_proba,
            classes=[0, 1],
        )
        profile_s = time.perf_counter() - t0
        # The window as the service's monitor builds it: a dict of Python lists per feature.
        live = rng.normal(loc=0.02, size=(rows, features))
        window = {n: live[:, i].tolist() for i, n in enumerate(names)}
        scores = rng.uniform(size=rows)
        predictions = np.asarray((scores > 0.5).astype(int), dtype=object)
        times = []
        report = None
        with pinned(self.cpus["server"]):
            for _ in range(self.plan.drift_repeats):
                t0 = time.perf_counter()
                report = evaluate(window, profile, predictions=predictions, scores=scores)
                times.append(time.perf_counter() - t0)
        assert report is not None
        median = statistics.median(times)
        say(f"drift evaluation: {median * 1000:.1f} ms (median of {len(times)})")
        return {
            "features": features,
            "window_rows": rows,
            "reference_rows": rows,
            "build_profile_seconds": round(profile_s, 4),
            "evaluate_seconds_median": round(median, 4),
            "evaluate_seconds_all": [round(t, 4) for t in times],
            "drift_share": report.drift_share,
        }

    # -- 6. retraining ----------------------------------------------------------------------------

    def retrain_project(self, name: str, raw: dict[str, Any]) -> BenchProject:
        """A fresh project with the contract and the demo data, for one `champion retrain`."""
        project = BenchProject(self.work / f"retrain-{name}")
        project.write_contract(raw)
        project.simulate(batches=self.plan.demo_batches, rows=self.plan.demo_rows)
        return project

    def retrain_start(
        self, name: str, raw: dict[str, Any], project: BenchProject, cpu: int | None
    ) -> dict[str, Any]:
        """One `champion retrain` (a subprocess, as a user runs it, pinned to `cpu`), started."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"retrain-{name}.log").open("w")
        proc = subprocess.Popen(
            [*pin_prefix(cpu), champion_exe(), "retrain", "--no-progress"],
            cwd=project.root,
            env=project.env(CHAMPION_LOG_LEVEL="INFO"),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return {"name": name, "raw": raw, "project": project, "proc": proc, "log": log}

    def retrain_finish(self, job: dict[str, Any], wall: float, timed_out: bool) -> dict[str, Any]:
        project, raw = job["project"], job["raw"]
        runs = project.cycle_runs()
        run = runs[-1] if runs else {"metrics": {}, "params": {}}
        metrics = run["metrics"]
        primary = raw["metrics"]["primary"]
        return {
            "strategy": raw["search"]["strategy"],
            "wall_seconds": round(wall, 2),
            "timed_out": timed_out,
            "exit_code": job["proc"].returncode,
            "cv_best": metrics.get(f"cv_{primary}_mean"),
            "metric": f"cv_{primary}_mean",
            "trials": metrics.get("trials"),
            "tuning_seconds": metrics.get("tuning_seconds"),
            "best_candidate": run["params"].get("best_candidate"),
            "stopped_by": run["params"].get("stopped_by"),
        }

    def grid_timeout(self) -> float:
        """The plan's grid timeout, cut to what the run's budget leaves (at least 2 minutes)."""
        plan = self.plan
        if plan.budget_seconds is None:
            return plan.grid_timeout
        left = plan.budget_seconds - (time.monotonic() - self.started) - 20  # 20 s: the report
        return max(120.0, min(plan.grid_timeout, left))

    def retrain(self) -> dict[str, Any]:
        """Bayes (the shipped contract) on the server core and the exhaustive grid on the load
        core, at once: two single-core processes on two cores; each one's wall time is its own
        start to exit."""
        plan = self.plan
        if not plan.retrain:
            return {"skipped": "quick mode: no retraining comparison"}
        specs: dict[str, tuple[dict[str, Any], int | None, float]] = {
            "bayes": (shipped_raw(), self.cpus["server"], 600.0)
        }
        if plan.grid:
            specs["grid"] = (grid_raw(), self.cpus["load"], self.grid_timeout())
        say(
            "retrain: shipped contract (bayes)"
            + (
                f" and exhaustive grid (timeout {specs['grid'][2]:.0f}s), at once"
                if plan.grid
                else ""
            )
        )
        projects = {name: self.retrain_project(name, raw) for name, (raw, _, _) in specs.items()}
        jobs: dict[str, dict[str, Any]] = {}
        t0: dict[str, float] = {}
        ended: dict[str, tuple[float, bool]] = {}
        try:
            for name, (raw, cpu, _) in specs.items():
                jobs[name] = self.retrain_start(name, raw, projects[name], cpu)
                t0[name] = time.monotonic()
            while len(ended) < len(jobs):
                for name, job in jobs.items():
                    if name in ended:
                        continue
                    elapsed = time.monotonic() - t0[name]
                    if job["proc"].poll() is not None:
                        ended[name] = (elapsed, False)
                    elif elapsed > specs[name][2]:
                        stop(job["proc"])
                        ended[name] = (elapsed, True)
                time.sleep(0.2)
        finally:
            for job in jobs.values():
                stop(job["proc"])
                job["log"].close()
        figures = {name: self.retrain_finish(jobs[name], *ended[name]) for name in ended}
        bayes = figures["bayes"]
        say(f"  bayes: {bayes['wall_seconds']}s, best {bayes['cv_best']}")
        out: dict[str, Any] = {
            "bayes": bayes,
            "demo_rows": plan.demo_batches * plan.demo_rows,
            "concurrent": len(jobs) > 1,
        }
        if "grid" in figures:
            grid = figures["grid"]
            grid["timeout_seconds"] = round(specs["grid"][2], 1)
            say(f"  grid: {grid['wall_seconds']}s, best {grid['cv_best']}, {grid['trials']} trials")
            out["grid"] = grid
            if bayes["cv_best"] is not None and grid["cv_best"] is not None:
                out["score_gap"] = round(grid["cv_best"] - bayes["cv_best"], 5)
            if grid["wall_seconds"] and not grid["timed_out"]:
                out["time_ratio"] = round(bayes["wall_seconds"] / grid["wall_seconds"], 4)
        else:
            out["grid"] = {"skipped": "quick mode: no grid search"}
        return out


def describe(registry: Any, version: str) -> dict[str, Any]:
    """One registered version: its candidate (family and parameters, from its tags) and the
    runtime registration chose to serve it with (`ModelRef.runtime`)."""
    from champion.training.pipeline import Candidate

    ref = registry.version(version)
    candidate = json.loads(ref.candidate_json or "{}")
    label = Candidate.from_json(ref.candidate_json).label() if ref.candidate_json else None
    return {
        "version": str(version),
        "family": candidate.get("family"),
        "label": label,
        "candidate": candidate,
        "runtime": ref.runtime,
        "runtime_note": ref.runtime_note,
    }


def cpu_figures(cpu_seconds: float, answered: int) -> dict[str, Any]:
    """Worker CPU seconds over a load and per answered request (ms)."""
    return {
        "worker_cpu_seconds": round(cpu_seconds, 3),
        "answered": answered,
        "cpu_ms_per_request": round(cpu_seconds * 1000 / answered, 3) if answered else None,
    }


def summarize(records: list[Any], seconds: float) -> dict[str, Any]:
    """Count, failures, rate and latency percentiles of recorded requests."""
    import numpy as np

    lat = np.asarray([r[1] for r in records], dtype=float)
    have = len(lat) > 0
    return {
        "requests": len(records),
        "failed": sum(1 for r in records if r[2] != 200),
        "seconds": round(seconds, 3),
        "rps": round(len(records) / seconds, 2) if seconds > 0 else None,
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if have else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if have else None,
        "max_ms": round(float(lat.max()), 2) if have else None,
        "versions": dict(
            sorted({v: sum(1 for r in records if r[3] == v) for *_, v in records}.items())
        ),
    }


def timeline(records: list[Any], t0: float, p0: float, step: float = 0.5) -> list[dict[str, Any]]:
    """Per half second of the run (by completion time): answers, failures, p99, versions."""
    buckets: dict[int, list[Any]] = {}
    for r in records:
        buckets.setdefault(int((r[0] + r[1] / 1000 - t0) // step), []).append(r)
    out = []
    for k in sorted(buckets):
        s = summarize(buckets[k], step)
        out.append(
            {"t": round(k * step, 2), "since_promote": round(t0 + k * step - p0, 2)}
            | {key: s[key] for key in ("requests", "failed", "p99_ms", "versions")}
        )
    return out


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """Run this process on one core for a while (then back to where it was)."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def choose_cpus() -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) >= 2 and shutil.which("taskset"):
        return {"load": cpus[0], "server": cpus[1], "tool": "taskset", "available": cpus}
    return {"load": None, "server": None, "tool": None, "available": cpus}


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def step(results: dict[str, Any], key: str, fn: Callable[[], Any]) -> None:
    """Run one section; a failure is recorded in the results and the run goes on."""
    try:
        results[key] = fn()
    except Exception as exc:
        say(f"{key} failed: {exc!r}")
        results[key] = {"error": f"{type(exc).__name__}: {exc}"[:3000]}


def run(plan: Plan, *, loadgen_kind: str, keep: bool, only: str | None = None) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "mode": ("quick" if plan.quick else "full") + (f", only {only}" if only else ""),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "versions": package_versions(),
            "plan": {
                "seconds_per_level": plan.seconds,
                "concurrency": list(plan.levels),
                "batch_seconds": plan.batch_seconds,
                "batch_connections": plan.batch_connections,
                "services": list(plan.services),
                "secondary_concurrency": list(plan.secondary_levels) if plan.secondary else [],
                "h2h_rounds": plan.h2h_rounds,
                "h2h_seconds": plan.h2h_seconds,
                "openloop_seconds": plan.openloop_seconds,
                "stack_seconds": plan.stack_seconds,
                "settle_seconds": plan.settle_seconds,
                "budget_seconds": plan.budget_seconds,
            },
        }
    }
    wrk = ensure_wrk() if loadgen_kind in ("auto", "wrk") else None
    if loadgen_kind == "wrk" and wrk is None:
        raise SystemExit("wrk is not installed and could not be installed")
    cpus = choose_cpus()
    loadgen = LoadGen(wrk=wrk, cpu=cpus["load"])
    results["meta"]["loadgen"] = wrk_version(wrk) if wrk else "python asyncio + httpx (no wrk)"
    results["meta"]["pinning"] = cpus
    say(f"load generator: {results['meta']['loadgen']}; pinning: {cpus}")
    work = Path(tempfile.mkdtemp(prefix="champion-bench-"))
    results["meta"]["workdir"] = str(work)
    clock = Sections()
    bench = Bench(plan, work=work, loadgen=loadgen, cpus=cpus, clock=clock, started=started)
    champ: dict[str, Any] = {}
    baselines: dict[str, Any] = {}
    inproc: dict[str, Any] = {}
    try:
        if only is not None:
            bench.only(only, results, baselines)
        else:
            with clock("setup"):
                results["setup"] = bench.setup()
            say(f"setup done in {results['setup']['seconds']}s: {results['setup']['models']}")
            # The runner (it only waits, and promotes during the swap) shares the load core.
            with pinned(cpus["load"]):
                try:
                    bench.champion_suite(champ)
                except Exception as exc:
                    say(f"champion suite failed: {exc!r}")
                    champ["error"] = f"{type(exc).__name__}: {exc}"[:3000]
                try:
                    bench.stage(results, baselines)
                except Exception as exc:  # a failure outside the stage's own steps
                    say(f"baselines stage failed: {exc!r}")
                    results.setdefault("head_to_head", {"error": repr(exc)[:3000]})
            with clock("drift"):
                step(inproc, "drift", bench.drift)
            with pinned(cpus["load"]), clock("retrain"):
                step(results, "retrain", bench.retrain)
    finally:
        results["meta"]["sections"] = clock.seconds
        results["meta"]["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        results["meta"]["wall_seconds"] = round(time.monotonic() - started, 1)
        results["meta"]["machine"]["loadavg_end"] = loadavg()
        if keep:
            say(f"kept the work folder {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    assemble(results, plan, champ, baselines, inproc)
    results["targets"] = evaluate_targets(results)
    say("section seconds: " + ", ".join(f"{k} {v:g}" for k, v in clock.seconds.items()))
    return results


def assemble(
    results: dict[str, Any],
    plan: Plan,
    champ: dict[str, Any],
    baselines: dict[str, Any],
    inproc: dict[str, Any],
) -> None:
    """Lay the measurements out by question: 1 single_row ... 6 retrain."""

    # The primary rows: the default champion. Secondary: the forced forest and gbt versions.
    single: dict[str, Any] = {"champion": dig(champ, "single_row") or champ.get("error")}
    for scenario in ("forest", "gbt"):
        key = f"champion_{scenario}"
        if not plan.secondary:
            single[key] = {"skipped": "not in this plan"}
            continue
        measured = dig(champ, f"{scenario}_single_row") or {}
        if "levels" in measured:
            single[key] = measured["levels"]
        else:
            single[key] = {"error": measured.get("error") or champ.get("error") or "not measured"}
    v2 = dig(champ, "v2_single_row")
    if not plan.v2:
        single["champion_v2"] = {"skipped": "not in this plan"}
    elif isinstance(v2, dict) and "levels" in v2:
        single["champion_v2"] = v2["levels"]
    else:
        single["champion_v2"] = {"error": dig(v2, "error") or champ.get("error") or "not measured"}
    for kind in ("noop", "naive", "mlflow"):
        if kind in plan.services:
            single[kind] = dig(baselines, kind, "single_row") or dig(baselines, kind, "error")
        else:
            single[kind] = {"skipped": "quick mode"}
    # The lean no-op's 32-connection row is the BentoML stack ladder's lean step.
    lean = next((x for x in dig(results, "stack", "steps") or [] if x.get("key") == "lean"), None)
    single["noop_lean"] = (
        {"32": lean}
        if lean
        else {"error": dig(results, "stack", "error") or dig(baselines, "noop_lean", "error")}
    )
    results["single_row"] = single

    service_batch = dig(champ, "batch")
    in_batch = dig(champ, "in_process", "batch")
    ratio = None
    if service_batch and in_batch and in_batch.get("rows_per_s"):
        ratio = round(service_batch["rows_per_s"] / in_batch["rows_per_s"], 4)
    results["batch"] = {
        "rows_per_request": 1000,
        "service": service_batch,
        "in_process": in_batch,
        "in_process_one_row": dig(champ, "in_process", "one_row"),
        "validate_batch": dig(champ, "in_process", "validate_batch"),
        "validate_one_row": dig(champ, "in_process", "validate_one_row"),
        "compiled": dig(champ, "in_process", "compiled_batch"),
        "compiled_one_row": dig(champ, "in_process", "compiled_one_row"),
        "ratio": ratio,
        "compiled_ratio": None
        if not (service_batch and dig(champ, "in_process", "compiled_batch", "rows_per_s"))
        else round(
            service_batch["rows_per_s"] / champ["in_process"]["compiled_batch"]["rows_per_s"], 4
        ),
    }
    results["runtime"] = dig(champ, "runtime")

    capture = dig(champ, "capture") or {"skipped": "quick mode: one champion server only"}
    drift = inproc.get("drift")
    monitor_seconds = 60.0
    drift_share = None
    if isinstance(drift, dict) and "evaluate_seconds_median" in drift:
        drift_share = round(drift["evaluate_seconds_median"] / monitor_seconds, 5)
    total = None
    if isinstance(capture, dict) and capture.get("throughput_cost") is not None:
        total = round(max(capture["throughput_cost"], 0.0) + (drift_share or 0.0), 5)
    results["monitoring"] = {
        "capture": capture,
        "drift": drift,
        "monitor_interval_seconds": monitor_seconds,
        "drift_cpu_share": drift_share,
        "total_cost": total,
    }
    results["swap"] = dig(champ, "swap") or {"error": champ.get("error")}

    cold: dict[str, Any] = {}
    for kind, source in [("champion", champ)] + [
        (k, baselines.get(k, {})) for k in plan.services if k != "champion"
    ]:
        cs = dig(source, "cold_start")
        if cs is None:
            cold[kind] = {"error": dig(source, "error")}
            continue
        cold[kind] = {
            "seconds": cs.get("seconds"),
            "worker_rss_mb_at_ready": dig(cs, "memory_at_ready", "worker_rss_mb"),
            "worker_rss_mb_after_load": dig(source, "memory_after_load", "worker_rss_mb"),
            "tree_rss_mb_after_load": dig(source, "memory_after_load", "tree_rss_mb"),
            "processes_after_load": dig(source, "memory_after_load", "processes"),
        }
    if isinstance(capture, dict) and capture.get("capture_off_cold_start_seconds"):
        # The capture-off server starts on the same home after the first one: from the cache.
        cold["champion"]["from_cache_seconds"] = capture["capture_off_cold_start_seconds"]
    results["cold_start"] = cold
    results.setdefault("retrain", {"skipped": "not run"})


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="seconds, not minutes: champion + no-op at 32 connections, no "
        "mlflow serve, no retraining",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json")
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="also write the report as Markdown (e.g. docs/performance.md)",
    )
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="auto: wrk (installed with apt-get when missing), else Python",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument(
        "--only",
        choices=("stack", "openloop"),
        default=None,
        help="one section alone (with --quick: its quick durations): the BentoML stack "
        "ladder, or open-loop latency (default champion, default and lean no-ops)",
    )
    args = parser.parse_args(argv)
    # A plain SIGTERM/SIGHUP would end Python without its `finally` blocks: turn them into an
    # interrupt so every server and child started so far is stopped on the way out.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupted)
    plan = QUICK if args.quick else FULL
    if args.only == "openloop":
        plan = dataclasses.replace(plan, secondary=False, swap=False)
    results = run(plan, loadgen_kind=args.loadgen, keep=args.keep, only=args.only)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    say(f"wrote {args.out}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(render_markdown(results), encoding="utf-8")
        say(f"wrote {args.markdown}")
    for t in results["targets"]:
        mark = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        say(f"  {t['name']}: {t['measured']} (goal {t['goal']}) {mark}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

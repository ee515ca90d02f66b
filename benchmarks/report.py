"""Targets (met / not met) and the Markdown report from a benchmark results dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def dig(d: Any, *keys: str) -> Any:
    """`d[k1][k2]...`, or None where a key (or a dict) is missing."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return round(a / b, 3)


def _target(
    name: str,
    *,
    measured: float | None,
    unit: str,
    baseline: float | None = None,
    baseline_name: str = "",
    ratio: float | None = None,
    goal: str,
    met: bool | None,
    note: str = "",
) -> dict[str, Any]:
    return {
        "name": name,
        "measured": None if measured is None else round(measured, 5),
        "unit": unit,
        "baseline": None if baseline is None else round(baseline, 5),
        "baseline_name": baseline_name,
        "ratio": ratio,
        "goal": goal,
        "met": met,
        "note": note,
    }


def _relative(
    name: str, *, measured: float | None, baseline: float | None, op: str, bound: float, **kw: Any
) -> dict[str, Any]:
    """A target on the ratio measured / baseline (`op` `bound`)."""
    ratio = _ratio(measured, baseline)
    return _target(
        name, measured=measured, baseline=baseline, ratio=ratio, met=_cmp(ratio, op, bound), **kw
    )


def _absolute(
    name: str, *, measured: float | None, baseline: float | None, op: str, bound: float, **kw: Any
) -> dict[str, Any]:
    """A target on the measured value itself (`op` `bound`), its ratio to the baseline shown."""
    ratio = _ratio(measured, baseline)
    return _target(
        name, measured=measured, baseline=baseline, ratio=ratio, met=_cmp(measured, op, bound), **kw
    )


def _cmp(value: float | None, op: str, bound: float) -> bool | None:
    if value is None:
        return None
    return value >= bound if op == ">=" else value <= bound


def evaluate_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target with its figure, baseline, ratio and verdict (None: not measured)."""
    out = []
    champ32 = dig(r, "single_row", "champion", "32")
    noop32 = dig(r, "single_row", "noop", "32")
    mlflow32 = dig(r, "single_row", "mlflow", "32")
    # Throughput ratios from the interleaved head-to-head rounds when run, else the sweeps.
    h2h = r.get("head_to_head") or {}
    source = "head to head" if dig(h2h, "champion", "rps") else "sweep"

    def rps(kind: str, sweep: Any) -> float | None:
        value = dig(h2h, kind, "rps")
        return value if source == "head to head" else dig(sweep, "rps")

    c_rps, n_rps, m_rps = rps("champion", champ32), rps("noop", noop32), rps("mlflow", mlflow32)
    lean_rps = rps("noop_lean", dig(r, "single_row", "noop_lean", "32"))
    if lean_rps is None:  # not in the head-to-head rounds: the stack ladder's lean step
        lean_rps = dig(r, "single_row", "noop_lean", "32", "rps")
    throughput: dict[str, Any] = {"measured": c_rps, "unit": "req/s", "note": source}
    out.append(
        _relative(
            "single-row throughput at 32 connections vs no-op (default champion)",
            baseline=n_rps,
            baseline_name="BentoML no-op",
            goal=">= 0.8x no-op",
            op=">=",
            bound=0.8,
            **throughput,
        )
    )
    out.append(
        _relative(
            "single-row throughput at 32 connections vs the no-op on BentoML's default "
            "configuration (default champion)",
            baseline=n_rps,
            baseline_name="BentoML no-op, default config",
            goal=">= 1.2x default-config no-op",
            op=">=",
            bound=1.2,
            **throughput,
        )
    )
    out.append(
        _relative(
            "single-row throughput at 32 connections vs the no-op on champion's lean "
            "BentoML configuration (default champion)",
            baseline=lean_rps,
            baseline_name="BentoML no-op, lean config",
            goal=">= 0.9x lean no-op",
            op=">=",
            bound=0.9,
            **throughput
            | {"note": source if dig(h2h, "noop_lean", "rps") else "lean no-op: stack ladder"},
        )
    )
    out.append(_family_cpu_target(r))
    out.append(_open_loop_target(r))
    out.append(
        _relative(
            "single-row throughput at 32 connections vs mlflow models serve (default champion)",
            baseline=m_rps,
            baseline_name="mlflow models serve",
            goal=">= 3x mlflow serve",
            op=">=",
            bound=3.0,
            **throughput,
        )
    )
    out.append(
        _absolute(
            "p99 latency at 32 connections (default champion)",
            measured=dig(champ32, "p99_ms"),
            unit="ms",
            baseline=dig(noop32, "p99_ms"),
            baseline_name="BentoML no-op p99",
            goal="<= 50 ms",
            op="<=",
            bound=50.0,
        )
    )
    svc = dig(r, "batch", "service", "rows_per_s")
    comp = dig(r, "batch", "compiled", "rows_per_s")
    out.append(
        _relative(
            "batch throughput, 1,000-row requests",
            measured=svc,
            unit="rows/s",
            baseline=dig(r, "batch", "in_process", "rows_per_s"),
            baseline_name="in-process predict_proba",
            goal=">= 0.7x in-process",
            op=">=",
            bound=0.7,
        )
    )
    out.append(
        _relative(
            "batch throughput, 1,000-row requests, vs the compiled form in process",
            measured=svc,
            unit="rows/s",
            baseline=comp,
            baseline_name="in-process NumPy encoding + ONNX Runtime",
            goal=">= 0.7x compiled in process",
            op=">=",
            bound=0.7,
            note="" if comp else "no compiled form for this version",
        )
    )
    gap = dig(r, "retrain", "score_gap")
    out.append(
        _target(
            "retrain best CV score vs exhaustive grid",
            measured=dig(r, "retrain", "bayes", "cv_best"),
            unit="roc_auc",
            baseline=dig(r, "retrain", "grid", "cv_best"),
            baseline_name="grid best",
            ratio=None,
            goal="within 0.001 of grid's best",
            met=_cmp(gap, "<=", 0.001),
            note="" if gap is None else f"gap {gap:+.5f} (grid - bayes)",
        )
    )
    tr = dig(r, "retrain", "time_ratio")
    out.append(
        _target(
            "retrain wall time vs exhaustive grid",
            measured=dig(r, "retrain", "bayes", "wall_seconds"),
            unit="s",
            baseline=dig(r, "retrain", "grid", "wall_seconds"),
            baseline_name="grid wall time",
            ratio=tr,
            goal="<= 0.3x grid's time",
            met=_cmp(tr, "<=", 0.3),
            note="grid timed out: ratio not computed"
            if dig(r, "retrain", "grid", "timed_out")
            else "",
        )
    )
    total = dig(r, "monitoring", "total_cost")
    cost = dig(r, "monitoring", "capture", "throughput_cost")
    spread = dig(r, "monitoring", "capture", "same_config_spread")
    note = ""
    if cost is not None:
        note = f"capture {cost * 100:+.1f} % throughput"
        if spread is not None and abs(cost) < spread:
            note += f", inside the {spread * 100:.0f} % spread of repeated runs: noise"
        if cost < 0:
            note += "; a negative cost counts as 0"
    out.append(
        _target(
            "monitoring cost: capture throughput loss + drift CPU share",
            measured=None if total is None else total * 100,
            unit="%",
            baseline=dig(r, "monitoring", "capture", "capture_off", "rps"),
            baseline_name="capture off req/s at 32",
            ratio=_ratio(
                dig(r, "monitoring", "capture", "capture_on", "rps"),
                dig(r, "monitoring", "capture", "capture_off", "rps"),
            ),
            goal="<= 5 %",
            met=_cmp(total, "<=", 0.05),
            note=note,
        )
    )
    errors = dig(r, "swap", "errors")
    out.append(
        _target(
            "failed requests during a swap at 32 connections",
            measured=errors,
            unit="requests",
            baseline=None,
            goal="0",
            met=None
            if errors is None
            else errors == 0 and dig(r, "swap", "serving_after") == dig(r, "swap", "to_version"),
            note=f"of {dig(r, 'swap', 'requests')} requests",
        )
    )
    out.append(
        _relative(
            "p99 during a swap vs steady state (32 connections)",
            measured=dig(r, "swap", "swap_p99_ms"),
            unit="ms",
            baseline=dig(r, "swap", "steady_p99_ms"),
            baseline_name="steady p99",
            goal="<= 2x steady",
            op="<=",
            bound=2.0,
        )
    )
    cold: dict[str, Any] = {
        "measured": dig(r, "cold_start", "champion", "seconds"),
        "unit": "s",
        "baseline": dig(r, "cold_start", "noop", "seconds"),
        "baseline_name": "BentoML no-op",
        "op": "<=",
    }
    name = "cold start to ready{} (process start -> /readyz 200)"
    out.append(_absolute(name.format(""), goal="<= 10 s", bound=10.0, **cold))
    out.append(_absolute(name.format(", 5 s bound"), goal="<= 5 s", bound=5.0, **cold))
    return out


FAMILY_ROWS = ("champion", "champion_forest", "champion_gbt")


def _family_cpu_target(r: dict[str, Any]) -> dict[str, Any]:
    """Worker CPU per request at 32 connections, default champion vs the forest and gbt rows:
    the slowest against the fastest."""
    cpu = {
        k: dig(r, "single_row", k, "32", "cpu_ms_per_request")
        for k in FAMILY_ROWS
        if dig(r, "single_row", k, "32", "cpu_ms_per_request")
    }
    name = "worker CPU per request at 32 connections, slowest family vs fastest"
    if len(cpu) < 2:
        return _target(name, measured=None, unit="ms/req", goal="<= 1.5x fastest", met=None)
    fastest, slowest = min(cpu, key=cpu.__getitem__), max(cpu, key=cpu.__getitem__)
    ratio = _ratio(cpu[slowest], cpu[fastest])
    labels = {"champion": "default", "champion_forest": "forest", "champion_gbt": "gbt"}
    missing = [labels[k] for k in FAMILY_ROWS if k not in cpu]
    return _target(
        name,
        measured=cpu[slowest],
        unit="ms/req",
        baseline=cpu[fastest],
        baseline_name=f"fastest: {labels[fastest]}",
        ratio=ratio,
        goal="<= 1.5x fastest",
        met=_cmp(ratio, "<=", 1.5),
        note=f"slowest: {labels[slowest]}; "
        + ", ".join(f"{labels[k]} {v:.3f}" for k, v in cpu.items())
        + (f"; not measured: {', '.join(missing)}" if missing else ""),
    )


def _open_loop_target(r: dict[str, Any]) -> dict[str, Any]:
    """At 50 % of the default no-op's capacity, open loop: the champion's p99 against the lean
    no-op's at the same rate, and no failed request."""
    champ = dig(r, "open_loop", "servers", "champion", "50")
    lean = dig(r, "open_loop", "servers", "noop_lean", "50")
    p99, base = dig(champ, "p99_ms"), dig(lean, "p99_ms")
    ratio = _ratio(p99, base)
    errors = dig(champ, "errors")
    met = None if ratio is None or errors is None else ratio <= 2.0 and errors == 0
    note = ""
    if champ:
        note = f"{dig(champ, 'offered_rps'):.0f} req/s offered, {errors} errors"
        behind = [k for k, x in (("champion", champ), ("lean no-op", lean)) if dig(x, "behind")]
        if behind:
            note += f"; generator behind schedule during: {', '.join(behind)}"
    return _target(
        "open-loop p99 at 50 % of the default no-op's capacity vs the lean no-op (default "
        "champion)",
        measured=p99,
        unit="ms",
        baseline=base,
        baseline_name="lean no-op p99, same rate",
        ratio=ratio,
        goal="<= 2x lean no-op, 0 errors",
        met=met,
        note=note,
    )


# -- Markdown ----------------------------------------------------------------------------------


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _status(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[met]


def _default(r: dict[str, Any]) -> dict[str, Any]:
    """The default champion's facts recorded at setup (family, candidate, serving runtime)."""
    return dig(r, "setup", "default_champion") or {}


def _family(model: dict[str, Any]) -> str:
    return str(model.get("family") or "unknown family")


def _serves(model: dict[str, Any]) -> str:
    """How registration chose to serve a version, from its recorded runtime."""
    runtime = model.get("runtime")
    if runtime == "onnxruntime":
        return "compiled, through ONNX Runtime"
    if runtime is None:
        return "with an unrecorded runtime"
    note = f": {model['runtime_note']}" if model.get("runtime_note") else ""
    return f"with `{runtime}`, not compiled{note}"


def _labels(r: dict[str, Any]) -> dict[str, str]:
    """Row labels: the primary champion rows name the default champion's family; the forced
    versions are marked secondary."""
    models = dig(r, "setup", "models") or {}
    return {
        "champion": f"champion, default ({_family(_default(r))})",
        "champion_v2": f"champion, default ({_family(_default(r))}), v2 infer",
        "champion_forest": "secondary: champion, forced "
        + _family(models.get("forest") or {"family": "random_forest"}),
        "champion_gbt": "secondary: champion, forced "
        + _family(models.get("gbt") or {"family": "hist_gradient_boosting"}),
        "noop": "BentoML no-op",
        "noop_lean": "BentoML no-op, lean config (champion's)",
        "naive": "naive BentoML + skops",
        "mlflow": "mlflow models serve",
    }


def _cpu(x: Any) -> str:
    return _f(dig(x, "cpu_ms_per_request"), 2)


def _champion_text(r: dict[str, Any]) -> list[str]:
    """Which champion the primary rows serve, and what the secondary rows are."""
    d = _default(r)
    if not d:
        return []
    models = dig(r, "setup", "models") or {}
    search = d.get("search") or {}
    served = dig(r, "runtime", "runtime")
    text = (
        f"**The champion measured.** Every primary champion row (single-row sweep, head to head, "
        f"1,000-row requests, capture, the swap's starting point, cold start and memory) serves "
        f"the **default champion**: the version the shipped `champion.toml`'s own search "
        f"({search.get('strategy', '?')}, at most {search.get('max_trials', '?')} trials; "
        f"{d.get('trials', '?')} run) picked on the demo data, in a fresh project as a first "
        f"`champion retrain` does, with only the cross-validation folds reduced to "
        f"{d.get('folds', '?')} (shipped: {d.get('shipped_folds', '?')}) for time. "
        f"It is v{d.get('version')}, a "
        f"**{_family(d)}** model (`{d.get('label')}`), and it serves **{_serves(d)}**: "
        f"registration recorded the runtime `{d.get('runtime')}` on the version"
    )
    if d.get("runtime_note"):
        text += f" ({d['runtime_note']})"
    if served:
        text += f", and the serving worker reported `{served}`"
    text += "."
    secondary = [
        f"`{_labels(r)[f'champion_{k}']}` (v{m.get('version')}, `{m.get('label')}`; "
        f"serves {_serves(m)})"
        for k, m in models.items()
        if k != "default"
    ]
    if secondary:
        levels = dig(r, "meta", "plan", "secondary_concurrency") or []
        at = ", ".join(str(c) for c in levels) or "–"
        text += (
            " Secondary rows, each trained on one more demo batch with a search space admitting "
            "one candidate, served by the same champion server after the swap (promoted, "
            f"awaited, then loaded) at {at} connections only: " + "; ".join(secondary) + ". The "
            "gbt version is also the swap's target."
        )
    return [text]


def _reading(r: dict[str, Any]) -> list[str]:
    """Facts computed from the results that explain the targets (no opinions, no constants)."""
    out = []
    one = dig(r, "batch", "in_process_one_row", "ms_per_call")
    compiled_one = dig(r, "batch", "compiled_one_row", "ms_per_call")
    runtime = dig(r, "runtime", "runtime")
    c1 = dig(r, "single_row", "champion", "1")
    c32 = dig(r, "single_row", "champion", "32")
    noop32 = dig(r, "single_row", "noop", "32")
    if one:
        text = (
            "**What one row costs.** One in-process single-row `predict_proba` of the default "
            f"champion ({_family(_default(r))}) in scikit-learn took {one:.2f} ms on the server's "
            "core "
            f"(roughly {1000 / one:.0f} calls/s)"
        )
        if compiled_one:
            text += (
                f"; the compiled form (NumPy encoding + ONNX Runtime) took {compiled_one:.3f} ms, "
                f"{one / compiled_one:.0f}x less"
            )
        text += f". The champion served with `{runtime or 'unknown'}`."
        if c1:
            text += (
                f" At one connection the whole champion request took p50 {c1['p50_ms']:.1f} ms "
                f"({c1['rps']:.0f} req/s)."
            )
        if dig(c32, "cpu_ms_per_request") and dig(noop32, "cpu_ms_per_request"):
            text += (
                f" At 32 connections its worker spent {c32['cpu_ms_per_request']:.2f} ms of CPU "
                f"per answered request, the no-op's {noop32['cpu_ms_per_request']:.2f} ms."
            )
        noop_rps = dig(r, "head_to_head", "noop", "rps") or dig(noop32, "rps")
        if noop_rps:
            text += (
                f" The no-op answered {noop_rps:.0f} req/s, so “≥ 0.8× no-op” asks for "
                f"{0.8 * noop_rps:.0f} req/s, {1000 / (0.8 * noop_rps):.2f} ms per request all "
                "included."
            )
        out.append(text)
    ratio = dig(r, "batch", "ratio")
    svc_rps = dig(r, "batch", "service", "rps")
    sk_ms = dig(r, "batch", "in_process", "ms_per_call")
    compiled_ms = dig(r, "batch", "compiled", "ms_per_call")
    model_ms = compiled_ms if runtime == "onnxruntime" and compiled_ms else sk_ms
    check_ms = dig(r, "batch", "validate_batch", "ms_per_call")
    if ratio is not None and svc_rps and model_ms:
        per_request = 1000 / svc_rps
        text = (
            f"**Batch.** 1,000-row requests reach {ratio:.2f}x the rows/s of scikit-learn's own "
            f"`predict_proba` in process ({sk_ms:.0f} ms per 1,000 rows). With the one worker "
            f"always busy, each request occupies it {per_request:.0f} ms: the serving model's pass "
            f"({runtime or 'unknown'}) takes {model_ms:.0f} ms in process"
        )
        if check_ms:
            text += f", parsing and validating the body (`service.validation`) {check_ms:.0f} ms"
        rest = per_request - model_ms - (check_ms or 0)
        text += (
            f"; the remaining {max(rest, 0):.0f} ms are reading the request, encoding the "
            "answer, capture, metrics and BentoML."
        )
        out.append(text)
    if c32:
        need = 32 / 0.050
        out.append(
            "**Latency at 32 connections is throughput in disguise.** With 32 closed-loop "
            "connections the mean latency is 32 / throughput (Little's law): a mean under 50 ms, "
            f"let alone a p99, needs more than {need:.0f} req/s from the one worker. The champion "
            f"gives {c32['rps']:.0f} req/s, hence a mean of about {32 / c32['rps'] * 1000:.0f} ms "
            f"(measured p50 {c32['p50_ms']:.0f} ms, p99 {c32['p99_ms']:.0f} ms)."
        )
    return out


def render_markdown(r: dict[str, Any]) -> str:
    meta = r.get("meta", {})
    m = meta.get("machine", {})
    v = meta.get("versions", {})
    setup = r.get("setup", {})
    lines: list[str] = []
    add = lines.append
    add("# Performance")
    add("")
    add(
        f"Measured by `python -m benchmarks.run{' --quick' if meta.get('mode') == 'quick' else ''}`"
        f" ({meta.get('mode')} mode) on {meta.get('started_at', '?')[:10]}, "
        f"{meta.get('wall_seconds', '?')} s wall time. Every figure comes from that one run; "
        "the raw numbers are in the JSON file written next to it."
    )
    add("")
    add(
        "**The machine was shared and loaded**: other tenants ran on the same cores during "
        f"the run (load average {m.get('loadavg_start')} at the start, "
        f"{m.get('loadavg_end')} at the end, on {m.get('nproc')} cores). Absolute figures "
        "are noisy and lower than on a quiet machine; ratios taken from back-to-back runs are "
        "more telling than the figures themselves. No test asserts a timing."
    )
    add("")
    add("| machine | |")
    add("|---|---|")
    add(f"| cores (nproc) | {m.get('nproc')} |")
    add(f"| CPU | {m.get('cpu_model')} |")
    add(f"| memory | {_f(m.get('memory_mb'), 0)} MB |")
    add(
        "| software | Python "
        + v.get("python", "?")
        + ", "
        + ", ".join(f"{k} {v[k]}" for k in ("bentoml", "mlflow", "scikit-learn", "numpy") if k in v)
        + " |"
    )
    pin = meta.get("pinning", {})
    add(f"| load generator | {meta.get('loadgen')} |")
    add(
        "| pinning | "
        + (
            f"load generator on CPU {pin.get('load')}, server on CPU {pin.get('server')} "
            f"({pin.get('tool')})"
            if pin.get("server") is not None
            else "none (fewer than two usable cores or no taskset)"
        )
        + " |"
    )
    models = setup.get("models", {})
    desc = "; ".join(
        f"{'primary' if k == 'default' else 'secondary'} {k}: v{x.get('version')} "
        f"{x.get('candidate', {}).get('family', '')} {x.get('candidate', {}).get('params', '')}, "
        f"runtime {x.get('runtime')}"
        for k, x in models.items()
    )
    add(f"| models | {desc} |")
    extra = setup.get("extra_batches_for_secondary")
    add(
        f"| data | demo stream (`champion simulate`), {setup.get('demo_batches')} batches x "
        f"{setup.get('rows_per_batch')} rows"
        + (
            f" (+1 batch for each secondary version, {extra} in all, trained on in turn)"
            if extra
            else ""
        )
        + " |"
    )
    add("")
    for para in _champion_text(r):
        add(para)
        add("")
    add("## Targets")
    add("")
    add("| target | measured | baseline | ratio | goal | status |")
    add("|---|---|---|---|---|---|")
    for t in r.get("targets", []):
        base = (
            f"{_f(t['baseline'], 3)} ({t['baseline_name']})" if t["baseline"] is not None else "–"
        )
        note = f" — {t['note']}" if t.get("note") else ""
        add(
            f"| {t['name']} | {_f(t['measured'], 3)} {t['unit']}{note} | {base} | "
            f"{_f(t['ratio'], 3)} | {t['goal']} | {_status(t['met'])} |"
        )
    add("")

    reading = _reading(r)
    if reading:
        add("## Reading the numbers")
        add("")
        for para in reading:
            add(para)
            add("")

    # 1. single row
    add("## 1. Single-row requests")
    add("")
    plan = meta.get("plan", {})
    add(
        f"Closed-loop load, {plan.get('seconds_per_level')} s per level; one worker per server; "
        "the champion service with the scheduler off, capture on, the shipped alias poll "
        "(every 10 s). "
        'The no-op, naive and champion services get `{"instances": [row]}`; '
        '`mlflow models serve` gets `{"dataframe_records": [row]}` and computes `predict` only. '
        "The naive service and `mlflow models serve` load the default champion's version. "
        "CPU ms/req: user + system CPU seconds of the server's worker processes (psutil, summed "
        "over the process tree below the `bentoml serve` or `mlflow models serve` supervisor) "
        "during the load, divided by the requests answered. Secondary rows (the forced versions) "
        "come last among the champion rows. The v2 infer row is the same server and version on "
        f"`POST {dig(r, 'single_row', 'champion_v2', '32', 'path') or '/v2/models/<name>/infer'}`"
        " (Open Inference Protocol: one tensor per contract feature, the same validation and "
        "model). `BentoML no-op` runs on BentoML's default configuration; the lean row is the "
        "same no-op under the configuration champion ships (`champion.service.stack."
        "SERVICE_CONFIG`, given to `bentoml serve` in a `BENTOML_CONFIG` file), measured at 32 "
        "connections as the lean step of the BentoML stack ladder (1c)."
    )
    add("")
    add(
        "| service | connections | req/s | CPU ms/req | p50 ms | p99 ms | errors | vs no-op "
        "| vs mlflow |"
    )
    add("|---|---|---|---|---|---|---|---|---|")
    single = r.get("single_row", {})
    labels = _labels(r)
    for key, label in labels.items():
        levels = single.get(key)
        if key.startswith("champion_") and isinstance(levels, dict) and "skipped" in levels:
            continue  # a plan without secondary rows
        if not isinstance(levels, dict) or "skipped" in levels or "error" in levels:
            reason = (levels or {}).get("skipped") or (levels or {}).get("error") or "not run"
            add(f"| {label} | – | – | – | – | – | – | – | {reason} |")
            continue
        for c, res in levels.items():
            if not isinstance(res, dict):
                continue
            noop = dig(single, "noop", c, "rps")
            mlf = dig(single, "mlflow", c, "rps")
            add(
                f"| {label} | {c} | {_f(res.get('rps'))} | {_cpu(res)} | {_f(res.get('p50_ms'))} | "
                f"{_f(res.get('p99_ms'))} | {res.get('errors')} | "
                f"{_f(_ratio(res.get('rps'), noop), 2)} | {_f(_ratio(res.get('rps'), mlf), 2)} |"
            )
    add("")

    h2h = r.get("head_to_head") or {}
    if dig(h2h, "champion", "rps"):
        add(
            f"**Head to head** (what the throughput targets use): all "
            f"{sum(1 for k in ('champion', 'noop', 'noop_lean', 'naive', 'mlflow') if k in h2h)} "
            "servers "
            f"up at once on the server core, {h2h['rounds']} rounds in which each takes a "
            "32-connection run in turn (order rotated), so a drift in the machine's load hits "
            "them alike."
        )
        add("")
        add(
            "| service | req/s | CPU ms/req | runs req/s | median p99 ms | errors | vs no-op "
            "| vs mlflow |"
        )
        add("|---|---|---|---|---|---|---|---|")
        for key in ("champion", "noop", "noop_lean", "naive", "mlflow"):
            x = h2h.get(key)
            if not isinstance(x, dict):
                continue
            add(
                f"| {labels[key]} | {_f(x['rps'])} | {_cpu(x)} | "
                f"{', '.join(_f(v) for v in x['runs_rps'])} | "
                f"{_f(x['p99_ms_median'])} | {x['errors']} | "
                f"{_f(_ratio(x['rps'], dig(h2h, 'noop', 'rps')), 2)} | "
                f"{_f(_ratio(x['rps'], dig(h2h, 'mlflow', 'rps')), 2)} |"
            )
        add("")
    elif h2h.get("error"):
        add(f"Head to head: {h2h['error']}")
        add("")
    lines.extend(_open_loop_md(r))
    lines.extend(_stack_md(r))

    # 2. batch
    b = r.get("batch", {})
    add("## 2. 1,000-row requests")
    add("")
    svc = b.get("service") or {}
    family = _family(_default(r))
    add("| what | rows/s | req/s | CPU ms/req | p99 ms | errors | vs in-process |")
    add("|---|---|---|---|---|---|---|")
    inp = b.get("in_process") or {}
    add(
        f"| champion service, default ({family}), {svc.get('connections', '?')} connections | "
        f"{_f(svc.get('rows_per_s'), 0)} | {_f(svc.get('rps'))} | {_cpu(svc)} | "
        f"{_f(svc.get('p99_ms'))} | {svc.get('errors')} | {_f(b.get('ratio'), 3)} |"
    )
    add(
        f"| in-process `pipeline.predict_proba(DataFrame)` (default {family}, one core) | "
        f"{_f(inp.get('rows_per_s'), 0)} | {_f(_ratio(inp.get('rows_per_s'), 1000))} | – | – | – "
        "| 1 |"
    )
    comp = b.get("compiled") or {}
    if comp:
        add(
            f"| in-process compiled form: NumPy encoding + ONNX Runtime, from validated columns | "
            f"{_f(comp.get('rows_per_s'), 0)} | {_f(_ratio(comp.get('rows_per_s'), 1000))} | "
            f"– | – | – | {_f(_ratio(comp.get('rows_per_s'), inp.get('rows_per_s')), 3)} |"
        )
    check = b.get("validate_batch") or {}
    if check:
        add(
            f"| in-process `parse_body` + `validate_instances` of the same body (no model) | "
            f"{_f(check.get('rows_per_s'), 0)} | {_f(_ratio(check.get('rows_per_s'), 1000))} | "
            "– | – | – | – |"
        )
    one = b.get("in_process_one_row") or {}
    if one:
        add("")
        add(
            f"For scale: in process, one single-row `predict_proba` of the default champion "
            f"({family}) takes "
            f"{_f(one.get('ms_per_call'), 2)} ms ({_f(one.get('rows_per_s'))} calls/s on one core)"
            + (
                f"; its compiled form {_f(b['compiled_one_row'].get('ms_per_call'), 3)} ms"
                if b.get("compiled_one_row")
                else ""
            )
            + (
                f"; parsing and validating a one-row body "
                f"{_f(b['validate_one_row'].get('ms_per_call'), 3)} ms."
                if b.get("validate_one_row")
                else "."
            )
        )
    add("")

    # 3. monitoring
    mon = r.get("monitoring", {})
    cap = mon.get("capture") or {}
    drift = mon.get("drift") or {}
    add("## 3. Monitoring cost")
    add("")
    if "capture_on" in cap:
        add(
            f"Two champion servers (the default champion, {_family(_default(r))}), one with "
            "`CHAMPION_CAPTURE_SAMPLE_RATE=0`, on the same core; 32 connections, runs interleaved "
            "(on, off, on, off, ...)."
        )
        add("")
        add("| capture | req/s | CPU ms/req | median p99 ms | errors |")
        add("|---|---|---|---|---|")
        for k in ("capture_on", "capture_off"):
            x = cap[k]
            add(
                f"| {k.split('_')[1]} | {_f(x['rps'])} | {_cpu(x)} | {_f(x['p99_ms_median'])} | "
                f"{x['errors']} |"
            )
        add("")
        runs = {
            k: ", ".join(_f(x.get("rps")) for x in cap[k]["runs"])
            for k in ("capture_on", "capture_off")
        }
        add(
            f"Throughput cost of capture: {_f((cap.get('throughput_cost') or 0) * 100, 2)} % "
            f"(req/s of the single runs: on {runs['capture_on']}; off {runs['capture_off']}; "
            f"largest spread between runs of one configuration "
            f"{_f((cap.get('same_config_spread') or 0) * 100, 1)} %). A difference smaller than "
            "that spread is noise on this machine, not a cost."
        )
    else:
        add(f"Capture on/off: {cap.get('skipped') or cap.get('error') or 'not measured'}.")
    add("")
    if "evaluate_seconds_median" in drift:
        share = mon.get("drift_cpu_share") or 0.0
        interval = mon.get("monitor_interval_seconds") or 60.0
        add(
            f"Drift evaluation (`champion.monitoring.drift.evaluate`, profile from "
            f"`champion.monitoring.profile.build_profile`): {drift['features']} numeric "
            f"features, a {drift['window_rows']:,}-row window against a "
            f"{drift['reference_rows']:,}-row reference: "
            f"{_f(drift['evaluate_seconds_median'] * 1000)} ms (median of "
            f"{len(drift['evaluate_seconds_all'])}), i.e. {_f(share * 100, 3)} % of one core at "
            f"the default `CHAMPION_MONITOR_SECONDS={interval:.0f}`."
        )
    else:
        add(f"Drift evaluation: {drift.get('error', 'not measured')}.")
    add("")
    if mon.get("total_cost") is not None:
        add(f"Total monitoring cost (capture + drift): {_f(mon['total_cost'] * 100, 2)} %.")
        add("")

    # 4. swap
    s = r.get("swap", {})
    add("## 4. Champion swap under load")
    add("")
    if "windows" in s:
        add(
            f"One continuous run at 32 connections on a champion service of its own polling the "
            f"alias every 1 s (wrk, one connection "
            f"per thread, every request recorded). {s['promote_at_s']:.1f} s into it "
            f"`training.actions.promote` moves the alias v{s['from_version']} → "
            f"v{s['to_version']} (default {_family(_default(r))} → secondary forced gbt); the "
            "worker notices within its 1 s poll, "
            "downloads, verifies and warms the new model in the background while serving, then "
            "swaps one reference. Windows are by completion time: steady = after a 1 s ramp up "
            "to the promotion call; swap = from the call to 1 s after the last answer by the old "
            "version; after = the rest."
        )
        add("")
        add("| window | seconds | answers | failed | req/s | p50 ms | p99 ms | max ms | versions |")
        add("|---|---|---|---|---|---|---|---|---|")
        for name, w in s["windows"].items():
            add(
                f"| {name} | {_f(w['seconds'])} | {w['requests']} | {w['failed']} | "
                f"{_f(w['rps'])} | {_f(w['p50_ms'])} | {_f(w['p99_ms'])} | {_f(w['max_ms'])} | "
                f"{w['versions']} |"
            )
        add("")
        add(
            f"Failed requests over the whole run (HTTP errors and socket errors/timeouts): "
            f"{s['errors']} of {s['requests']}. The promotion call took "
            f"{s.get('promote_seconds')} s (it loads and verifies the model before moving the "
            f"alias); the first answer by v{s['to_version']} came "
            f"{s.get('first_new_answer_s')} s after the call, the last by v{s['from_version']} "
            f"{s.get('last_old_answer_s')} s after it; serving v{s.get('serving_after')} "
            "afterwards."
        )
    else:
        add(f"Not measured: {s.get('skipped') or s.get('error')}.")
    add("")

    # 5. cold start and memory
    add("## 5. Cold start and memory")
    add("")
    add(
        "| service | cold start s | worker RSS at ready MB | worker RSS after load MB "
        "| all processes RSS MB |"
    )
    add("|---|---|---|---|---|")
    for k, x in r.get("cold_start", {}).items():
        if "error" in x and x.get("seconds") is None:
            add(f"| {labels.get(k, k)} | {x.get('error')} | | | |")
            continue
        extra = (
            f" (restart from the cache: {x['from_cache_seconds']:.2f})"
            if x.get("from_cache_seconds")
            else ""
        )
        add(
            f"| {labels.get(k, k)} | {_f(x.get('seconds'), 2)}{extra} | "
            f"{_f(x.get('worker_rss_mb_at_ready'))} | {_f(x.get('worker_rss_mb_after_load'))} | "
            f"{_f(x.get('tree_rss_mb_after_load'))} |"
        )
    add("")
    add(
        "Cold start is process start to the first 200 from `/readyz` (`/ping` for mlflow). The "
        "champion's first figure is its first start on an empty model cache: reading the "
        "registry, downloading, verifying and warming the model. The restart from the cache "
        "(a second server on the same home, started later) serves the digest-checked cached "
        "copy before the registry client (MLflow) is built, then confirms it against the "
        "registry in the background. RSS is VmRSS of the worker process; the whole tree adds "
        "the BentoML supervisor (shared pages counted twice)."
    )
    add("")

    # 6. retraining
    rt = r.get("retrain", {})
    add("## 6. Retraining")
    add("")
    if "bayes" in rt:
        add(
            f"One `champion retrain` (a subprocess, pinned to one core) on the demo data "
            f"({rt.get('demo_rows')} rows), each in a fresh project: the shipped `champion.toml` "
            "(Optuna TPE, its trial and time budget) against strategy `grid` over the same "
            "spaces, families and folds with an unbounded trial budget"
            + (
                ", the two at once (bayes on the server core, the grid on the load core: two "
                "single-core processes on two cores, sharing only the L3 cache and memory); "
                f"the grid's timeout, {_f(dig(rt, 'grid', 'timeout_seconds'), 0)} s, is what "
                "the run's time budget left."
                if rt.get("concurrent")
                else "."
            )
        )
        add("")
        add("| search | wall s | tuning s | trials | best cv_roc_auc_mean | best candidate |")
        add("|---|---|---|---|---|---|")
        for k in ("bayes", "grid"):
            x = rt.get(k) or {}
            if "skipped" in x:
                add(f"| {k} | {x['skipped']} | | | | |")
                continue
            timed = " (timed out)" if x.get("timed_out") else ""
            add(
                f"| {k} | {_f(x.get('wall_seconds'))}{timed} | {_f(x.get('tuning_seconds'))} | "
                f"{_f(x.get('trials'), 0)} | {_f(x.get('cv_best'), 5)} | "
                f"`{x.get('best_candidate')}` |"
            )
        add("")
        add(
            f"Score gap (grid − bayes): {_f(rt.get('score_gap'), 5)}; time ratio (bayes / grid): "
            f"{_f(rt.get('time_ratio'), 3)}."
        )
    else:
        add(f"Not measured: {rt.get('skipped') or rt.get('error')}.")
    add("")
    notes = Path(__file__).with_name("optimisations.md")
    if notes.is_file():
        add(notes.read_text(encoding="utf-8").rstrip())
        add("")
    sections = dig(r, "meta", "sections") or {}
    if sections:
        add("## Where the run's time went")
        add("")
        add("| section | seconds |")
        add("|---|---|")
        for name, secs in sections.items():
            add(f"| {name} | {_f(float(secs))} |")
        wall = dig(r, "meta", "wall_seconds")
        if wall is not None:
            rest = wall - sum(float(x) for x in sections.values())
            add(f"| between sections (server stops, bookkeeping) | {_f(max(rest, 0.0))} |")
        add(f"| whole run | {_f(wall)} |")
        add("")
    add("## Reproduce")
    add("")
    add("```sh")
    add("make bench   # full run, under 15 min: benchmarks/results.json and docs/performance.md")
    add("python -m benchmarks.run --quick --out /tmp/bench.json   # about a minute, a smoke run")
    add("python -m benchmarks.run --only stack --out /tmp/stack.json      # the ladder, ~1 min")
    add("python -m benchmarks.run --quick --only openloop --out /tmp/ol.json  # open loop, smoke")
    add("python -m benchmarks.openloop --url URL --body FILE --rate 1000 --seconds 10")
    add("```")
    add("")
    return "\n".join(lines)


def _open_loop_md(r: dict[str, Any]) -> list[str]:
    ol = r.get("open_loop") or {}
    out = ["## 1b. Open-loop latency", ""]
    if "servers" not in ol:
        out += [f"Not measured: {ol.get('error') or ol.get('skipped') or 'not run'}.", ""]
        return out
    labels = _labels(r)
    out.append(
        f"Requests at fixed times, whatever the server answers (`benchmarks.openloop`: "
        f"{ol.get('generator')}, a process of its own on the load core): request *i* is due at "
        "t0 + i / rate and its latency runs from that scheduled time to the answer's last byte, "
        "so a stall is charged to every request it delays, sent or not (no coordinated "
        f"omission). Rates are fractions of the default no-op's capacity, "
        f"{_f(ol.get('capacity_rps'), 0)} req/s ({ol.get('capacity_source')}); "
        f"{_f(ol.get('seconds'), 0)} s per server and rate, servers rotated at each rate, the "
        "same servers as the head-to-head rounds. *Lag* is how late the generator itself issued "
        "requests against their schedule (p99; above 2 ms the row is marked *behind*: part of "
        "that latency is the generator's)."
    )
    out.append("")
    out.append(
        "| service | rate | offered req/s | achieved req/s | p50 ms | p99 ms | p99.9 ms | max ms "
        "| errors | CPU ms/req | generator lag p99 ms |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    servers = ol["servers"]
    for fraction in ol.get("fractions") or []:
        key = f"{round(fraction * 100)}"
        for kind in ("noop", "noop_lean", "champion"):
            x = dig(servers, kind, key)
            if not isinstance(x, dict):
                continue
            lag = _f(x.get("lag_p99_ms"), 3) + (" (behind)" if x.get("behind") else "")
            out.append(
                f"| {labels.get(kind, kind)} | {key} % | {_f(x.get('offered_rps'), 0)} | "
                f"{_f(x.get('achieved_rps'), 0)} | {_f(x.get('p50_ms'), 2)} | "
                f"{_f(x.get('p99_ms'), 2)} | {_f(x.get('p999_ms'), 2)} | {_f(x.get('max_ms'), 1)} "
                f"| {x.get('errors')} | {_cpu(x)} | {lag} |"
            )
    out.append("")
    return out


def _stack_md(r: dict[str, Any]) -> list[str]:
    st = r.get("stack") or {}
    out = ["## 1c. BentoML stack: what each setting buys", ""]
    if "steps" not in st:
        out += [f"Not measured: {st.get('error') or st.get('skipped') or 'not run'}.", ""]
        return out
    out.append(
        f"The no-op at 32 connections under a cumulative ladder of BentoML configurations, back "
        f"to back, {_f(st.get('seconds'), 0)} s each: BentoML's defaults, then one setting of "
        "champion's lean configuration (`champion.service.stack.SERVICE_CONFIG`) at a time, then "
        "the lean configuration plus `traffic.max_concurrency` (above the 32 connections, so the "
        "row is the concurrency middleware's cost, not rejections). Each configuration is the "
        "`bench_noop` section of a `BENTOML_CONFIG` file. One worker per measurement: the "
        "machine has 2 cores, one for the server, one for the load generator. BentoML 1.4's "
        "schema requires `traffic.timeout`, so its timeout middleware runs in every "
        "configuration and cannot be removed."
    )
    out.append("")
    out.append(
        "| configuration | req/s | Δ req/s vs previous | CPU ms/req | Δ CPU ms/req vs previous "
        "| p50 ms | p99 ms | errors |"
    )
    out.append("|---|---|---|---|---|---|---|---|")
    for x in st["steps"]:
        d_rps, d_cpu = x.get("delta_rps"), x.get("delta_cpu_ms_per_request")
        out.append(
            f"| {x.get('label')} | {_f(x.get('rps'), 0)} | "
            f"{'–' if d_rps is None else f'{d_rps:+,.0f}'} | {_cpu(x)} | "
            f"{'–' if d_cpu is None else f'{d_cpu:+.3f}'} | {_f(x.get('p50_ms'), 2)} | "
            f"{_f(x.get('p99_ms'), 1)} | {x.get('errors')} |"
        )
    out.append("")
    return out

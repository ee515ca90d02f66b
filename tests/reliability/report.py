"""Render docs/reliability.md from the figures a reliability run recorded (never by hand)."""

from __future__ import annotations

import json
from typing import Any

ORDER = ["openapi", "feedback_burst", "leader_kill", "soak", "registry_restart"]
HEADER = """\
# Reliability

Written by `make reliability` (the full form of `tests/reliability`) from the figures the run
recorded in `var/reliability/full.json`: no number on this page is typed by hand. `make test`
runs the quick form of the same scenarios (smaller sizes, same checks) and leaves this page
alone. Each scenario fails on any loss; known defects are reproduced by strict xfail tests,
listed at the end, so that the moment one is fixed the suite says so.
"""


def render(data: dict[str, Any]) -> str:
    machine = data.get("machine", {})
    packages = ", ".join(f"{k} {v}" for k, v in machine.get("packages", {}).items())
    outcomes: dict[str, dict[str, str]] = data.get("outcomes", {})
    tally: dict[str, int] = {}
    for tests in outcomes.values():
        for outcome in tests.values():
            word = outcome.split(":", 1)[0]
            tally[word] = tally.get(word, 0) + 1
    lines = [
        HEADER,
        f"**Run**: {data.get('form', '?')} form, from {_when(data.get('started'))} to "
        f"{_when(data.get('finished'))} (UTC), commit {machine.get('commit', 'unknown')}.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {_cell(machine.get('cpu'))} |",
        f"| cores | {_cell(machine.get('cores'))} |",
        f"| memory | {_cell(machine.get('memory_gib'))} GiB |",
        f"| system | {_cell(machine.get('os'))}, Python {_cell(machine.get('python'))} |",
        f"| packages | {_cell(packages)} |",
        f"| load average at the start | {_cell(machine.get('load_average_at_start'))} |",
        "",
        "The machine may be shared: timings are what this run saw, not limits; no check "
        "asserts a speed.",
        "",
        "**Tests**: " + ", ".join(f"{n} {word}" for word, n in sorted(tally.items())) + ".",
        "",
    ]
    scenarios: dict[str, Any] = data.get("scenarios", {})
    keys = [k for k in ORDER if k in scenarios] + [k for k in scenarios if k not in ORDER]
    missing = [k for k in ORDER if k not in scenarios]
    known: list[str] = []
    for number, key in enumerate(keys, start=1):
        scn = scenarios[key]
        lines += [f"## {number}. {scn['title']}", ""]
        lines += ["Passes when:", ""]
        lines += [f"- {rule}" for rule in scn.get("rules", [])]
        lines += [""]
        tests = outcomes.get(key, {})
        if tests:
            lines += ["| test | outcome |", "|---|---|"]
            for test, outcome in tests.items():
                word, _, reason = outcome.partition(": ")
                lines.append(f"| `{test}` | {_cell(word)} |")
                if word.startswith("xfailed"):
                    known.append(f"- **{scn['title']}**, `{test}`: {reason}")
            lines += [""]
        table, extra = _figures(scn.get("figures", {}))
        lines += ["| figure | value |", "|---|---|", *table, ""]
        for title, value in extra:
            lines += [f"{title}:", "", "```json", json.dumps(value, indent=1), "```", ""]
        for note in scn.get("notes", []):
            lines += [note, ""]
    if missing:
        lines += ["Not run in this session: " + ", ".join(missing) + ".", ""]
    lines += ["## Known defects", ""]
    lines += known or ["None: no strict xfail test in this run."]
    lines += [""]
    return "\n".join(lines)


def _figures(figures: dict[str, Any], prefix: str = "") -> tuple[list[str], list[tuple[str, Any]]]:
    rows: list[str] = []
    extra: list[tuple[str, Any]] = []
    for name, value in figures.items():
        label = f"{prefix}{name.strip()}"
        if isinstance(value, dict) and value and len(value) <= 40:
            sub_rows, sub_extra = _figures(value, prefix=f"{label} › ")
            rows += sub_rows
            extra += sub_extra
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            if all(len(v) <= 4 for v in value):
                rows.append(f"| {_cell(label)} | {_cell('; '.join(_inline(v) for v in value))} |")
            else:
                extra.append((label, value))
        elif isinstance(value, list):
            rows.append(f"| {_cell(label)} | {_cell(', '.join(str(v) for v in value) or 'none')} |")
        else:
            rows.append(f"| {_cell(label)} | {_cell(_value(value))} |")
    return rows, extra


def flat(figures: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """(name, value) pairs for a terminal: nested figures joined with ' › '."""
    out: list[tuple[str, str]] = []
    for name, value in figures.items():
        label = f"{prefix}{name.strip()}"
        if isinstance(value, dict) and value:
            out += flat(value, prefix=f"{label} › ")
        elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
            out.append((label, json.dumps(value, default=str)[:300]))
        else:
            out.append((label, _value(value)))
    return out


def _inline(value: dict[str, Any]) -> str:
    return ", ".join(f"{k} {_value(v)}" for k, v in value.items())


def _value(value: Any) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _when(stamp: Any) -> str:
    return str(stamp).replace("T", " ").replace("+00:00", "") if stamp else "?"

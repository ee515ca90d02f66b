"""Prometheus config, alert rules and Grafana dashboard: promtool checks plus static guards.

promtool checks the scrape config, the rules and the rules' unit tests (alerts_test.yml).
The static checks make sure every alert is unit-tested (firing and quiet), and that every
metric and label a rule or dashboard panel selects is one the service exports, so a typo
cannot hide behind a rule that silently never fires.

promtool comes from `monitoring/install-prometheus.sh` (or PROMTOOL=/path/to/promtool).
Without it these tests skip, except when the CI variable is set: then they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "monitoring" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts_test.yml"
GRAFANA = ROOT / "monitoring" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "champion.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "champion.yml"

# ---------------------------------------------------------------------------------------
# What the service exports on /metrics: metric name -> its label names (job and instance
# are added by the scrape).  BentoML's own request metrics are off in the shipped
# configuration, so no rule or panel may rely on them; test_metrics_scenario.py checks
# these names against a real `bentoml serve`.
# ---------------------------------------------------------------------------------------


def _histogram(name: str, labels: frozenset[str]) -> dict[str, frozenset[str]]:
    return {
        f"{name}_bucket": labels | {"le"},
        f"{name}_sum": labels,
        f"{name}_count": labels,
    }


NONE: frozenset[str] = frozenset()
EXPORTED: dict[str, frozenset[str]] = {
    "champion_predictions_total": frozenset({"outcome"}),
    "champion_predicted_rows_total": NONE,
    "champion_predicted_class_total": frozenset({"class"}),
    "champion_validation_failures_total": frozenset({"reason"}),
    "champion_unseen_categories_total": frozenset({"feature"}),
    "champion_capture_dropped_total": frozenset({"reason"}),
    "champion_feedback_labels_total": NONE,
    "champion_feedback_rejected_total": frozenset({"reason"}),
    "champion_background_errors_total": frozenset({"loop"}),
    "champion_model_swaps_total": NONE,
    "champion_model_swap_failures_total": NONE,
    "champion_model_info": frozenset({"version"}),
    "champion_model_age_seconds": NONE,
    "champion_retrain_ticks_total": frozenset({"outcome"}),
    "champion_retrain_runs_total": frozenset({"verdict"}),
    **_histogram("champion_retrain_duration_seconds", NONE),
    **_histogram("champion_request_duration_seconds", frozenset({"outcome", "version"})),
    "champion_retrain_last_success_timestamp_seconds": NONE,
    "champion_cv_score": frozenset({"metric"}),
    "champion_drift_score": frozenset({"feature"}),
    "champion_drift_p_value": frozenset({"feature"}),
    "champion_drift_threshold": frozenset({"feature"}),
    "champion_drift_window_rows": NONE,
    "champion_drift_detected": frozenset({"feature"}),
    "champion_dataset_drift_share": NONE,
    "champion_prediction_drift_score": NONE,
    "champion_drift_triggers_total": NONE,
    "champion_live_quality": frozenset({"metric"}),
}
SCRAPE_LABELS = frozenset({"job", "instance"})
# Series Prometheus makes itself; None: any label.
SYNTHETIC: dict[str, frozenset[str] | None] = {"up": NONE, "ALERTS": None}

VERDICTS = ("PROMOTE", "HOLD", "REJECT", "SKIPPED", "FAILED", "STALE")
# (metric, label) -> the values it can take; a selector naming another value is a typo.
LABEL_VALUES: dict[tuple[str, str], frozenset[str]] = {
    ("champion_predictions_total", "outcome"): frozenset({"ok", "invalid", "unavailable", "error"}),
    ("champion_retrain_ticks_total", "outcome"): frozenset(
        {*VERDICTS, "missed", "overlap", "timeout", "error"}
    ),
    ("champion_capture_dropped_total", "reason"): frozenset(
        {"buffer_full", "write_failed", "unserialisable", "duplicate_request_id"}
    ),
    ("champion_background_errors_total", "loop"): frozenset(
        {"capture", "slot", "scheduler", "monitor"}
    ),
    ("champion_retrain_runs_total", "verdict"): frozenset(VERDICTS),
}
for _name in ("_bucket", "_count", "_sum"):
    LABEL_VALUES[(f"champion_request_duration_seconds{_name}", "outcome")] = LABEL_VALUES[
        ("champion_predictions_total", "outcome")
    ]


# ---------------------------------------------------------------------------------------
# promtool
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def promtool() -> str:
    path = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if path:
        return path
    if "CI" in os.environ:
        pytest.fail(
            "promtool is not installed, and CI is set so this is a failure, not a skip: "
            "run monitoring/install-prometheus.sh (or set PROMTOOL=/path/to/promtool)",
            pytrace=False,
        )
    pytest.skip(
        "promtool is not installed: run monitoring/install-prometheus.sh "
        "(with CI set this fails instead of skipping)"
    )


def run_promtool(promtool: str, *args: str) -> str:
    proc = subprocess.run(
        [promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    output = f"{proc.stdout}{proc.stderr}"
    print(output)
    assert proc.returncode == 0, f"promtool {' '.join(args)} exited {proc.returncode}:\n{output}"
    return output


def test_prometheus_config_is_valid(promtool: str) -> None:
    run_promtool(promtool, "check", "config", str(CONFIG))


def test_alert_rules_are_valid(promtool: str) -> None:
    run_promtool(promtool, "check", "rules", str(RULES))


def test_alert_rules_pass_their_unit_tests(promtool: str) -> None:
    out = run_promtool(promtool, "test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in out


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """Every panel query, with Grafana's variables filled in, is valid PromQL."""
    exprs = [expr for _, expr in dashboard_queries(load_dashboard())]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": grafana_to_promql(expr)}
                    for i, expr in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    run_promtool(promtool, "check", "rules", str(path))


# ---------------------------------------------------------------------------------------
# Rules and their unit tests
# ---------------------------------------------------------------------------------------
def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> Iterator[dict[str, Any]]:
    for group in load_yaml(RULES)["groups"]:
        yield from group["rules"]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def recorded() -> frozenset[str]:
    return frozenset(rule["record"] for rule in rules() if "record" in rule)


def test_rules_and_tests_point_at_each_other() -> None:
    config = load_yaml(CONFIG)
    assert config["rule_files"] == ["alerts.yml"]
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "champion"]
    assert job["metrics_path"] == "/metrics"
    assert load_yaml(RULE_TESTS)["rule_files"] == ["alerts.yml"]


EXPECTED_ALERTS = {
    "ChampionSustainedDrift",
    "ChampionDatasetDrift",
    "ChampionStaleModel",
    "ChampionRetrainFailing",
    "ChampionRetrainTicksMissed",
    "ChampionSwapFailures",
    "ChampionHighErrorRate",
    "ChampionHighLatency",
    "ChampionNoTraffic",
    "ChampionNotServing",
    "ChampionBackgroundErrors",
    "ChampionCaptureDropping",
}


def test_every_alert_is_routable_and_explained() -> None:
    alerts = alert_rules()
    assert {rule["alert"] for rule in alerts} == EXPECTED_ALERTS
    for rule in alerts:
        name = rule["alert"]
        assert "for" in rule, f"{name}: give it a `for:` duration (0m for events)"
        assert rule.get("labels", {}).get("severity") in {"critical", "warning"}, name
        annotations = rule.get("annotations", {})
        missing = {"summary", "description", "runbook"} - set(annotations)
        assert not missing, f"{name}: missing annotations {sorted(missing)}"


def test_every_alert_rule_has_a_firing_and_a_quiet_test_case() -> None:
    """Each rule (rules sharing an alert name count separately) fires in some case with all
    its labels, and each alert name has a case where it must not fire."""
    firing: dict[str, list[dict[str, str]]] = {}
    quiet: set[str] = set()
    for test in load_yaml(RULE_TESTS)["tests"]:
        for case in test.get("alert_rule_test") or []:
            expected = case.get("exp_alerts") or []
            if expected:
                firing.setdefault(case["alertname"], []).extend(
                    {str(k): str(v) for k, v in (alert.get("exp_labels") or {}).items()}
                    for alert in expected
                )
            else:
                quiet.add(case["alertname"])
    problems = []
    for rule in alert_rules():
        name = rule["alert"]
        labels = {str(k): str(v) for k, v in (rule.get("labels") or {}).items()}
        if not any(labels.items() <= seen.items() for seen in firing.get(name, [])):
            problems.append(f"{name} {labels}: no test case where it fires")
        if name not in quiet:
            problems.append(f"{name}: no test case where it stays quiet (exp_alerts: [])")
    assert not problems, "\n".join(problems)


def template_queries(text: str) -> list[str]:
    """PromQL built with printf in an annotation template, with %q/%s filled in."""
    formats = re.findall(r'printf\s+("(?:[^"\\]|\\.)*")', text)
    return [str(json.loads(f)).replace("%q", '"x"').replace("%s", "x") for f in formats]


def test_alert_rules_select_only_exported_metrics() -> None:
    """In expressions and in the queries annotation templates run."""
    problems = []
    for rule in rules():
        name = rule.get("alert") or rule["record"]
        found = selectors(rule["expr"])
        assert found, f"{name}: no metric found in its expression"
        for text in (rule.get("annotations") or {}).values():
            for query in template_queries(text):
                found += selectors(query)
        problems += [f"{name}: {p}" for p in check_selectors(found, recorded())]
    assert not problems, "\n".join(problems)


def test_a_typo_in_a_rule_is_caught() -> None:
    """The checker itself: misspelt metrics, labels and label values are all reported."""
    bad = (
        'sum by (job) (rate(champion_predictons_total{outcome="error"}[5m]))'
        ' / on (job) sum by (job) (rate(champion_predictions_total{outcom="ok"}[5m]))'
        ' or increase(champion_retrain_runs_total{verdict=~"FAILED|FAIL"}[1h])'
        ' or max by (job) (champion_retrain_ticks_total{outcome="eror"})'
        ' or rate(champion_request_duration_seconds_count{outcome="okay"}[5m])'
        " or rate(bentoml_service_request_total[5m])"
    )
    problems = check_selectors(selectors(bad), frozenset())
    for needle in (
        "'champion_predictons_total'",
        "'outcom'",
        "'FAIL' is",
        "'eror'",
        "'okay'",
        "'bentoml_service_request_total'",
    ):
        assert any(needle in p for p in problems), (needle, problems)
    ok = 'sum by (job) (rate(champion_predictions_total{outcome=~"error|unavailable"}[5m]))'
    assert check_selectors(selectors(ok), frozenset()) == []


def test_exported_metrics_are_registered_by_the_service() -> None:
    """Every champion_* name the rules may use is one champion.monitoring.metrics registers."""
    from prometheus_client import CollectorRegistry

    from champion.monitoring.metrics import ServiceMetrics

    registry = CollectorRegistry()
    ServiceMetrics(registry, features=("salary",))
    registered: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            registered.add(f"{family.name}_total")
        elif family.type == "histogram":
            registered |= set(_histogram(family.name, NONE))
        else:
            registered.add(family.name)
    ours = {name for name in EXPORTED if name.startswith("champion_")}
    assert not ours - registered, f"not registered by the service: {sorted(ours - registered)}"


# ---------------------------------------------------------------------------------------
# Grafana
# ---------------------------------------------------------------------------------------
def load_dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    queries = [
        (panel["title"], target["expr"])
        for panel in all_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    queries += [
        (f"annotation {a['name']}", a["expr"])
        for a in dashboard.get("annotations", {}).get("list", [])
        if "expr" in a
    ]
    return queries


def grafana_to_promql(expr: str) -> str:
    for variable, value in {
        "$__rate_interval": "1m",
        "$__interval": "1m",
        "$__range": "1h",
    }.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def test_dashboard_is_valid_and_uses_the_provisioned_datasource() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 38
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    wanted = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for panel in all_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == wanted, panel["title"]
        assert panel.get("targets"), f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"] == wanted, panel["title"]

    [ds_var] = [v for v in dashboard["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
    assert ds_var["type"] == "datasource" and ds_var["query"] == "prometheus"
    [datasource] = load_yaml(DATASOURCES)["datasources"]
    assert datasource["type"] == "prometheus"
    assert ds_var["current"]["value"] == datasource["uid"]
    [provider] = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]

    titles = " | ".join(p.get("title", "") for p in all_panels(dashboard["panels"])).lower()
    topics = (
        "traffic",
        "latency",
        "errors",
        "serving version",
        "drift score",
        "drift detected",
        "dataset drift share",
        "retrain verdicts",
        "live quality",
    )
    for topic in topics:
        assert topic in titles, f"no panel about {topic!r}"


def test_dashboard_selects_only_exported_metrics() -> None:
    dashboard = load_dashboard()
    problems = []
    for title, expr in dashboard_queries(dashboard):
        found = selectors(grafana_to_promql(expr))
        assert found, f"{title}: no metric found in {expr!r}"
        problems += [f"{title}: {p}" for p in check_selectors(found, recorded())]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
        assert match, variable["definition"]
        found = selectors(grafana_to_promql(match[1]))
        problems += [f"${variable['name']}: {p}" for p in check_selectors(found, recorded())]
        [(metric, _)] = found
        if match[2] not in labels_of(metric, frozenset()) | SCRAPE_LABELS:
            problems.append(f"${variable['name']}: {metric} has no label {match[2]!r}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------
# A small PromQL reader: the metric selectors of an expression and their label matchers.
# ---------------------------------------------------------------------------------------
@dataclass
class Matcher:
    label: str
    op: str
    value: str


@dataclass
class _Reader:
    tokens: list[tuple[str, str]]
    pos: int = 0
    found: list[tuple[str, list[Matcher]]] = field(default_factory=list)


_TOKEN = re.compile(
    r"""
    (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<num>\d[\w.]*|\.\d[\w.]*)
  | (?P<ident>[A-Za-z_:][\w:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=,])
  | (?P<punct>[(){}\[\]])
  | (?P<ws>\s+)
  | (?P<other>.)
    """,
    re.VERBOSE,
)
# Words followed by a list of label names, not metrics: `by (job)`, `on (job, instance)`.
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = _LABEL_LISTS | {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
_AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
}


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]  # raw string
    if text.startswith("'"):
        text = '"' + text[1:-1].replace("\\'", "'").replace('"', '\\"') + '"'
    return str(json.loads(text))  # Go and JSON escapes agree on what rules use


def selectors(expr: str) -> list[tuple[str, list[Matcher]]]:
    """(metric name, matchers) of every vector selector in a PromQL expression."""
    tokens = [(m.lastgroup or "", m.group()) for m in _TOKEN.finditer(expr) if m.lastgroup != "ws"]
    reader = _Reader(tokens)
    while reader.pos < len(tokens):
        kind, text = tokens[reader.pos]
        following = tokens[reader.pos + 1][1] if reader.pos + 1 < len(tokens) else ""
        reader.pos += 1
        if text == "[":  # a range or subquery: durations and Grafana variables only
            while reader.pos < len(tokens) and tokens[reader.pos][1] != "]":
                reader.pos += 1
            reader.pos += 1
        elif kind == "ident" and text in _LABEL_LISTS and following == "(":
            while reader.pos < len(tokens) and tokens[reader.pos][1] != ")":
                reader.pos += 1
            reader.pos += 1
        elif kind == "ident" and (following == "(" or text in _KEYWORDS or text in _AGGREGATIONS):
            continue  # a function, an aggregation or a keyword
        elif kind == "ident":
            matchers = _matchers(reader) if following == "{" else []
            reader.found.append((text, matchers))
        elif text == "{":
            reader.pos -= 1
            matchers = _matchers(reader)
            names = [m.value for m in matchers if m.label == "__name__" and m.op == "="]
            reader.found.append((names[0] if names else "{no metric name}", matchers))
    return reader.found


def _matchers(reader: _Reader) -> list[Matcher]:
    assert reader.tokens[reader.pos][1] == "{"
    reader.pos += 1
    out: list[Matcher] = []
    while reader.pos < len(reader.tokens) and reader.tokens[reader.pos][1] != "}":
        (_, label), (_, op), (kind, value) = reader.tokens[reader.pos : reader.pos + 3]
        assert kind == "str", f"label {label}: expected a quoted value, got {value!r}"
        out.append(Matcher(label, op, _unquote(value)))
        reader.pos += 3
        if reader.tokens[reader.pos][1] == ",":
            reader.pos += 1
    reader.pos += 1
    return out


def labels_of(metric: str, recorded_names: frozenset[str]) -> frozenset[str]:
    if metric in EXPORTED:
        return EXPORTED[metric]
    if metric in recorded_names:
        return NONE
    return SYNTHETIC.get(metric) or NONE


def check_selectors(
    found: list[tuple[str, list[Matcher]]], recorded_names: frozenset[str]
) -> list[str]:
    problems = []
    for metric, matchers in found:
        if metric not in EXPORTED and metric not in recorded_names and metric not in SYNTHETIC:
            problems.append(f"unknown metric {metric!r}")
            continue
        if metric in SYNTHETIC and SYNTHETIC[metric] is None:
            continue  # any label (ALERTS)
        allowed = labels_of(metric, recorded_names) | SCRAPE_LABELS
        for m in matchers:
            if m.label not in allowed:
                problems.append(f"{metric} has no label {m.label!r} (it has {sorted(allowed)})")
                continue
            values = LABEL_VALUES.get((metric, m.label))
            if values is None:
                continue
            if m.op in ("=", "!="):
                wanted = [m.value]
            elif re.fullmatch(r"[\w/]+(\|[\w/]+)*", m.value):
                wanted = m.value.split("|")  # a plain alternation: check each value
            else:
                continue
            problems += [
                f"{metric}{{{m.label}{m.op}{m.value!r}}}: {v!r} is not one of {sorted(values)}"
                for v in wanted
                if v not in values
            ]
    return problems

"""The drift report: one self-contained HTML page (inline PNG histograms, statistics, history)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from champion.monitoring.drift import DriftReport, FeatureDrift
from champion.monitoring.profile import bin_frequencies
from champion.training.records import LedgerEntry

CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2430}
h1{margin-bottom:.2rem} .sub{color:#5b6575;margin-top:0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:1rem}
.card{border:1px solid #d8dde6;border-radius:8px;padding:.8rem}
.card.drift{border-color:#d9534f;box-shadow:0 0 0 2px #f3c5c4}
.card h3{margin:.1rem 0 .4rem;font-size:1.05rem} .card img{width:100%}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:1rem;font-size:.8rem}
.ok{background:#dff3e4;color:#1e6b34} .drift{background:#fbe1e0;color:#a12622}
.insufficient_data{background:#eceff3;color:#4a5566}
table{border-collapse:collapse;width:100%;font-size:.9rem}
td,th{border-bottom:1px solid #e4e8ee;padding:.3rem .5rem;text-align:left}
.summary{font-size:1.1rem;padding:.8rem;border-radius:8px;background:#f4f6f9}
"""


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _bars(labels: Sequence[str], ref: Sequence[float], live: Sequence[float], title: str) -> str:
    fig = Figure(figsize=(4.6, 2.4))
    ax = fig.subplots()
    x = np.arange(len(labels))
    ax.bar(x - 0.2, ref, width=0.4, label="reference", color="#8da0cb")
    ax.bar(x + 0.2, live, width=0.4, label="live", color="#fc8d62")
    ax.set_xticks(x, labels, rotation=45 if len(labels) > 6 else 0, fontsize=7)
    ax.set_ylabel("share", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def _numeric_chart(name: str, ref: Mapping[str, Any], values: np.ndarray) -> str | None:
    edges = list(ref.get("edges") or [])
    if len(edges) < 2:
        return None
    live = bin_frequencies(values[np.isfinite(values)], edges) if values.size else None
    if live is None:
        return None
    labels = [f"{edges[i]:.3g}" for i in range(len(edges) - 1)]
    return _bars(labels, ref["frequencies"], list(live), f"{name}: share per reference bin")


def _categorical_chart(name: str, ref: Mapping[str, Any], values: Sequence[Any]) -> str | None:
    freqs = dict(ref.get("frequencies") or {})
    present = [str(v) for v in values if v is not None and v == v]
    if not present:
        return None
    live_counts: dict[str, int] = {}
    for v in present:
        live_counts[v] = live_counts.get(v, 0) + 1
    cats = sorted(freqs)
    unseen = sum(n for c, n in live_counts.items() if c not in freqs)
    labels = [*cats, "(unseen)"]
    ref_share = [freqs[c] for c in cats] + [0.0]
    live_share = [live_counts.get(c, 0) / len(present) for c in cats] + [unseen / len(present)]
    return _bars(labels, ref_share, live_share, f"{name}: share per category")


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _card(result: FeatureDrift, chart: str | None) -> str:
    img = (
        f'<img alt="{html.escape(result.feature)}" src="data:image/png;base64,{chart}">'
        if (chart)
        else "<p><em>no chart: not enough live data</em></p>"
    )
    cls = "card drift" if result.drifted else "card"
    return (
        f'<div class="{cls}"><h3>{html.escape(result.feature)} '
        f'<span class="badge {result.status}">{result.status.replace("_", " ")}</span></h3>'
        f"{img}<table><tr><th>PSI</th><td>{_fmt(result.psi)}</td>"
        f"<th>threshold</th><td>{_fmt(result.threshold)}</td></tr>"
        f"<tr><th>p-value</th><td>{_fmt(result.p_value)}</td><th>rows</th>"
        f"<td>{result.window_rows}</td></tr></table>"
        f"<p>{html.escape(result.detail)}</p></div>"
    )


def render(
    *,
    title: str,
    model_version: str,
    report: DriftReport,
    profile: Mapping[str, Any],
    live: Mapping[str, Sequence[Any]],
    history: Sequence[Mapping[str, Any]],
) -> str:
    """Build the page; every figure is inline so the file can be mailed or archived."""
    features = profile.get("features", {})
    cards = []
    for result in report.features:
        ref = features.get(result.feature, {})
        values = live.get(result.feature, [])
        if ref.get("type") == "numeric":
            arr = np.asarray([np.nan if v is None else v for v in values], dtype=float)
            chart = _numeric_chart(result.feature, ref, arr)
        else:
            chart = _categorical_chart(result.feature, ref, values)
        cards.append(_card(result, chart))
    verdict = "Dataset drift detected" if report.dataset_drift else "No dataset drift"
    flagged = ", ".join(report.family_flagged) or "none"
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(value or ''))}</td>"
            for value in (e.at, e.event, e.verdict, e.champion_after, e.reason)
        )
        + "</tr>"
        for e in (LedgerEntry.from_record(r) for r in reversed(list(history)[-30:]))
    )
    pred = report.prediction
    pred_line = (
        f"<p>Predictions: <b>{pred.status}</b> (PSI {_fmt(pred.psi)}, threshold "
        f"{_fmt(pred.threshold)}, p {_fmt(pred.p_value)})</p>"
        if pred
        else ""
    )
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>{html.escape(title)} drift report</title><style>{CSS}</style></head><body>
<h1>{html.escape(title)}: drift report</h1>
<p class="sub">model v{html.escape(model_version)} · {report.window_rows} live rows ·
written {datetime.now(UTC):%Y-%m-%d %H:%M UTC}</p>
<div class="summary"><b>{verdict}</b>: {report.drift_share:.0%} of features drifted at
α = {report.alpha:g} per feature; significant after Holm's correction at
{report.family_alpha:g}: {html.escape(flagged)}.</div>
{pred_line}
<h2>Features</h2><div class="cards">{"".join(cards)}</div>
<h2>Verdict history</h2>
<table><tr><th>when</th><th>event</th><th>verdict</th><th>champion</th><th>why</th></tr>
{rows}</table>
<p class="sub">Thresholds are calibrated to the window size: see docs/drift.md.</p>
</body></html>"""

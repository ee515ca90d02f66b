"""The promotion gate: a paired, noise-aware decision between challenger and champion."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from champion.training.config import METRICS, Contract, GateSection
from champion.training.records import Verdict


@dataclass(frozen=True)
class Backtest:
    """Both models' primary metric on held-out OLDER rows of the window (natural units).

    The challenger was refit without these rows. Every older row is in the champion's
    batches, so the champion is its recipe refit on the other older rows (`champion_refit`),
    or else the deployed model scored in-sample, which flatters it (conservative).
    """

    metric: str
    rows: int
    challenger: float
    champion: float
    champion_refit: bool = True


@dataclass(frozen=True)
class PairedScores:
    """Per-fold metric values of both models on the same validation folds (natural units)."""

    challenger: Mapping[str, Sequence[float]]
    champion: Mapping[str, Sequence[float]]
    test_train_ratio: float
    backtest: Backtest | None = None


@dataclass(frozen=True)
class MetricCheck:
    """One metric's comparison; `str()` is a sentence a person can read."""

    metric: str
    role: str  # "primary" | "guardrail" | "backtest" | "floor"
    # For "backtest", `folds` counts the held-out rows.
    challenger: float
    champion: float | None
    delta: float | None  # oriented: positive means the challenger is better
    threshold: float
    passed: bool
    lower: float | None = None
    upper: float | None = None
    p_value: float | None = None
    folds: int = 0
    # Where `threshold` came from, e.g. "gate.min_delta" or "1.0% of the champion's 0.8000".
    rule: str = ""
    # For "backtest": how the champion was scored ("refit without them", "as deployed").
    note: str = ""

    def __str__(self) -> str:
        rule = f" ({self.rule})" if self.rule else ""
        if self.role == "backtest":
            assert self.champion is not None
            gap = self.challenger - self.champion
            side = "below" if gap < 0 else "above"
            verdict = "within" if self.passed else "beyond"
            note = f" ({self.note})" if self.note else ""
            return (
                f"on {self.folds} held-out older rows the challenger's {self.metric} "
                f"{self.challenger:.4f} is {abs(gap):.4f} {side} the champion's "
                f"{self.champion:.4f}{note}; {verdict} the backtest tolerance "
                f"{self.threshold:.4f}{rule}"
            )
        if self.role == "floor":
            cmp = "reaches" if self.passed else "falls short of"
            return f"{self.metric} {self.challenger:.4f} {cmp} the floor {self.threshold:.4f}"
        assert self.delta is not None and self.champion is not None
        base = (
            f"{self.metric}: challenger {self.challenger:.4f} vs champion {self.champion:.4f} "
            f"(mean paired change {self.delta:+.4f} over {self.folds} folds"
        )
        if self.role == "guardrail":
            verdict = "within" if self.passed else "beyond"
            return f"{base}); a drop {verdict} the tolerance {self.threshold:.4f}{rule}"
        interval = ""
        if self.lower is not None and self.upper is not None:
            interval = f", interval [{self.lower:+.4f}, {self.upper:+.4f}]"
        if self.passed:
            tail = (
                f"credibly better (lower bound above zero) and by {self.threshold:.4f}{rule} "
                "or more on average"
            )
        elif self.upper is not None and self.upper < 0:
            tail = "credibly worse"
        else:
            tail = f"not credibly better by the margin {self.threshold:.4f}{rule}"
        return f"{base}{interval}): {tail}"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    checks: tuple[MetricCheck, ...] = ()
    numbers: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "reason": self.reason,
            "checks": [asdict(c) | {"sentence": str(c)} for c in self.checks],
            "numbers": dict(self.numbers),
        }


def _clean_pairs(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def corrected_t_interval(
    deltas: np.ndarray, *, test_train_ratio: float, confidence: float, repeats: int = 1
) -> tuple[float, float, float]:
    """Nadeau & Bengio's corrected resampled t-test: (lower, upper, one-sided p-value).

    CV folds share training rows, so the plain t-test's variance is far too small; the
    correction inflates it by n_test/n_train.

    `deltas` from `repeats` repeats of k-fold (repeat by repeat) re-test the same rows in
    every repeat: they carry about k independent pieces of evidence, not r*k. So the variance
    is the fold-to-fold variance within a repeat (averaged over repeats) and the degrees of
    freedom are k - 1. Bouckaert & Frank's r*k - 1 promoted 8 in 100 same-concept logistic
    challengers at 95 %; this promotes 3 (tests/unit/test_false_promotions.py).
    """
    n = len(deltas)
    blocks = repeats if repeats > 1 and n % repeats == 0 and n // repeats >= 2 else 1
    k = n // blocks
    mean = float(np.mean(deltas))
    var = float(np.mean(np.var(np.reshape(deltas, (blocks, k)), axis=1, ddof=1)))
    se = math.sqrt((1.0 / k + test_train_ratio) * var)
    if se == 0.0:
        p = 0.0 if mean > 0 else 1.0
        return mean, mean, p
    tq = float(stats.t.ppf(confidence, df=k - 1))
    p = float(stats.t.sf(mean / se, df=k - 1))
    return mean - tq * se, mean + tq * se, p


def bootstrap_interval(
    deltas: np.ndarray,
    *,
    confidence: float,
    samples: int,
    seed: int,
    test_train_ratio: float,
    repeats: int = 1,
) -> tuple[float, float, float]:
    """Percentile bootstrap of the mean delta: (lower, upper, share of resamples ≤ 0).

    Fold deltas are correlated (shared training rows), so they are spread around their mean
    by the same factor the corrected t-test applies, sqrt(1 + k * n_test/n_train); a plain
    bootstrap would be as over-confident as the uncorrected t-test.
    """
    rng = np.random.default_rng(seed)
    mean = float(np.mean(deltas))
    # As in `corrected_t_interval`: r repeats of k folds are worth k draws, not r*k.
    k = len(deltas) // repeats if repeats > 1 and len(deltas) % repeats == 0 else len(deltas)
    k = max(k, 2) if len(deltas) >= 2 else len(deltas)
    spread = mean + (deltas - mean) * np.sqrt(1.0 + k * test_train_ratio)
    means = rng.choice(spread, size=(samples, k), replace=True).mean(axis=1)
    alpha = 1.0 - confidence
    return (
        float(np.quantile(means, alpha)),
        float(np.quantile(means, 1.0 - alpha)),
        float(np.mean(means <= 0)),
    )


def decide(
    paired: PairedScores, *, contract: Contract, schema_problems: Sequence[str] = ()
) -> Decision:
    """Compare a challenger with the deployed champion on paired folds.

    PROMOTE needs all of: mean change ≥ the margin (the larger of `min_delta` and
    `min_delta_relative` × |champion's mean|), the one-sided interval above zero, every
    guardrail within its tolerance (absolute, or relative to the champion's value), the
    backtest on held-out older rows (when measured) within `gate.backtest_tolerance`, and an
    input schema that matches the contract. Changes are oriented: positive is better.
    """
    gate = contract.gate
    primary = contract.metrics.primary
    if schema_problems:
        return Decision(
            Verdict.REJECT,
            "The challenger's input schema does not match the contract: "
            + "; ".join(schema_problems),
        )
    chal, champ = _clean_pairs(paired.challenger[primary], paired.champion[primary])
    if len(chal) < 2:
        return Decision(
            Verdict.HOLD,
            f"Only {len(chal)} usable paired folds for {primary}; not enough fresh data to "
            "compare, so the champion stays.",
        )
    deltas = _orientation(primary) * (chal - champ)
    interval = _paired_interval(deltas, paired=paired, contract=contract)
    head = _primary_check(primary, chal=chal, champ=champ, interval=interval, gate=gate)
    backtest = _backtest_check(paired.backtest, gate=gate)
    checks = (head, *_guardrail_checks(paired, contract=contract), *backtest)
    numbers = _numbers(primary, interval, gate=gate) | {"margin": head.threshold}
    for check in backtest:
        numbers |= {
            "backtest_rows": check.folds,
            "backtest_challenger": check.challenger,
            "backtest_champion": check.champion,
            "backtest_delta": check.delta,
            "backtest_tolerance": check.threshold,
        }
    return _verdict(checks, interval=interval, numbers=numbers)


@dataclass(frozen=True)
class _Interval:
    """The primary metric's mean paired change and its one-sided interval."""

    mean: float
    lower: float
    upper: float
    p_value: float
    folds: int


def _orientation(metric: str) -> float:
    # Deltas are oriented so that positive always means the challenger is better.
    return 1.0 if METRICS[metric][1] else -1.0


def _paired_interval(deltas: np.ndarray, *, paired: PairedScores, contract: Contract) -> _Interval:
    """The interval of the contract's chosen method around the mean oriented delta."""
    gate = contract.gate
    if gate.method == "bootstrap":
        lower, upper, p = bootstrap_interval(
            deltas,
            confidence=gate.confidence,
            samples=gate.bootstrap_samples,
            seed=contract.search.seed,
            test_train_ratio=paired.test_train_ratio,
            repeats=contract.cv.repeats,
        )
    else:
        lower, upper, p = corrected_t_interval(
            deltas,
            test_train_ratio=paired.test_train_ratio,
            confidence=gate.confidence,
            repeats=contract.cv.repeats,
        )
    return _Interval(float(np.mean(deltas)), lower, upper, p, len(deltas))


def _relative_rule(fraction: float, champion: float) -> str:
    return f"{fraction:.1%} of the champion's {champion:.4f}"


def margin(gate: GateSection, champion: float) -> tuple[float, str]:
    """The smallest mean improvement required, and which setting it came from.

    `min_delta` is in the metric's units; `min_delta_relative` is a fraction of the champion's
    value (its magnitude). The larger applies; with no relative setting, `min_delta` alone.
    """
    relative = gate.min_delta_relative * abs(champion)
    if gate.min_delta_relative > 0 and relative > gate.min_delta:
        rule = f"gate.min_delta_relative: {_relative_rule(gate.min_delta_relative, champion)}"
        return relative, rule
    return gate.min_delta, "gate.min_delta"


def _primary_check(
    metric: str, *, chal: np.ndarray, champ: np.ndarray, interval: _Interval, gate: GateSection
) -> MetricCheck:
    """Passes only when the mean change reaches the margin and the interval clears zero."""
    threshold, rule = margin(gate, float(champ.mean()))
    return MetricCheck(
        metric=metric,
        role="primary",
        challenger=float(chal.mean()),
        champion=float(champ.mean()),
        delta=interval.mean,
        threshold=threshold,
        passed=interval.mean >= threshold and interval.lower > 0,
        lower=interval.lower,
        upper=interval.upper,
        p_value=interval.p_value,
        folds=interval.folds,
        rule=rule,
    )


def _guardrail_checks(paired: PairedScores, *, contract: Contract) -> list[MetricCheck]:
    """One check per guardrail with usable folds: the mean drop must stay within tolerance.

    The drop is oriented (a rise, for a loss). Tolerances in `metrics.guardrails` are in the
    metric's units; in `metrics.guardrails_relative`, a fraction of the champion's value.
    """
    checks: list[MetricCheck] = []
    spec = contract.metrics
    for metric in spec.guarded:
        g_chal, g_champ = _clean_pairs(paired.challenger[metric], paired.champion[metric])
        if len(g_chal) == 0:
            continue
        g_delta = float(np.mean(_orientation(metric) * (g_chal - g_champ)))
        champion = float(g_champ.mean())
        if metric in spec.guardrails:
            tolerance, rule = spec.guardrails[metric], "absolute"
        else:
            fraction = spec.guardrails_relative[metric]
            tolerance, rule = fraction * abs(champion), _relative_rule(fraction, champion)
        checks.append(
            MetricCheck(
                metric=metric,
                role="guardrail",
                challenger=float(g_chal.mean()),
                champion=champion,
                delta=g_delta,
                threshold=tolerance,
                passed=g_delta >= -tolerance,
                folds=len(g_chal),
                rule=rule,
            )
        )
    return checks


def backtest_tolerance(gate: GateSection, champion: float) -> tuple[float, str]:
    """How far the challenger may trail on the backtest, and which setting it came from.

    Like `margin`: `backtest_tolerance` in the metric's units, `backtest_tolerance_relative`
    a fraction of the champion's value (its magnitude); the larger applies.
    """
    relative = gate.backtest_tolerance_relative * abs(champion)
    if gate.backtest_tolerance_relative > 0 and relative > gate.backtest_tolerance:
        fraction = gate.backtest_tolerance_relative
        return relative, f"gate.backtest_tolerance_relative: {_relative_rule(fraction, champion)}"
    return gate.backtest_tolerance, "gate.backtest_tolerance"


def _backtest_check(backtest: Backtest | None, *, gate: GateSection) -> list[MetricCheck]:
    """The backtest as a check (none when it was not measured or is not finite)."""
    if backtest is None or not (
        math.isfinite(backtest.challenger) and math.isfinite(backtest.champion)
    ):
        return []
    delta = _orientation(backtest.metric) * (backtest.challenger - backtest.champion)
    tolerance, rule = backtest_tolerance(gate, backtest.champion)
    return [
        MetricCheck(
            metric=backtest.metric,
            role="backtest",
            challenger=backtest.challenger,
            champion=backtest.champion,
            delta=delta,
            threshold=tolerance,
            passed=delta >= -tolerance,
            folds=backtest.rows,
            rule=rule,
            note=(
                "its recipe refit without them"
                if backtest.champion_refit
                else "as deployed, trained on them"
            ),
        )
    ]


def _numbers(metric: str, interval: _Interval, *, gate: GateSection) -> dict[str, Any]:
    return {
        "metric": metric,
        "mean_delta": interval.mean,
        "lower": interval.lower,
        "upper": interval.upper,
        "p_value": interval.p_value,
        "folds": interval.folds,
        "confidence": gate.confidence,
        "min_delta": gate.min_delta,
        "min_delta_relative": gate.min_delta_relative,
        "method": gate.method,
    }


def _verdict(
    checks: tuple[MetricCheck, ...], *, interval: _Interval, numbers: Mapping[str, Any]
) -> Decision:
    """Guardrails (and the backtest) veto first; then a worse, better or undecided primary.

    A passed backtest is named in the sentence too, so every verdict says how it went.
    """
    head = str(checks[0])
    failed_guards = [c for c in checks[1:] if not c.passed]
    if failed_guards:
        why = "; ".join(str(c) for c in failed_guards)
        label = (
            "Backtest failed:"
            if all(c.role == "backtest" for c in failed_guards)
            else "Guardrail failed."
        )
        return Decision(Verdict.REJECT, f"{label} {why}. ({head})", checks, numbers)
    head += "".join(f"; {c}" for c in checks[1:] if c.role == "backtest")
    if interval.upper < 0:
        return Decision(Verdict.REJECT, f"The challenger is worse. {head}.", checks, numbers)
    if checks[0].passed:
        return Decision(Verdict.PROMOTE, f"The challenger is better. {head}.", checks, numbers)
    return Decision(
        Verdict.HOLD, f"No credible improvement; the champion stays. {head}.", checks, numbers
    )


def decide_first(cv_mean: float, *, contract: Contract) -> Decision:
    """With no champion yet, promote only a challenger that reaches the absolute floor.

    The floor is in the metric's units: a lower bound for scores, an upper bound for losses.
    """
    primary = contract.metrics.primary
    floor = contract.gate.floor
    ok = math.isfinite(cv_mean) and (cv_mean >= floor if METRICS[primary][1] else cv_mean <= floor)
    check = MetricCheck(
        metric=primary,
        role="floor",
        challenger=cv_mean,
        champion=None,
        delta=None,
        threshold=floor,
        passed=ok,
    )
    if ok:
        return Decision(
            Verdict.PROMOTE,
            f"No champion yet; cross-validated {check}.",
            (check,),
            {"metric": primary, "cv_mean": cv_mean, "floor": floor},
        )
    return Decision(
        Verdict.REJECT,
        f"No champion yet, and the best cross-validated {check}.",
        (check,),
        {"metric": primary, "cv_mean": cv_mean, "floor": floor},
    )

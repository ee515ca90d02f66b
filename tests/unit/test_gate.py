"""Unit tests of the promotion gate: the corrected t interval, decide() and decide_first()."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from champion.training.config import ConfigError, Contract, parse_contract
from champion.training.demo.simulate import agrawal_frame
from champion.training.evaluation import backtest_rows, paired_evaluation
from champion.training.gate import (
    Backtest,
    Decision,
    PairedScores,
    bootstrap_interval,
    corrected_t_interval,
    decide,
    decide_first,
)
from champion.training.pipeline import Candidate, build_pipeline, prepare_features
from champion.training.records import Verdict
from tests.unit.conftest import raw_contract

BOOSTING = Candidate("hist_gradient_boosting", {"max_iter": 15, "max_leaf_nodes": 15})
OLD_START = datetime(2026, 1, 1, tzinfo=UTC)
FRESH_START = datetime(2026, 3, 1, tzinfo=UTC)

# Ten fold deltas with a positive mean (0.01) but a spread (sd 0.0145) that the corrected
# test (ratio 0.25) cannot tell from noise; the naive test (ratio 0) can.
NOISY = np.array([0.025, -0.012, 0.018, 0.004, 0.031, -0.008, 0.022, 0.015, -0.002, 0.007])
CHAMP_AUC = np.array([0.80, 0.82, 0.79, 0.81, 0.83, 0.80, 0.78, 0.82, 0.81, 0.80])
WIGGLE = np.array([0.001, -0.001, 0.002, 0.0, -0.002, 0.001, 0.0, -0.001, 0.002, -0.002])
CHAMP_ACC = np.full(10, 0.75)
CHAMP_LOSS = np.full(10, 0.45)


def _contract(**changes: Any) -> Contract:
    """The shipped contract with `section__key=value` overrides (e.g. gate__method=...)."""
    raw = raw_contract()
    # The backtest is off by default; on here (unused without a Backtest), within 0.01.
    raw["gate"] |= {"backtest_rows": 300, "backtest_tolerance": 0.01}
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    return parse_contract(raw)


Scores = Sequence[float] | np.ndarray


def _paired(
    chal_auc: Scores,
    champ_auc: Scores = CHAMP_AUC,
    *,
    ratio: float = 0.25,
    chal_acc: Scores = CHAMP_ACC,
    chal_loss: Scores = CHAMP_LOSS,
) -> PairedScores:
    return PairedScores(
        challenger={
            "roc_auc": tuple(chal_auc),
            "accuracy": tuple(chal_acc),
            "log_loss": tuple(chal_loss),
        },
        champion={
            "roc_auc": tuple(champ_auc),
            "accuracy": tuple(CHAMP_ACC),
            "log_loss": tuple(CHAMP_LOSS),
        },
        test_train_ratio=ratio,
    )


def _numbers_in(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+\.\d{4}", text)]


# --- corrected_t_interval ----------------------------------------------------------------------


def test_corrected_t_matches_a_hand_computation() -> None:
    """It computes Nadeau & Bengio's interval: se = sqrt((1/k + ratio) * var), t with k-1 df."""
    deltas = np.array([0.01, 0.03, -0.005, 0.02, 0.015])
    k = 5
    mean = (0.01 + 0.03 - 0.005 + 0.02 + 0.015) / k
    var = sum((d - mean) ** 2 for d in deltas) / (k - 1)
    se = math.sqrt((1 / k + 0.25) * var)
    tq = stats.t.ppf(0.95, df=k - 1)
    assert tq == pytest.approx(2.131846786, rel=1e-8)
    lower, upper, p = corrected_t_interval(deltas, test_train_ratio=0.25, confidence=0.95)
    assert lower == pytest.approx(mean - tq * se, rel=1e-12)
    assert upper == pytest.approx(mean + tq * se, rel=1e-12)
    assert p == pytest.approx(stats.t.sf(mean / se, df=k - 1), rel=1e-12)
    assert 0.0 < p < 0.5


def test_corrected_t_widens_with_the_test_train_ratio() -> None:
    """It gives a wider interval and a larger p-value as the test/train ratio grows."""
    naive = corrected_t_interval(NOISY, test_train_ratio=0.0, confidence=0.95)
    corrected = corrected_t_interval(NOISY, test_train_ratio=0.25, confidence=0.95)
    assert naive[0] > 0 > corrected[0]
    assert corrected[1] - corrected[0] > naive[1] - naive[0]
    assert corrected[2] > 0.05 > naive[2]


@pytest.mark.parametrize(
    ("value", "p_expected"), [(0.01, 0.0), (-0.01, 1.0), (0.0, 1.0)], ids=["up", "down", "flat"]
)
def test_zero_variance_deltas_give_a_point_interval(value: float, p_expected: float) -> None:
    """It returns the mean as both bounds, without dividing by zero, when every delta is equal."""
    deltas = np.full(6, value)
    lower, upper, p = corrected_t_interval(deltas, test_train_ratio=0.25, confidence=0.95)
    assert lower == upper == pytest.approx(value)
    assert p == p_expected


def test_bootstrap_interval_is_seeded_and_brackets_the_mean() -> None:
    """It returns the same percentile interval for the same seed, bracketing the mean delta."""
    first = bootstrap_interval(NOISY, confidence=0.95, samples=2000, seed=3, test_train_ratio=0.25)
    assert (
        bootstrap_interval(NOISY, confidence=0.95, samples=2000, seed=3, test_train_ratio=0.25)
        == first
    )
    lower, upper, share = first
    assert lower < NOISY.mean() < upper
    assert 0.0 <= share < 0.5
    flat = bootstrap_interval(
        np.full(5, 0.02), confidence=0.95, samples=500, seed=0, test_train_ratio=0.25
    )
    assert flat[0] == pytest.approx(0.02)
    assert flat[1] == pytest.approx(0.02)
    assert flat[2] == 0.0


# --- decide ------------------------------------------------------------------------------------


def test_clear_improvement_is_promoted() -> None:
    """It promotes a challenger that is better on every fold by far more than min_delta."""
    decision = decide(_paired(CHAMP_AUC + 0.03 + WIGGLE), contract=_contract())
    assert decision.verdict is Verdict.PROMOTE
    assert decision.numbers["mean_delta"] == pytest.approx(0.03)
    assert decision.numbers["lower"] > 0
    assert all(c.passed for c in decision.checks)
    assert "better" in decision.reason


def test_improvement_below_min_delta_is_held() -> None:
    """It holds a challenger whose consistent improvement is smaller than min_delta."""
    contract = _contract(gate__min_delta=0.01)
    decision = decide(_paired(CHAMP_AUC + 0.005 + WIGGLE / 10), contract=contract)
    assert decision.numbers["lower"] > 0  # credible, but too small to be worth a swap
    assert decision.verdict is Verdict.HOLD
    assert "not credibly better by the margin 0.0100" in decision.reason


def test_noisy_improvement_is_held_only_thanks_to_the_correction() -> None:
    """It holds a noisy positive mean that the uncorrected t-test would have promoted."""
    contract = _contract(cv__repeats=1)  # ten folds, one repeat: ten separate test sets
    corrected = decide(_paired(CHAMP_AUC + NOISY, ratio=0.25), contract=contract)
    assert corrected.verdict is Verdict.HOLD
    assert corrected.numbers["mean_delta"] == pytest.approx(0.01)
    assert corrected.numbers["lower"] < 0 < corrected.numbers["upper"]
    naive = decide(_paired(CHAMP_AUC + NOISY, ratio=0.0), contract=contract)
    assert naive.verdict is Verdict.PROMOTE


def test_repeats_count_as_one_set_of_test_folds() -> None:
    """Two repeats of five folds re-test the same rows: the interval is that of five folds
    (variance within each repeat, df 4), wider than ten separate folds would give."""
    deltas = NOISY + 0.008
    ten = corrected_t_interval(deltas, test_train_ratio=0.25, confidence=0.95)
    two_by_five = corrected_t_interval(deltas, test_train_ratio=0.25, confidence=0.95, repeats=2)
    blocks = deltas.reshape(2, 5)
    var = float(np.mean(np.var(blocks, axis=1, ddof=1)))
    se = np.sqrt((1 / 5 + 0.25) * var)
    assert two_by_five[0] == pytest.approx(deltas.mean() - stats.t.ppf(0.95, 4) * se)
    assert two_by_five[0] < ten[0] and two_by_five[1] > ten[1]
    assert decide(_paired(CHAMP_AUC + deltas), contract=_contract(cv__repeats=1)).verdict is (
        Verdict.PROMOTE
    )
    assert decide(_paired(CHAMP_AUC + deltas), contract=_contract()).verdict is Verdict.HOLD


def test_clearly_worse_challenger_is_rejected() -> None:
    """It rejects a challenger whose whole interval lies below zero."""
    decision = decide(_paired(CHAMP_AUC - 0.03 + WIGGLE), contract=_contract())
    assert decision.verdict is Verdict.REJECT
    assert decision.numbers["upper"] < 0
    assert "worse" in decision.reason


def test_slightly_worse_but_noisy_challenger_is_held_not_rejected() -> None:
    """It holds (not rejects) a challenger whose negative mean is within the noise."""
    decision = decide(_paired(CHAMP_AUC - NOISY / 5), contract=_contract())
    assert decision.numbers["mean_delta"] < 0 < decision.numbers["upper"]
    assert decision.verdict is Verdict.HOLD


def test_guardrail_drop_beyond_tolerance_rejects_a_better_challenger() -> None:
    """It rejects a challenger that improves roc_auc but loses more accuracy than tolerated."""
    paired = _paired(CHAMP_AUC + 0.03 + WIGGLE, chal_acc=CHAMP_ACC - 0.03)
    decision = decide(paired, contract=_contract())
    assert decision.verdict is Verdict.REJECT
    assert decision.reason.startswith("Guardrail failed.")
    assert "accuracy" in decision.reason
    assert "beyond the tolerance 0.0200" in decision.reason
    (failed,) = [c for c in decision.checks if not c.passed]
    assert failed.metric == "accuracy"
    assert failed.delta == pytest.approx(-0.03)


def test_guardrail_drop_within_tolerance_is_allowed() -> None:
    """It promotes a better challenger whose accuracy drop stays within the tolerance."""
    paired = _paired(CHAMP_AUC + 0.03 + WIGGLE, chal_acc=CHAMP_ACC - 0.015)
    assert decide(paired, contract=_contract()).verdict is Verdict.PROMOTE


@pytest.mark.parametrize(
    ("loss_change", "verdict"),
    [(+0.08, Verdict.REJECT), (+0.03, Verdict.PROMOTE), (-0.2, Verdict.PROMOTE)],
    ids=["loss-up-beyond", "loss-up-within", "loss-down"],
)
def test_loss_guardrail_is_oriented_lower_is_better(loss_change: float, verdict: Verdict) -> None:
    """It treats a rise in the log_loss guardrail as a drop, and a fall as an improvement."""
    paired = _paired(CHAMP_AUC + 0.03 + WIGGLE, chal_loss=CHAMP_LOSS + loss_change)
    decision = decide(paired, contract=_contract())
    assert decision.verdict is verdict
    (guard,) = [c for c in decision.checks if c.metric == "log_loss"]
    assert guard.delta == pytest.approx(-loss_change)


def _loss_contract() -> Contract:
    raw = raw_contract()
    raw["metrics"] = {"primary": "log_loss", "guardrails": {"accuracy": 0.02}}
    raw["gate"]["floor"] = 0.5
    return parse_contract(raw)


def _loss_paired(chal_loss: Scores) -> PairedScores:
    return PairedScores(
        challenger={"log_loss": tuple(chal_loss), "accuracy": tuple(CHAMP_ACC)},
        champion={"log_loss": tuple(CHAMP_LOSS), "accuracy": tuple(CHAMP_ACC)},
        test_train_ratio=0.25,
    )


def test_loss_primary_promotes_a_lower_loss() -> None:
    """It promotes a challenger whose log_loss (primary) is clearly lower."""
    decision = decide(_loss_paired(CHAMP_LOSS - 0.05 + WIGGLE), contract=_loss_contract())
    assert decision.verdict is Verdict.PROMOTE
    assert decision.numbers["mean_delta"] == pytest.approx(0.05)


def test_loss_primary_rejects_a_higher_loss() -> None:
    """It rejects a challenger whose log_loss (primary) is clearly higher."""
    decision = decide(_loss_paired(CHAMP_LOSS + 0.05 + WIGGLE), contract=_loss_contract())
    assert decision.verdict is Verdict.REJECT
    assert decision.numbers["mean_delta"] == pytest.approx(-0.05)


def test_schema_problems_reject_before_any_score() -> None:
    """It rejects a challenger whose input schema does not match, naming the problem."""
    decision = decide(
        _paired(CHAMP_AUC + 0.05),
        contract=_contract(),
        schema_problems=["column 'age' is missing"],
    )
    assert decision.verdict is Verdict.REJECT
    assert "column 'age' is missing" in decision.reason
    assert "schema" in decision.reason


def test_fewer_than_two_usable_folds_hold() -> None:
    """It holds when NaN folds leave fewer than two usable pairs."""
    chal = [0.9, math.nan, 0.95, math.nan]
    champ = [math.nan, 0.5, 0.5, math.nan]
    paired = PairedScores(
        challenger={"roc_auc": chal, "accuracy": [0.8] * 4, "log_loss": [0.4] * 4},
        champion={"roc_auc": champ, "accuracy": [0.8] * 4, "log_loss": [0.4] * 4},
        test_train_ratio=0.25,
    )
    decision = decide(paired, contract=_contract())
    assert decision.verdict is Verdict.HOLD
    assert "Only 1 usable paired folds for roc_auc" in decision.reason


def test_nan_folds_are_dropped_pairwise() -> None:
    """It ignores a fold where either model has no score, and counts the remaining folds."""
    chal = [*(CHAMP_AUC + 0.03 + WIGGLE), math.nan]
    champ = [*CHAMP_AUC, 0.8]
    paired = PairedScores(
        challenger={"roc_auc": chal, "accuracy": [0.8] * 11, "log_loss": [0.4] * 11},
        champion={"roc_auc": champ, "accuracy": [0.8] * 11, "log_loss": [0.4] * 11},
        test_train_ratio=0.25,
    )
    decision = decide(paired, contract=_contract())
    assert decision.verdict is Verdict.PROMOTE
    assert decision.numbers["folds"] == 10


def test_bootstrap_method_decides() -> None:
    """It promotes a clear gain, holds noise, and rejects a clear loss with the bootstrap."""
    contract = _contract(gate__method="bootstrap")
    up = decide(_paired(CHAMP_AUC + 0.03 + WIGGLE), contract=contract)
    assert up.verdict is Verdict.PROMOTE
    assert up.numbers["method"] == "bootstrap"
    very_noisy = NOISY * 4 - 0.03  # mean +0.01, sd 0.058
    held = decide(_paired(CHAMP_AUC + very_noisy), contract=contract)
    assert held.numbers["mean_delta"] == pytest.approx(0.01)
    assert held.numbers["lower"] < 0
    assert held.verdict is Verdict.HOLD
    down = decide(_paired(CHAMP_AUC - 0.03 + WIGGLE), contract=contract)
    assert down.verdict is Verdict.REJECT


def test_first_model_is_judged_on_the_floor() -> None:
    """It promotes a first model at or above the floor and rejects one below or undefined."""
    contract = _contract()
    assert decide_first(0.75, contract=contract).verdict is Verdict.PROMOTE
    assert decide_first(0.70, contract=contract).verdict is Verdict.PROMOTE
    below = decide_first(0.65, contract=contract)
    assert below.verdict is Verdict.REJECT
    assert "roc_auc 0.6500 falls short of the floor 0.7000" in below.reason
    assert decide_first(math.nan, contract=contract).verdict is Verdict.REJECT


def test_first_model_floor_of_a_loss_is_an_upper_bound() -> None:
    """It promotes a first model whose loss is at or under the floor and rejects a higher one."""
    contract = _loss_contract()
    assert decide_first(0.4, contract=contract).verdict is Verdict.PROMOTE
    assert decide_first(0.6, contract=contract).verdict is Verdict.REJECT


def test_first_model_floor_sentence_is_true_for_a_loss() -> None:
    """It never says a loss "is below the floor" when the loss is above it (the failing side)."""
    decision = decide_first(0.6, contract=_loss_contract())
    assert decision.verdict is Verdict.REJECT
    assert "0.6000 is below the floor 0.5000" not in decision.reason


def _all_decisions() -> list[Decision]:
    contract = _contract()
    return [
        decide(_paired(CHAMP_AUC + 0.03 + WIGGLE), contract=contract),
        decide(_paired(CHAMP_AUC + NOISY), contract=contract),
        decide(_paired(CHAMP_AUC - 0.03 + WIGGLE), contract=contract),
        decide(_paired(CHAMP_AUC + 0.03 + WIGGLE, chal_acc=CHAMP_ACC - 0.05), contract=contract),
        decide_first(0.8, contract=contract),
        decide_first(0.6, contract=contract),
    ]


def test_every_reason_is_a_sentence_with_metric_and_numbers() -> None:
    """It explains every verdict in a sentence naming the metric with its numbers."""
    for decision in _all_decisions():
        reason = decision.reason
        assert reason[0].isupper(), reason
        assert reason.rstrip().endswith((".", ")")), reason
        assert "roc_auc" in reason, reason
        assert len(_numbers_in(reason)) >= 2, reason
        for check in decision.checks:
            sentence = str(check)
            assert check.metric in sentence
            assert f"{check.challenger:.4f}" in sentence


def test_comparison_reason_quotes_both_means_and_the_interval() -> None:
    """It quotes challenger and champion means, the mean change and the interval bounds."""
    decision = decide(_paired(CHAMP_AUC + NOISY), contract=_contract())
    n = decision.numbers
    reason = decision.reason
    assert f"challenger {np.mean(CHAMP_AUC + NOISY):.4f}" in reason
    assert f"champion {np.mean(CHAMP_AUC):.4f}" in reason
    assert f"{n['mean_delta']:+.4f}" in reason
    assert f"[{n['lower']:+.4f}, {n['upper']:+.4f}]" in reason
    assert "over 10 folds" in reason


def test_decision_to_dict_is_json_serialisable() -> None:
    """It turns every decision into plain JSON with the verdict string and check sentences."""
    for decision in _all_decisions():
        body = json.loads(json.dumps(decision.to_dict(), allow_nan=False))
        assert body["verdict"] == decision.verdict.value
        assert body["reason"] == decision.reason
        assert [c["sentence"] for c in body["checks"]] == [str(c) for c in decision.checks]


# --- relative thresholds -------------------------------------------------------------------------


def test_absolute_min_delta_says_which_threshold_applied() -> None:
    """It names `gate.min_delta` as the margin when no relative margin is set."""
    decision = decide(_paired(CHAMP_AUC + 0.03 + WIGGLE), contract=_contract())
    assert decision.verdict is Verdict.PROMOTE
    assert decision.checks[0].threshold == pytest.approx(0.002)
    assert "(gate.min_delta)" in decision.reason


def test_relative_min_delta_holds_what_the_absolute_margin_would_promote() -> None:
    """It holds a +0.03 gain when the margin is 5 % of the champion's ~0.806 (~0.040)."""
    paired = _paired(CHAMP_AUC + 0.03 + WIGGLE)
    assert decide(paired, contract=_contract()).verdict is Verdict.PROMOTE
    decision = decide(paired, contract=_contract(gate__min_delta_relative=0.05))
    assert decision.verdict is Verdict.HOLD
    assert decision.numbers["lower"] > 0
    assert decision.numbers["margin"] == pytest.approx(0.05 * CHAMP_AUC.mean())
    assert "gate.min_delta_relative: 5.0% of the champion's 0.8060" in decision.reason


def test_the_larger_of_absolute_and_relative_margins_applies() -> None:
    """It keeps the absolute min_delta when it exceeds the relative one."""
    contract = _contract(gate__min_delta=0.05, gate__min_delta_relative=0.01)
    decision = decide(_paired(CHAMP_AUC + 0.03 + WIGGLE), contract=contract)
    assert decision.verdict is Verdict.HOLD
    assert decision.checks[0].threshold == pytest.approx(0.05)
    assert "(gate.min_delta)" in decision.reason


def test_relative_min_delta_on_a_loss_uses_the_champion_magnitude() -> None:
    """It scales the margin of a loss primary by the champion's loss (lower is better)."""
    raw = raw_contract()
    raw["metrics"] = {"primary": "log_loss", "guardrails": {"accuracy": 0.02}}
    raw["gate"] |= {"floor": 0.5, "min_delta_relative": 0.2}  # 20 % of 0.45 = 0.09
    contract = parse_contract(raw)
    assert decide(_loss_paired(CHAMP_LOSS - 0.05 + WIGGLE), contract=contract).verdict is (
        Verdict.HOLD
    )
    assert decide(_loss_paired(CHAMP_LOSS - 0.12 + WIGGLE), contract=contract).verdict is (
        Verdict.PROMOTE
    )


def _relative_guard_contract(fraction: float) -> Contract:
    raw = raw_contract()
    raw["metrics"]["guardrails"] = {"accuracy": 0.02}
    raw["metrics"]["guardrails_relative"] = {"log_loss": fraction}
    return parse_contract(raw)


@pytest.mark.parametrize(
    ("loss_change", "verdict"),
    [(+0.03, Verdict.REJECT), (+0.02, Verdict.PROMOTE), (-0.1, Verdict.PROMOTE)],
    ids=["beyond-5%", "within-5%", "loss-down"],
)
def test_relative_guardrail_scales_with_the_champion(loss_change: float, verdict: Verdict) -> None:
    """It tolerates a log_loss rise up to 5 % of the champion's 0.45 (0.0225), not more."""
    paired = _paired(CHAMP_AUC + 0.03 + WIGGLE, chal_loss=CHAMP_LOSS + loss_change)
    decision = decide(paired, contract=_relative_guard_contract(0.05))
    assert decision.verdict is verdict
    (guard,) = [c for c in decision.checks if c.metric == "log_loss"]
    assert guard.threshold == pytest.approx(0.0225)
    assert "5.0% of the champion's 0.4500" in str(guard)


def test_relative_guardrail_rejects_what_an_absolute_reading_would_pass() -> None:
    """It fails if 0.05 were read in log_loss units: a +0.03 rise is within 0.05, beyond 5 %."""
    paired = _paired(CHAMP_AUC + 0.03 + WIGGLE, chal_loss=CHAMP_LOSS + 0.03)
    assert decide(paired, contract=_contract()).verdict is Verdict.PROMOTE  # absolute 0.05
    decision = decide(paired, contract=_relative_guard_contract(0.05))
    assert decision.verdict is Verdict.REJECT
    assert "beyond the tolerance 0.0225 (5.0% of the champion's 0.4500)" in decision.reason


def test_floor_is_an_upper_bound_for_a_loss() -> None:
    """It promotes a first loss model at or below the floor, and rejects one above it."""
    contract = _loss_contract()  # floor 0.5 on log_loss
    assert decide_first(0.4, contract=contract).verdict is Verdict.PROMOTE
    assert decide_first(0.6, contract=contract).verdict is Verdict.REJECT


# --- backtest on held-out older rows -----------------------------------------------------------

CLEARLY_BETTER = CHAMP_AUC + 0.03 + WIGGLE


def _backtested(
    paired: PairedScores, challenger: float, champion: float, *, metric: str = "roc_auc"
) -> PairedScores:
    return dataclasses.replace(
        paired, backtest=Backtest(metric, 300, challenger, champion, champion_refit=True)
    )


def test_backtest_refuses_a_challenger_worse_on_the_older_population() -> None:
    """It rejects a challenger better on fresh rows but 0.05 below on held-out older rows."""
    contract = _contract()
    paired = _paired(CLEARLY_BETTER)
    assert decide(paired, contract=contract).verdict is Verdict.PROMOTE  # without the guard
    decision = decide(_backtested(paired, 0.80, 0.85), contract=contract)
    assert decision.verdict is Verdict.REJECT
    assert decision.reason.startswith("Backtest failed: on 300 held-out older rows")
    assert "the challenger's roc_auc 0.8000 is 0.0500 below the champion's 0.8500" in (
        decision.reason
    )
    assert "beyond the backtest tolerance 0.0100 (gate.backtest_tolerance)" in decision.reason
    (failed,) = [c for c in decision.checks if not c.passed]
    assert failed.role == "backtest"
    assert failed.delta == pytest.approx(-0.05)
    assert decision.numbers["backtest_rows"] == 300
    assert decision.numbers["backtest_delta"] == pytest.approx(-0.05)
    assert decision.numbers["backtest_tolerance"] == pytest.approx(0.01)
    json.dumps(decision.to_dict())


def test_backtest_within_tolerance_promotes_and_says_so() -> None:
    """It promotes when the older-rows shortfall (0.004) is within the tolerance (0.01)."""
    decision = decide(_backtested(_paired(CLEARLY_BETTER), 0.846, 0.85), contract=_contract())
    assert decision.verdict is Verdict.PROMOTE
    assert "on 300 held-out older rows the challenger's roc_auc 0.8460 is 0.0040 below" in (
        decision.reason
    )
    assert "within the backtest tolerance 0.0100" in decision.reason


def test_backtest_is_named_in_a_held_verdict_too() -> None:
    """It names a passed backtest in every verdict's sentence, not only in a promotion."""
    decision = decide(_backtested(_paired(CHAMP_AUC + NOISY), 0.86, 0.85), contract=_contract())
    assert decision.verdict is Verdict.HOLD
    assert "0.0100 above the champion's 0.8500" in decision.reason


def test_backtest_tolerance_relative_applies_when_larger() -> None:
    """It tolerates 5 % of the champion's 0.85 (0.0425) when that beats the absolute 0.01."""
    paired = _backtested(_paired(CLEARLY_BETTER), 0.82, 0.85)
    assert decide(paired, contract=_contract()).verdict is Verdict.REJECT
    decision = decide(paired, contract=_contract(gate__backtest_tolerance_relative=0.05))
    assert decision.verdict is Verdict.PROMOTE
    assert "(gate.backtest_tolerance_relative: 5.0% of the champion's 0.8500)" in decision.reason


def test_backtest_of_a_loss_is_oriented() -> None:
    """It refuses a log_loss 0.05 higher on older rows, and accepts one 0.05 lower."""
    paired = _loss_paired(CHAMP_LOSS - 0.05 + WIGGLE)
    worse = decide(_backtested(paired, 0.50, 0.45, metric="log_loss"), contract=_loss_contract())
    assert worse.verdict is Verdict.REJECT
    assert "0.0500 above the champion's 0.4500" in worse.reason
    better = decide(_backtested(paired, 0.40, 0.45, metric="log_loss"), contract=_loss_contract())
    assert better.verdict is Verdict.PROMOTE


def test_backtest_with_an_undefined_score_is_left_out() -> None:
    """It adds no check when the backtest score is not finite (e.g. one class held out)."""
    decision = decide(_backtested(_paired(CLEARLY_BETTER), math.nan, 0.85), contract=_contract())
    assert decision.verdict is Verdict.PROMOTE
    assert all(c.role != "backtest" for c in decision.checks)


def test_backtest_settings_default_and_validate() -> None:
    """It is off by default (tolerance 0.03), and refuses negative rows or tolerances."""
    gate = parse_contract(raw_contract()).gate
    assert (gate.backtest_rows, gate.backtest_tolerance) == (0, 0.03)
    assert gate.backtest_tolerance_relative == 0.0
    assert _contract().gate.backtest_rows == 300
    for key, value in [
        ("backtest_rows", -1),
        ("backtest_tolerance", -0.01),
        ("backtest_tolerance_relative", -0.1),
        ("backtest_rows", 1.5),
    ]:
        raw = raw_contract()
        raw["gate"][key] = value
        with pytest.raises(ConfigError, match=f"gate.{key}"):
            parse_contract(raw)


def test_backtest_rows_are_older_seeded_stratified_and_off_at_zero() -> None:
    """It draws only older rows, the same ones every time, in the older class balance."""
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.2).astype(int)
    fresh = np.r_[np.zeros(1500, dtype=bool), np.ones(500, dtype=bool)]
    contract = _contract()
    held = backtest_rows(contract, y, fresh)
    assert len(held) == 300
    assert not fresh[held].any()
    np.testing.assert_array_equal(held, backtest_rows(contract, y, fresh))
    assert y[held].mean() == pytest.approx(y[:1500].mean(), abs=0.005)
    assert len(backtest_rows(_contract(gate__backtest_rows=0), y, fresh)) == 0
    # At most half the older rows; too few older rows: no backtest.
    assert len(backtest_rows(contract, y, np.r_[np.zeros(400), np.ones(1600)].astype(bool))) == 200
    assert len(backtest_rows(contract, y, np.r_[np.zeros(30), np.ones(1970)].astype(bool))) == 0


def _drift_gate(contract: Contract) -> Decision:
    """A boosting champion on Agrawal function 1; many fresh rows follow function 9."""
    old = agrawal_frame(800, function=1, seed=11, label_noise=0.05, start=OLD_START)
    new = agrawal_frame(2400, function=9, seed=12, label_noise=0.05, start=FRESH_START)
    data = pd.concat([old, new], ignore_index=True)
    X, y = prepare_features(data, contract), data["approved"].to_numpy()
    fresh = np.r_[np.zeros(len(old), dtype=bool), np.ones(len(new), dtype=bool)]
    champion = build_pipeline(contract, BOOSTING, seed=contract.search.seed)
    champion.fit(X[~fresh], y[~fresh])
    paired = paired_evaluation(
        X,
        y,
        fresh,
        contract=contract,
        challenger=BOOSTING,
        champion=champion,
        champion_candidate=BOOSTING,
    )
    return decide(paired, contract=contract)


def test_paired_evaluation_backtest_refuses_a_challenger_that_forgot_the_old_rows() -> None:
    """It rejects, end to end, a challenger far better on fresh rows but worse on older ones."""
    raw = raw_contract()
    raw["cv"] = {"scheme": "auto", "folds": 3, "repeats": 1}
    raw["gate"]["backtest_rows"] = 300
    with_guard = _drift_gate(parse_contract(raw))
    assert with_guard.verdict is Verdict.REJECT, with_guard.reason
    assert "Backtest failed: on 300 held-out older rows" in with_guard.reason
    raw["gate"]["backtest_rows"] = 0
    without = _drift_gate(parse_contract(raw))
    assert without.verdict is Verdict.PROMOTE, without.reason
    assert "backtest" not in without.reason
    assert "backtest_rows" not in without.numbers

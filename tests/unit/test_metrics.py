"""Unit tests of `champion.training.metrics`: every metric against scikit-learn's own function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from champion.training.config import METRICS, MetricsSection
from champion.training.errors import ConfigError
from champion.training.metrics import compute, oriented, positive_label

# Binary: string labels, probabilities in sorted class order ("no", "yes").
B_CLASSES = ["no", "yes"]
B_TRUE = np.array(["no", "yes", "yes", "no", "yes", "no", "yes", "yes", "no", "yes"])
B_PRED = np.array(["no", "yes", "no", "no", "yes", "no", "yes", "no", "no", "no"])
B_YES = np.array([0.2, 0.9, 0.4, 0.1, 0.8, 0.6, 0.7, 0.45, 0.3, 0.55])
B_PROBA = np.column_stack([1 - B_YES, B_YES])

# Multiclass: three integer classes, unbalanced so that the averagings differ.
M_CLASSES = [0, 1, 2]
M_TRUE = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 0, 1, 2])
M_PRED = np.array([0, 0, 1, 0, 0, 2, 2, 2, 0, 0, 1, 1])
M_PROBA = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.6, 0.3, 0.1],
        [0.3, 0.5, 0.2],
        [0.8, 0.1, 0.1],
        [0.2, 0.6, 0.2],
        [0.1, 0.4, 0.5],
        [0.1, 0.2, 0.7],
        [0.2, 0.2, 0.6],
        [0.5, 0.2, 0.3],
        [0.6, 0.2, 0.2],
        [0.3, 0.5, 0.2],
        [0.2, 0.5, 0.3],
    ]
)

R_TRUE = np.array([3.0, 1.5, 8.0, 2.2, 5.0, 4.4, 10.0, 0.5])
R_PRED = np.array([2.5, 1.0, 9.0, 2.0, 6.5, 4.0, 8.0, 0.9])


def _spec(**keys: Any) -> MetricsSection:
    return MetricsSection(primary="accuracy", **keys)


def _binary(name: str, spec: MetricsSection | None = None) -> float:
    out = compute([name], y_true=B_TRUE, y_pred=B_PRED, proba=B_PROBA, classes=B_CLASSES, spec=spec)
    return out[name]


def _multi(name: str, spec: MetricsSection) -> float:
    out = compute([name], y_true=M_TRUE, y_pred=M_PRED, proba=M_PROBA, classes=M_CLASSES, spec=spec)
    return out[name]


def _binary_expected(pos: str) -> dict[str, float]:
    col = B_CLASSES.index(pos)
    is_pos = np.equal(B_TRUE, pos)
    return {
        "accuracy": skm.accuracy_score(B_TRUE, B_PRED),
        "balanced_accuracy": skm.balanced_accuracy_score(B_TRUE, B_PRED),
        "precision": skm.precision_score(B_TRUE, B_PRED, pos_label=pos),
        "recall": skm.recall_score(B_TRUE, B_PRED, pos_label=pos),
        "f1": skm.f1_score(B_TRUE, B_PRED, pos_label=pos),
        "fbeta": skm.fbeta_score(B_TRUE, B_PRED, beta=2.0, pos_label=pos),
        "mcc": skm.matthews_corrcoef(B_TRUE, B_PRED),
        "roc_auc": skm.roc_auc_score(is_pos, B_PROBA[:, col]),
        "average_precision": skm.average_precision_score(is_pos, B_PROBA[:, col]),
        "brier": skm.brier_score_loss(is_pos, B_PROBA[:, col]),
        "log_loss": skm.log_loss(B_TRUE, B_PROBA, labels=B_CLASSES),
    }


BINARY_NAMES = sorted(_binary_expected("yes"))


@pytest.mark.parametrize("pos", ["yes", "no"])
@pytest.mark.parametrize("name", BINARY_NAMES)
def test_binary_metric_matches_scikit_learn(name: str, pos: str) -> None:
    """It computes each binary metric as scikit-learn does, for the declared positive class."""
    spec = _spec(positive_class=pos, beta=2.0)
    assert _binary(name, spec) == pytest.approx(_binary_expected(pos)[name])


def test_positive_class_defaults_to_the_last_in_sorted_order() -> None:
    """It treats the last class as positive when the contract declares none."""
    for name in BINARY_NAMES:
        assert _binary(name, _spec(beta=2.0)) == pytest.approx(_binary_expected("yes")[name])
    assert positive_label(B_CLASSES) == "yes"
    assert positive_label(M_CLASSES) is None


def test_positive_class_changes_the_class_dependent_metrics() -> None:
    """It moves precision, recall, f1, fbeta and AP when the positive class changes."""
    for name in ["precision", "recall", "f1", "fbeta", "average_precision"]:
        assert _binary(name, _spec(positive_class="no")) != pytest.approx(
            _binary(name, _spec(positive_class="yes"))
        ), name
    # Symmetric metrics do not depend on it (binary Brier: (1 - p)² either way round).
    for name in ["accuracy", "mcc", "roc_auc", "log_loss", "brier"]:
        assert _binary(name, _spec(positive_class="no")) == pytest.approx(
            _binary(name, _spec(positive_class="yes"))
        ), name


def test_positive_class_outside_the_training_classes_is_a_config_error() -> None:
    """It refuses a positive class the training data does not hold, naming the key."""
    with pytest.raises(ConfigError, match=r"metrics\.positive_class"):
        _binary("f1", _spec(positive_class="maybe"))
    with pytest.raises(ConfigError, match=r"metrics\.positive_class"):
        positive_label([0, 1], "1")


MULTI_EXPECTED: dict[str, Callable[[str], float]] = {
    "precision": lambda a: skm.precision_score(M_TRUE, M_PRED, average=a, labels=M_CLASSES),
    "recall": lambda a: skm.recall_score(M_TRUE, M_PRED, average=a, labels=M_CLASSES),
    "f1": lambda a: skm.f1_score(M_TRUE, M_PRED, average=a, labels=M_CLASSES),
    "fbeta": lambda a: skm.fbeta_score(M_TRUE, M_PRED, beta=0.5, average=a, labels=M_CLASSES),
    "roc_auc": lambda a: skm.roc_auc_score(
        label_binarize(M_TRUE, classes=M_CLASSES), M_PROBA, average=a
    ),
    "average_precision": lambda a: skm.average_precision_score(
        label_binarize(M_TRUE, classes=M_CLASSES), M_PROBA, average=a
    ),
}


@pytest.mark.parametrize("average", ["macro", "weighted", "micro"])
@pytest.mark.parametrize("name", sorted(MULTI_EXPECTED))
def test_multiclass_metric_matches_scikit_learn_per_averaging(name: str, average: str) -> None:
    """It averages the per-class metrics over classes as `metrics.average` says."""
    spec = _spec(average=average, beta=0.5)
    assert _multi(name, spec) == pytest.approx(MULTI_EXPECTED[name](average))


def test_multiclass_averagings_differ_on_unbalanced_classes() -> None:
    """It really applies the averaging: the three give different f1 on these labels."""
    values = {a: _multi("f1", _spec(average=a)) for a in ["macro", "weighted", "micro"]}
    assert len({round(v, 6) for v in values.values()}) == 3


def test_multiclass_roc_auc_macro_and_weighted_match_the_ovr_scorer() -> None:
    """It matches scikit-learn's one-vs-rest roc_auc for macro and weighted."""
    for average in ["macro", "weighted"]:
        expected = skm.roc_auc_score(M_TRUE, M_PROBA, multi_class="ovr", average=average)
        assert _multi("roc_auc", _spec(average=average)) == pytest.approx(expected)


def test_multiclass_unaveraged_metrics_match_scikit_learn() -> None:
    """It computes accuracy, balanced accuracy, MCC, log loss and Brier over all classes."""
    spec = _spec()
    assert _multi("accuracy", spec) == pytest.approx(skm.accuracy_score(M_TRUE, M_PRED))
    assert _multi("balanced_accuracy", spec) == pytest.approx(
        skm.balanced_accuracy_score(M_TRUE, M_PRED)
    )
    assert _multi("mcc", spec) == pytest.approx(skm.matthews_corrcoef(M_TRUE, M_PRED))
    assert _multi("log_loss", spec) == pytest.approx(skm.log_loss(M_TRUE, M_PROBA))
    onehot = np.eye(3)[M_TRUE]
    # Multiclass Brier: squared distances summed over classes, averaged over rows.
    expected = skm.mean_squared_error(onehot, M_PROBA) * len(M_CLASSES)
    assert _multi("brier", spec) == pytest.approx(expected)
    if "labels" in skm.brier_score_loss.__code__.co_varnames:  # scikit-learn >= 1.7
        assert _multi("brier", spec) == pytest.approx(
            skm.brier_score_loss(M_TRUE, M_PROBA, labels=M_CLASSES)
        )


def test_regression_metrics_match_scikit_learn() -> None:
    """It computes rmse, mae, r2, mape and pinball (at `metrics.quantile`) as scikit-learn."""
    spec = _spec(quantile=0.9)
    out = compute(
        ["rmse", "mae", "r2", "mape", "pinball"],
        y_true=R_TRUE,
        y_pred=R_PRED,
        proba=None,
        classes=None,
        spec=spec,
    )
    assert out["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(R_TRUE, R_PRED)))
    assert out["mae"] == pytest.approx(skm.mean_absolute_error(R_TRUE, R_PRED))
    assert out["r2"] == pytest.approx(skm.r2_score(R_TRUE, R_PRED))
    assert out["mape"] == pytest.approx(skm.mean_absolute_percentage_error(R_TRUE, R_PRED))
    assert out["pinball"] == pytest.approx(skm.mean_pinball_loss(R_TRUE, R_PRED, alpha=0.9))
    median = compute(["pinball"], y_true=R_TRUE, y_pred=R_PRED, proba=None, classes=None)
    assert median["pinball"] == pytest.approx(skm.mean_pinball_loss(R_TRUE, R_PRED, alpha=0.5))
    assert median["pinball"] != pytest.approx(out["pinball"])


def test_probability_metrics_without_probabilities_are_nan() -> None:
    """It returns NaN, not an error, for a probability metric when there are none."""
    for name in ["roc_auc", "average_precision", "brier", "log_loss"]:
        out = compute([name], y_true=B_TRUE, y_pred=B_PRED, proba=None, classes=B_CLASSES)
        assert np.isnan(out[name])


@pytest.mark.parametrize(
    ("name", "higher_is_better"),
    [
        ("fbeta", True),
        ("mcc", True),
        ("average_precision", True),
        ("brier", False),
        ("mape", False),
        ("pinball", False),
    ],
)
def test_new_metrics_are_oriented(name: str, higher_is_better: bool) -> None:
    """It declares each new metric's direction; losses are negated by `oriented`."""
    assert METRICS[name][1] is higher_is_better
    assert oriented(name, 0.3) == (0.3 if higher_is_better else -0.3)

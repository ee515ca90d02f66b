"""Unit tests for the evaluation plots written as PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from champion.training.plots import (
    confusion_matrix_plot,
    feature_importance_plot,
    residuals_plot,
    roc_pr_plot,
    write_evaluation_plots,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMPORTANCES = {"age": 0.12, "income": 0.3, "city": -0.01, "flag": 0.0}


def _assert_png(path: Path) -> None:
    assert path.is_file()
    with path.open("rb") as handle:
        assert handle.read(8) == PNG_MAGIC


@pytest.fixture
def binary() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y_true = rng.choice(["no", "yes"], 60)
    positive = np.clip((y_true == "yes") * 0.4 + rng.uniform(0, 0.6, 60), 0, 1)
    y_pred = np.where(positive > 0.5, "yes", "no")
    return y_true, y_pred, np.column_stack([1 - positive, positive])


def test_binary_classification_plots(
    binary: tuple[np.ndarray, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    y_true, y_pred, scores = binary
    paths = write_evaluation_plots(
        task="classification",
        y_true=y_true,
        y_pred=y_pred,
        scores=scores,
        classes=["no", "yes"],
        importances=IMPORTANCES,
        out_dir=tmp_path / "plots",
    )
    assert [path.name for path in paths] == [
        "confusion_matrix.png",
        "roc_pr.png",
        "feature_importance.png",
    ]
    for path in paths:
        _assert_png(path)


def test_multiclass_uses_one_vs_rest_for_last_class(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 3, 45)
    scores = rng.dirichlet([1, 1, 1], 45)
    paths = write_evaluation_plots(
        task="classification",
        y_true=y_true,
        y_pred=scores.argmax(axis=1),
        scores=scores,
        classes=[0, 1, 2],
        importances=IMPORTANCES,
        out_dir=tmp_path,
    )
    assert {path.name for path in paths} == {
        "confusion_matrix.png",
        "roc_pr.png",
        "feature_importance.png",
    }
    for path in paths:
        _assert_png(path)


def test_classification_without_scores_skips_roc(
    binary: tuple[np.ndarray, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    y_true, y_pred, _ = binary
    paths = write_evaluation_plots(
        task="classification",
        y_true=y_true,
        y_pred=y_pred,
        scores=None,
        classes=["no", "yes"],
        importances=IMPORTANCES,
        out_dir=tmp_path,
    )
    assert [path.name for path in paths] == ["confusion_matrix.png", "feature_importance.png"]


def test_single_class_does_not_crash(tmp_path: Path) -> None:
    y_true = np.array(["yes"] * 10)
    scores = np.linspace(0.1, 0.9, 10)
    path = roc_pr_plot(y_true, scores, positive_label="yes", path=tmp_path / "roc.png")
    _assert_png(path)
    paths = write_evaluation_plots(
        task="classification",
        y_true=np.array(["no"] * 10),
        y_pred=np.array(["no"] * 10),
        scores=scores,
        classes=["no", "yes"],
        importances=IMPORTANCES,
        out_dir=tmp_path / "single",
    )
    for path in paths:
        _assert_png(path)


def test_regression_plots(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    y_true = rng.normal(size=80)
    y_pred = y_true + rng.normal(scale=0.3, size=80)
    paths = write_evaluation_plots(
        task="regression",
        y_true=y_true,
        y_pred=y_pred,
        scores=None,
        classes=None,
        importances=IMPORTANCES,
        out_dir=tmp_path,
    )
    assert [path.name for path in paths] == ["residuals.png", "feature_importance.png"]
    for path in paths:
        _assert_png(path)


def test_individual_plots_return_their_path(tmp_path: Path) -> None:
    path = confusion_matrix_plot([0, 1, 1], [0, 1, 0], labels=[0, 1], path=tmp_path / "cm.png")
    assert path == tmp_path / "cm.png"
    _assert_png(path)
    _assert_png(residuals_plot([1.0, 2.0], [1.5, 2.5], path=tmp_path / "res.png"))


def test_feature_importance_edge_cases(tmp_path: Path) -> None:
    _assert_png(feature_importance_plot({}, path=tmp_path / "empty.png"))
    many = {f"f{i}": float(i) for i in range(40)} | {"broken": float("nan")}
    _assert_png(feature_importance_plot(many, path=tmp_path / "many.png", title="Top"))


def test_rejects_unknown_task_and_missing_classes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        write_evaluation_plots(
            task="ranking",
            y_true=[1],
            y_pred=[1],
            scores=None,
            classes=None,
            importances={},
            out_dir=tmp_path,
        )
    with pytest.raises(ValueError, match="class labels"):
        write_evaluation_plots(
            task="classification",
            y_true=[1],
            y_pred=[1],
            scores=None,
            classes=None,
            importances={},
            out_dir=tmp_path,
        )


def test_the_roc_pr_plot_is_of_the_declared_positive_class(tmp_path, monkeypatch) -> None:
    """It plots the declared positive class's curves from its own probability column, and the
    last class's when none is declared."""
    import champion.training.plots as plots

    seen: list[tuple[object, list[float]]] = []
    real = plots.roc_pr_plot

    def spy(y_true, scores, *, positive_label, path):
        seen.append((positive_label, list(np.round(scores, 2))))
        return real(y_true, scores, positive_label=positive_label, path=path)

    monkeypatch.setattr(plots, "roc_pr_plot", spy)
    y = np.array(["no", "yes", "no", "yes"])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    common = dict(
        task="classification",
        y_true=y,
        y_pred=y,
        scores=proba,
        classes=["no", "yes"],
        importances={"a": 1.0},
    )
    plots.write_evaluation_plots(**common, out_dir=tmp_path / "a", positive="no")
    plots.write_evaluation_plots(**common, out_dir=tmp_path / "b")
    assert seen == [("no", [0.9, 0.2, 0.7, 0.4]), ("yes", [0.1, 0.8, 0.3, 0.6])]

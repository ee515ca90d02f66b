"""Unit tests of the contract (`champion.toml`) parser and the environment settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from champion.training.config import get_settings, load_contract, parse_contract
from champion.training.errors import ConfigError
from tests.unit.conftest import PROJECT_FILE, raw_contract


def _error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_contract(raw)
    return str(info.value)


def _copy_project_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PROJECT_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    return path


def test_shipped_contract_loads() -> None:
    """It loads the shipped champion.toml with the documented values."""
    contract = load_contract(PROJECT_FILE)
    assert contract.task == "classification"
    assert contract.target == "approved"
    assert contract.timestamp == "event_time"
    assert contract.metrics.primary == "roc_auc"
    assert dict(contract.metrics.guardrails) == {"accuracy": 0.02, "log_loss": 0.05}
    assert contract.numeric == ["salary", "commission", "age", "hvalue", "hyears", "loan"]
    assert contract.categorical == ["elevel", "car", "zipcode"]
    assert contract.greater_is_better is True
    assert contract.cv_scheme == "time"
    assert contract.search.strategy == "bayes"
    assert contract.gate.floor == 0.70
    assert contract.schedule.cron == "*/30 * * * *"


def test_missing_key_is_named() -> None:
    """It rejects a contract without `target` with a message naming the missing key."""
    raw = raw_contract()
    del raw["target"]
    message = _error(raw)
    assert "'target'" in message
    assert "missing" in message


def test_misspelt_key_is_named() -> None:
    """It rejects a misspelt `data.landing_zon` and names both the typo and the missing key."""
    raw = raw_contract()
    raw["data"]["landing_zon"] = raw["data"].pop("landing_zone")
    message = _error(raw)
    assert "'data.landing_zon'" in message
    assert "unknown key" in message
    assert "'data.landing_zone'" in message


def test_unknown_extra_key_is_rejected() -> None:
    """It rejects an extra unknown key even when every required key is present."""
    raw = raw_contract()
    raw["gate"]["min_detla"] = 0.01
    message = _error(raw)
    assert "'gate.min_detla'" in message
    assert "unknown key" in message


def test_wrong_type_is_named() -> None:
    """It rejects `search.max_trials = "many"` with a message naming the key path."""
    raw = raw_contract()
    raw["search"]["max_trials"] = "many"
    message = _error(raw)
    assert "'search.max_trials'" in message
    assert "integer" in message


def test_out_of_range_value_is_named() -> None:
    """It rejects a null-rate bound above 1 with a message naming `data.max_null_rate`."""
    raw = raw_contract()
    raw["data"]["max_null_rate"] = 1.5
    assert "'data.max_null_rate'" in _error(raw)


def test_primary_metric_of_the_other_task_is_rejected() -> None:
    """It rejects a regression metric as primary of a classification contract."""
    raw = raw_contract()
    raw["metrics"]["primary"] = "rmse"
    message = _error(raw)
    assert "metrics" in message
    assert "'rmse'" in message
    assert "classification" in message


def test_guardrail_metric_of_the_other_task_is_rejected() -> None:
    """It rejects a regression metric used as a guardrail of a classification contract."""
    raw = raw_contract()
    raw["metrics"]["guardrails"]["mae"] = 1.0
    message = _error(raw)
    assert "metrics" in message
    assert "'mae'" in message


def test_unknown_primary_metric_is_rejected() -> None:
    """It rejects an unknown primary metric and names `metrics.primary`."""
    raw = raw_contract()
    raw["metrics"]["primary"] = "auc"
    message = _error(raw)
    assert "metrics.primary" in message
    assert "'auc'" in message


def test_regression_contract_accepts_regression_metrics() -> None:
    """It accepts rmse as primary once the task is regression (the check follows the task)."""
    raw = raw_contract()
    raw["task"] = "regression"
    del raw["classes"]  # the shipped contract declares classification classes
    raw["metrics"] = {"primary": "rmse", "guardrails": {"mae": 1.0}}
    raw["search"]["families"] = ["linear", "hist_gradient_boosting"]
    del raw["search"]["space"]["logistic"]
    contract = parse_contract(raw)
    assert contract.greater_is_better is False


def test_unknown_family_is_rejected() -> None:
    """It rejects an estimator family the task does not know and names it under `search`."""
    raw = raw_contract()
    raw["search"]["families"] = ["logistic", "xgboost"]
    message = _error(raw)
    assert "search" in message
    assert "'xgboost'" in message


def test_search_space_for_unknown_family_is_rejected() -> None:
    """It rejects a search space declared for a family the task does not know."""
    raw = raw_contract()
    raw["search"]["space"]["linear"] = {"alpha": {"low": 0.1, "high": 1.0}}
    message = _error(raw)
    assert "search" in message
    assert "'linear'" in message


def test_time_cv_without_timestamp_is_rejected() -> None:
    """It rejects `cv.scheme = "time"` when the contract declares no timestamp."""
    raw = raw_contract()
    raw["cv"]["scheme"] = "time"
    del raw["timestamp"]
    message = _error(raw)
    assert "cv.scheme" in message
    assert "timestamp" in message


def test_auto_cv_without_timestamp_is_stratified() -> None:
    """It picks stratified folds for `auto` when a classification contract has no timestamp."""
    raw = raw_contract()
    del raw["timestamp"]
    assert parse_contract(raw).cv_scheme == "stratified"


@pytest.mark.parametrize(
    ("cron", "interval"),
    [("*/5 * * * *", 5.0), (None, None)],
    ids=["both", "neither"],
)
def test_schedule_needs_exactly_one_trigger(cron: str | None, interval: float | None) -> None:
    """It rejects a schedule with both or neither of cron and interval_minutes, naming it."""
    raw = raw_contract()
    raw["schedule"] = {"misfire_grace_seconds": 60}
    if cron is not None:
        raw["schedule"]["cron"] = cron
    if interval is not None:
        raw["schedule"]["interval_minutes"] = interval
    message = _error(raw)
    assert "'schedule'" in message
    assert "cron" in message
    assert "interval_minutes" in message


def test_interval_schedule_alone_is_accepted() -> None:
    """It accepts a schedule with only interval_minutes."""
    raw = raw_contract()
    raw["schedule"] = {"interval_minutes": 30}
    assert parse_contract(raw).schedule.interval_minutes == 30


def test_values_on_numeric_feature_are_rejected() -> None:
    """It rejects an allowed-values list on a numeric feature and names the feature."""
    raw = raw_contract()
    raw["features"]["age"]["values"] = ["young"]
    assert "'features.age'" in _error(raw)


def test_duplicate_categorical_values_are_rejected() -> None:
    """It rejects a categorical domain listing a value twice, naming the feature."""
    raw = raw_contract()
    raw["features"]["elevel"]["values"] = ["e0", "e1", "e1", "e2", "e3", "e4"]
    message = _error(raw)
    assert "features.elevel" in message


def test_target_declared_as_feature_is_rejected() -> None:
    """It rejects a contract whose target is also one of its features."""
    raw = raw_contract()
    raw["features"]["approved"] = {"type": "numeric"}
    message = _error(raw)
    assert "target" in message
    assert "'approved'" in message


def test_relative_data_paths_resolve_against_the_file_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It resolves relative data paths against the contract file's folder, not the cwd."""
    project = _copy_project_file(tmp_path / "project" / "champion.toml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    contract = load_contract(Path("..") / "project" / "champion.toml")
    folder = project.parent.resolve()
    assert contract.data.landing_zone == folder / "var" / "landing"
    assert contract.data.quarantine == folder / "var" / "quarantine"
    assert contract.data.manifest == folder / "var" / "manifest.json"


def test_absolute_data_paths_are_kept(tmp_path: Path) -> None:
    """It leaves absolute data paths alone when resolving against a base folder."""
    raw = raw_contract()
    raw["data"]["landing_zone"] = str(tmp_path / "drop")
    contract = parse_contract(raw, base=tmp_path / "base")
    assert contract.data.landing_zone == tmp_path / "drop"
    assert contract.data.quarantine == tmp_path / "base" / "var" / "quarantine"


def test_missing_project_file_is_a_config_error(tmp_path: Path) -> None:
    """It reports a missing project file as a ConfigError naming the path."""
    with pytest.raises(ConfigError, match="not found"):
        load_contract(tmp_path / "nope.toml")


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    """It reports a file that is not TOML as a ConfigError naming the file."""
    path = tmp_path / "champion.toml"
    path.write_text("task = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_contract(path)


def test_config_error_exits_with_code_two() -> None:
    """It maps a contract error to exit code 2."""
    assert ConfigError.exit_code == 2


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_settings_read_home_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_settings: None
) -> None:
    """It reads CHAMPION_HOME from the environment and derives the ledger and lock paths."""
    monkeypatch.setenv("CHAMPION_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHAMPION_LEASE_TIMEOUT_SECONDS", "2.5")
    settings = get_settings()
    assert settings.home == tmp_path / "home"
    assert settings.ledger_path == tmp_path / "home" / "ledger.jsonl"
    assert settings.lock_dir == tmp_path / "home" / "locks"
    assert settings.lease_timeout_seconds == 2.5


def test_get_settings_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_settings: None
) -> None:
    """It returns the same Settings object until the cache is cleared."""
    monkeypatch.setenv("CHAMPION_HOME", str(tmp_path / "first"))
    first = get_settings()
    monkeypatch.setenv("CHAMPION_HOME", str(tmp_path / "second"))
    assert get_settings() is first
    assert get_settings().home == tmp_path / "first"
    get_settings.cache_clear()
    assert get_settings().home == tmp_path / "second"


def test_metric_options_default_to_the_documented_values() -> None:
    """It defaults to macro averaging, beta 1, quantile 0.5, no declared positive class and
    no relative thresholds."""
    contract = parse_contract(raw_contract())
    metrics = contract.metrics
    assert (metrics.average, metrics.beta, metrics.quantile) == ("macro", 1.0, 0.5)
    assert metrics.positive_class is None
    assert metrics.guardrails_relative == {}
    assert contract.gate.min_delta_relative == 0.0


def test_new_metrics_are_accepted_for_their_task() -> None:
    """It accepts fbeta, mcc, average_precision and brier for classification."""
    raw = raw_contract()
    raw["metrics"] = {
        "primary": "fbeta",
        "beta": 2.0,
        "average": "weighted",
        "positive_class": 0,
        "guardrails": {"mcc": 0.05, "brier": 0.01},
        "guardrails_relative": {"average_precision": 0.02},
    }
    contract = parse_contract(raw)
    assert contract.metrics.guarded == ["mcc", "brier", "average_precision"]
    assert contract.metrics.positive_class == 0


def test_regression_metric_options_are_accepted() -> None:
    """It accepts mape and pinball (with its quantile) once the task is regression."""
    raw = raw_contract()
    raw["task"] = "regression"
    del raw["classes"]
    raw["metrics"] = {"primary": "pinball", "quantile": 0.9, "guardrails": {"mape": 0.1}}
    raw["search"]["families"] = ["linear", "hist_gradient_boosting"]
    del raw["search"]["space"]["logistic"]
    contract = parse_contract(raw)
    assert contract.greater_is_better is False
    assert contract.metrics.quantile == 0.9


@pytest.mark.parametrize(
    ("metrics", "needle"),
    [
        ({"primary": "mape"}, "'mape' does not apply to task 'classification'"),
        ({"primary": "roc_auc", "guardrails": {"pinball": 0.1}}, "'pinball' does not apply"),
        ({"primary": "roc_auc", "guardrails_relative": {"mcc": -0.1}}, "guardrails_relative"),
        ({"primary": "roc_auc", "average": "samples"}, "'metrics.average'"),
        ({"primary": "fbeta", "beta": 0}, "'metrics.beta'"),
        ({"primary": "roc_auc", "quantile": 1.0}, "'metrics.quantile'"),
        ({"primary": "roc_auc", "positive_class": 2}, "metrics.positive_class: 2 is not one"),
        ({"primary": "roc_auc", "positive_class": "1"}, "metrics.positive_class"),
        (
            {
                "primary": "roc_auc",
                "guardrails": {"log_loss": 0.05},
                "guardrails_relative": {"log_loss": 0.1},
            },
            "['log_loss'] also in metrics.guardrails",
        ),
    ],
    ids=[
        "regression-primary",
        "regression-guardrail",
        "negative-relative-tolerance",
        "unknown-average",
        "beta-zero",
        "quantile-one",
        "positive-class-undeclared",
        "positive-class-wrong-type",
        "guardrail-twice",
    ],
)
def test_metric_options_errors_name_the_key(metrics: dict[str, Any], needle: str) -> None:
    """It refuses a wrong metric option with a message naming the key at fault."""
    raw = raw_contract()
    raw["metrics"] = metrics
    assert needle in _error(raw)


def test_positive_class_needs_a_binary_classification_task() -> None:
    """It refuses a positive class on three declared classes and on a regression task."""
    raw = raw_contract()
    raw["classes"] = [0, 1, 2]
    raw["metrics"]["positive_class"] = 1
    assert "applies to a binary task" in _error(raw)
    raw = raw_contract()
    raw["task"] = "regression"
    del raw["classes"]
    raw["metrics"] = {"primary": "rmse", "positive_class": 1}
    raw["search"]["families"] = ["linear"]
    raw["search"]["space"] = {}
    assert "only a classification task" in _error(raw)


def test_negative_relative_min_delta_is_rejected() -> None:
    """It refuses a negative `gate.min_delta_relative`."""
    raw = raw_contract()
    raw["gate"]["min_delta_relative"] = -0.01
    assert "'gate.min_delta_relative'" in _error(raw)

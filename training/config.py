"""The ML contract (`champion.toml`) and the deployment settings (environment variables)."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from champion.training.errors import ConfigError
from champion.training.storage import parse_location

# The largest finite float32. Numeric inputs beyond it are refused in training batches and by
# the service alike: the models' trees (and the compiled runtime) compare 32-bit floats.
FLOAT32_MAX: float = float(np.finfo(np.float32).max)

Task = Literal["classification", "regression"]

# Metric name -> (task it applies to, greater is better).
METRICS: dict[str, tuple[Task, bool]] = {
    "accuracy": ("classification", True),
    "balanced_accuracy": ("classification", True),
    "precision": ("classification", True),
    "recall": ("classification", True),
    "f1": ("classification", True),
    "roc_auc": ("classification", True),
    "log_loss": ("classification", False),
    "fbeta": ("classification", True),
    "mcc": ("classification", True),
    "average_precision": ("classification", True),
    "brier": ("classification", False),
    "rmse": ("regression", False),
    "mae": ("regression", False),
    "r2": ("regression", True),
    "mape": ("regression", False),
    "pinball": ("regression", False),
}

FAMILIES: dict[Task, tuple[str, ...]] = {
    "classification": ("logistic", "random_forest", "hist_gradient_boosting"),
    "regression": ("linear", "random_forest", "hist_gradient_boosting"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectSection(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""


class DataSection(_Strict):
    # A local folder (a `Path`: plain path or file:// URI) or an "s3://bucket/prefix" URI
    # (`champion.training.storage`); the manifest is always a local file.
    landing_zone: Path | str
    quarantine: Path | str
    manifest: Path
    # Accepted batches are copied here, named by content: the landing zone is only an inbox.
    store: Path | str = Path("var/batches")
    # A file modified more recently than this is left for the next cycle (still being written).
    settle_seconds: float = Field(default=10.0, ge=0.0)
    max_null_rate: float = Field(default=0.2, ge=0.0, le=1.0)
    min_rows: int = Field(default=20, ge=1)
    max_duplicate_rate: float = Field(default=0.5, ge=0.0, le=1.0)

    @field_validator("landing_zone", "quarantine", "store", mode="before")
    @classmethod
    def _folder(cls, value: Any) -> Path | str:
        return parse_location(value)


class Feature(_Strict):
    # numeric: numbers. categorical: text, one-hot encoded. ordinal: text from `values`, in
    # that order, encoded as its position. boolean: true/false (CSV: true/false/1/0, any case),
    # encoded as 1/0.
    type: Literal["numeric", "categorical", "ordinal", "boolean"]
    values: tuple[str, ...] | None = None
    # categorical only. onehot: a column per level. target: one column (one per class for a
    # multiclass task) holding the level's cross-fitted mean target (scikit-learn's
    # TargetEncoder), for high-cardinality features (IDs of shops, postcodes).
    encoding: Literal["onehot", "target"] = "onehot"
    nullable: bool = True
    description: str = ""

    @model_validator(mode="after")
    def _values_only_for_categorical(self) -> Feature:
        if self.values is not None and self.type not in ("categorical", "ordinal"):
            raise ValueError("'values' is only allowed for categorical and ordinal features")
        if self.encoding != "onehot" and self.type != "categorical":
            raise ValueError("'encoding' is only allowed for categorical features")
        if self.type == "ordinal" and not self.values:
            raise ValueError("an ordinal feature lists its 'values', lowest first")
        if self.values is not None and len(set(self.values)) != len(self.values):
            dupes = sorted({v for v in self.values if self.values.count(v) > 1})
            raise ValueError(f"'values' lists {dupes} more than once")
        return self


class MetricsSection(_Strict):
    primary: str
    # metric -> the largest tolerated drop versus the champion, in the metric's own units
    # (a rise, for a loss) ...
    guardrails: dict[str, float] = Field(default_factory=dict)
    # ... or as a fraction of the champion's value (0.05: a 5 % worse value is tolerated).
    guardrails_relative: dict[str, Annotated[float, Field(ge=0.0)]] = Field(default_factory=dict)
    # Multiclass averaging of precision, recall, f1, fbeta, roc_auc and average_precision
    # (a binary task scores its positive class alone).
    average: Literal["macro", "weighted", "micro"] = "macro"
    # The positive class of a binary task; unset: the last of the classes in sorted order.
    positive_class: StrictInt | StrictStr | None = None
    beta: float = Field(default=1.0, gt=0.0)  # fbeta: recall counts beta times as much
    quantile: float = Field(default=0.5, gt=0.0, lt=1.0)  # pinball: the quantile scored

    @property
    def guarded(self) -> list[str]:
        """Every guardrail metric, absolute tolerances first."""
        return [*self.guardrails, *self.guardrails_relative]


class DecisionSection(_Strict):
    """How a binary classifier turns its probability into a class (probabilities unchanged).

    "auto": tuned on out-of-fold probabilities when `cost_ratio` is set or the primary metric
    depends on the threshold (accuracy, balanced_accuracy, f1, fbeta, mcc), else 0.5.
    "tuned": the same, but a contract error when there is nothing to tune on. A number in
    (0, 1): that threshold, fixed.
    """

    threshold: Literal["auto", "tuned"] | Annotated[float, Field(gt=0.0, lt=1.0)] = "auto"
    # > 0: tune to minimise cost_ratio x missed positives + false alarms (5: a missed positive
    # costs as much as five false alarms).
    cost_ratio: float = Field(default=0.0, ge=0.0)


class WindowSection(_Strict):
    max_rows: int | None = Field(default=None, ge=1)
    max_days: float | None = Field(default=None, gt=0)


class Range(_Strict):
    low: float
    high: float
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError("'low' must be below 'high'")
        if self.log and self.low <= 0:
            raise ValueError("'low' must be positive on a log scale")
        return self


class Choice(_Strict):
    # TOML has no null: the string "none" stands for Python's None (max_depth, class_weight).
    choices: tuple[float | int | str | bool | None, ...] = Field(min_length=1)

    @field_validator("choices", mode="before")
    @classmethod
    def _none(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(None if v == "none" else v for v in value)
        return value


Param = Annotated[Range | Choice, Field(union_mode="left_to_right")]


class SearchSection(_Strict):
    strategy: Literal["grid", "random", "bayes"] = "bayes"
    max_trials: int = Field(default=20, ge=1)
    max_seconds: float = Field(default=300.0, gt=0)
    seed: int = 42
    grid_points: int = Field(default=3, ge=2)
    families: tuple[str, ...] | None = None
    n_jobs: int = Field(default=1, ge=1)
    space: dict[str, dict[str, Param]] = Field(default_factory=dict)


class CVSection(_Strict):
    scheme: Literal["auto", "stratified", "kfold", "time"] = "auto"
    folds: int = Field(default=5, ge=2)
    repeats: int = Field(default=2, ge=1)


class GateSection(_Strict):
    # Smallest mean improvement of the primary metric worth a swap, in the metric's units;
    # and/or a fraction of the champion's value: the larger of the two applies.
    min_delta: float = Field(default=0.0, ge=0.0)
    min_delta_relative: float = Field(default=0.0, ge=0.0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    method: Literal["corrected_t", "bootstrap"] = "corrected_t"
    floor: float
    bootstrap_samples: int = Field(default=2000, ge=100)
    # Backtest: older (non-fresh) rows held out of the challenger's backtest fit; 0 (the
    # default) turns it off. The challenger may trail the champion on them by at most the
    # tolerance: in the metric's units and/or a fraction of the champion's value (the larger
    # applies). Off by default: after a concept change the challenger is rightly worse there.
    backtest_rows: int = Field(default=0, ge=0)
    # One 300-row sample is noisy: same-concept challengers trail by up to ~0.015 roc_auc.
    backtest_tolerance: float = Field(default=0.03, ge=0.0)
    backtest_tolerance_relative: float = Field(default=0.0, ge=0.0)


class ScheduleSection(_Strict):
    cron: str | None = None
    interval_minutes: float | None = Field(default=None, gt=0)
    misfire_grace_seconds: int = Field(default=300, ge=1)

    @model_validator(mode="after")
    def _one_trigger(self) -> ScheduleSection:
        if (self.cron is None) == (self.interval_minutes is None):
            raise ValueError("set exactly one of 'cron' or 'interval_minutes'")
        return self


class Contract(_Strict):
    """The parsed `champion.toml`: everything that derives features, data checks and the gate."""

    project: ProjectSection
    data: DataSection
    task: Task
    target: str
    # Classification: every value the target may take (all integers or all strings). Batches
    # and labels holding anything else are refused. Regression targets are numbers.
    classes: tuple[StrictInt, ...] | tuple[StrictStr, ...] | None = None
    timestamp: str | None = None
    features: dict[str, Feature] = Field(min_length=1)
    # A column of non-negative row weights for fitting (scores stay unweighted); batches must
    # carry it, requests need not (/predict drops it).
    weight: str | None = None
    # Columns that are not features (an ID, free text) which batches and requests may carry:
    # the API accepts and drops them, as it does the target and timestamp columns.
    ignore: tuple[str, ...] = ()
    metrics: MetricsSection
    decision: DecisionSection = DecisionSection()
    window: WindowSection = WindowSection()
    search: SearchSection = SearchSection()
    cv: CVSection = CVSection()
    gate: GateSection
    schedule: ScheduleSection

    @field_validator("classes", mode="before")
    @classmethod
    def _classes_of_one_type(cls, value: Any) -> Any:
        if value is None:
            return value
        if not isinstance(value, list | tuple) or not (
            all(type(v) is int for v in value) or all(type(v) is str for v in value)
        ):
            raise ValueError(
                f"{value!r} must be a list of all integers or all strings, "
                'e.g. [0, 1] or ["no", "yes"]'
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Contract:
        primary = self.metrics.primary
        if primary not in METRICS:
            raise ValueError(
                f"metrics.primary: unknown metric {primary!r}; known: {sorted(METRICS)}"
            )
        for name in [primary, *self.metrics.guarded]:
            if name not in METRICS:
                raise ValueError(
                    f"metrics.guardrails: unknown metric {name!r}; known: {sorted(METRICS)}"
                )
            if METRICS[name][0] != self.task:
                fits = sorted(m for m, (task, _) in METRICS.items() if task == self.task)
                raise ValueError(
                    f"metrics: {name!r} does not apply to task {self.task!r}; use one of {fits}"
                )
        twice = sorted(set(self.metrics.guardrails) & set(self.metrics.guardrails_relative))
        if twice:
            raise ValueError(
                f"metrics.guardrails_relative: {twice} also in metrics.guardrails; "
                "give each guardrail one tolerance"
            )
        positive = self.metrics.positive_class
        if positive is not None:
            if self.task != "classification":
                raise ValueError("metrics.positive_class: only a classification task has one")
            if self.classes is not None and len(self.classes) != 2:
                raise ValueError(
                    f"metrics.positive_class: applies to a binary task; classes declares "
                    f"{len(self.classes)}"
                )
            if self.classes is not None and positive not in self.classes:
                raise ValueError(
                    f"metrics.positive_class: {positive!r} is not one of the declared classes "
                    f"{list(self.classes)!r}"
                )
        decision = self.decision
        if decision != DecisionSection():
            if self.task != "classification":
                raise ValueError("decision: only a classification task has a threshold")
            if self.classes is not None and len(self.classes) != 2:
                raise ValueError(
                    f"decision: a threshold applies to a binary task; classes declares "
                    f"{len(self.classes)}"
                )
            if not isinstance(decision.threshold, str) and decision.cost_ratio > 0:
                raise ValueError(
                    "decision: a fixed threshold and a cost_ratio to tune it on exclude "
                    "each other; set one"
                )
        if self.target in self.features:
            raise ValueError(f"target: {self.target!r} is also declared as a feature")
        if self.classes is not None:
            if self.task != "classification":
                raise ValueError("classes: only a classification contract declares classes")
            if len(set(self.classes)) != len(self.classes):
                raise ValueError(f"classes: {list(self.classes)} lists a value more than once")
            if len(self.classes) < 2:
                raise ValueError("classes: declare at least two classes")
        taken = {*self.features, self.target} | ({self.timestamp} if self.timestamp else set())
        if self.weight is not None and self.weight in taken | set(self.ignore):
            raise ValueError(
                f"weight: {self.weight!r} is also a feature, the target, the timestamp or ignored"
            )
        clash = sorted(set(self.ignore) & taken)
        if clash:
            raise ValueError(f"ignore: {clash} also declared as a feature, target or timestamp")
        if self.timestamp is not None and self.timestamp == self.target:
            raise ValueError(f"timestamp: {self.timestamp!r} is also the target")
        if self.timestamp is not None and self.timestamp in self.features:
            raise ValueError(f"timestamp: {self.timestamp!r} is also declared as a feature")
        known = FAMILIES[self.task]
        for family in [*(self.search.families or ()), *self.search.space]:
            if family not in known and family != "reduction":
                raise ValueError(
                    f"search: unknown family {family!r} for {self.task}; known: {list(known)}"
                )
        if self.cv.scheme == "time" and self.timestamp is None:
            raise ValueError("cv.scheme: 'time' needs a 'timestamp' column")
        if self.cv.scheme == "stratified" and self.task != "classification":
            raise ValueError("cv.scheme: 'stratified' applies to classification only")
        return self

    def of_type(self, *types: str) -> list[str]:
        """The features of the given types, in the contract's order."""
        return [n for n, f in self.features.items() if f.type in types]

    @property
    def numeric(self) -> list[str]:
        return self.of_type("numeric")

    @property
    def categorical(self) -> list[str]:
        return self.of_type("categorical")

    @property
    def ordinal(self) -> list[str]:
        return self.of_type("ordinal")

    @property
    def boolean(self) -> list[str]:
        return self.of_type("boolean")

    @property
    def encoded_numeric(self) -> list[str]:
        """Features the model reads as numbers: numeric, ordinal (position) and boolean (1/0)."""
        return self.of_type("numeric", "ordinal", "boolean")

    @property
    def profiled_categorical(self) -> list[str]:
        """Features drift compares by their values' frequencies (ordinal and boolean too)."""
        return self.of_type("categorical", "ordinal", "boolean")

    @property
    def droppable(self) -> frozenset[str]:
        """Request keys accepted and dropped: `ignore`, the target, timestamp and weight."""
        extra = {self.target, *self.ignore} | ({self.weight} if self.weight else set())
        return frozenset(extra | ({self.timestamp} if self.timestamp else set()))

    @property
    def greater_is_better(self) -> bool:
        return METRICS[self.metrics.primary][1]

    @property
    def families(self) -> tuple[str, ...]:
        return self.search.families or FAMILIES[self.task]

    @property
    def cv_scheme(self) -> Literal["stratified", "kfold", "time"]:
        if self.cv.scheme != "auto":
            return self.cv.scheme
        if self.timestamp is not None:
            return "time"
        return "stratified" if self.task == "classification" else "kfold"


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        # Cross-field checks carry the key at fault at the start of their own message.
        lines.append(f"  key '{key}': {msg}" if key else f"  {msg}")
    return "\n".join(lines)


def parse_contract(
    raw: dict[str, Any], *, source: str = "champion.toml", base: Path | None = None
) -> Contract:
    """Validate a raw TOML mapping; relative data paths resolve against `base`."""
    try:
        contract = Contract.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source} is invalid:\n{_format_errors(exc)}") from None
    if base is not None:
        data = contract.data
        resolved = {
            key: (
                getattr(data, key)
                if not isinstance(getattr(data, key), Path) or getattr(data, key).is_absolute()
                else base / getattr(data, key)
            )
            for key in ("landing_zone", "quarantine", "manifest", "store")
        }
        contract = contract.model_copy(update={"data": data.model_copy(update=resolved)})
    return contract


def load_contract(path: Path) -> Contract:
    """Read and validate `champion.toml`, failing with a message that names the key at fault."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"project file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_contract(raw, source=str(path), base=path.resolve().parent)


class Settings(BaseSettings):
    """Deployment facts from the environment; MLflow reads its own `MLFLOW_*` variables."""

    model_config = SettingsConfigDict(env_prefix="CHAMPION_", extra="ignore")

    project_file: Path = Path("champion.toml")
    home: Path = Path("var")
    lease_timeout_seconds: float = Field(default=30.0, ge=0)
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: str = "INFO"
    train_threads: int = Field(default=1, ge=1)
    serve_threads: int = Field(default=1, ge=1)
    # Shared mode: a PostgreSQL URL (postgresql://user@host:5432/db) puts the ledger, leases,
    # manifest, prediction log and drift state there, for every replica. Unset: local files.
    database_url: SecretStr | None = None
    # Shared mode: a cycle's bayes search is an Optuna study in that database, which
    # `champion tune-worker` processes on any host join (off: each cycle tunes alone).
    shared_tuning: bool = True
    # Shared mode: replicas hear alias moves by LISTEN/NOTIFY (off: each waits for its poll).
    swap_notices: bool = True
    # Serving
    admin_token: SecretStr | None = None
    # POST /feedback writes training data: it needs its own token (disabled without one).
    feedback_token: SecretStr | None = None
    feedback_labels_per_second: float = Field(default=200.0, gt=0)  # per worker, sustained
    feedback_burst_labels: int = Field(default=2000, ge=1)  # per worker, at once
    max_rows: int = Field(default=1000, ge=1)
    max_body_bytes: int = Field(default=2_000_000, ge=1024)
    poll_seconds: float = Field(default=10.0, gt=0)
    scheduler: bool = True
    # A retrain child running longer than this is killed and the cycle counted as timed out.
    retrain_timeout_seconds: float = Field(default=3600.0, gt=0)
    # Monitoring
    capture_sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    capture_buffer: int = Field(default=10_000, ge=1)
    capture_max_rows: int = Field(default=200_000, ge=1000)
    monitor_seconds: float = Field(default=60.0, gt=0)
    drift_window_rows: int = Field(default=500, ge=50)
    drift_alpha: float = Field(default=0.01, gt=0, lt=0.5)
    drift_sustained_windows: int = Field(default=3, ge=1)
    drift_cooldown_seconds: float = Field(default=3600.0, ge=0)
    quality_window_rows: int = Field(default=500, ge=10)
    drift_history_rows: int = Field(default=10_000, ge=10)  # drift/history.jsonl keeps these

    @property
    def ledger_path(self) -> Path:
        return self.home / "ledger.jsonl"

    @property
    def lock_dir(self) -> Path:
        return self.home / "locks"

    @property
    def default_tracking_uri(self) -> str:
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def prediction_log_path(self) -> Path:
        return self.home / "predictions.db"

    @property
    def cache_dir(self) -> Path:
        return self.home / "model-cache"

    @property
    def artifact_root(self) -> Path:
        return (self.home / "mlartifacts").resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

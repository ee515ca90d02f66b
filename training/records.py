"""Typed records that cross module and process boundaries: verdicts, reports, ledger entries."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    """How a retrain cycle ended; the one list the gate, cycle, scheduler and metrics share."""

    PROMOTE = "PROMOTE"
    HOLD = "HOLD"
    REJECT = "REJECT"
    SKIPPED = "SKIPPED"
    FAILED = "FAILED"
    STALE = "STALE"

    @classmethod
    def parse(cls, value: object) -> Verdict:
        """The verdict named by `value`; anything else reads as FAILED (never trusted blindly)."""
        try:
            return cls(str(value))
        except ValueError:
            return cls.FAILED


class Event(StrEnum):
    """Kinds of ledger entry."""

    CYCLE = "cycle"
    CYCLE_INTERRUPTED = "cycle_interrupted"
    RECONCILED = "reconciled"
    MANUAL_PROMOTE = "manual_promote"
    ROLLBACK = "rollback"
    BATCH_RETIRED = "batch_retired"
    DRIFT_TRIGGER = "drift_trigger"


@dataclass(frozen=True)
class CycleReport:
    """A cycle's outcome as one JSON line: `champion retrain --json`, and the result file the
    scheduler reads from its retrain child."""

    verdict: Verdict
    reason: str
    busy: bool = False  # another cycle held the lease: nothing was tried
    version: str | None = None
    champion_before: str | None = None
    champion_after: str | None = None
    trials: int = 0
    seconds: float = 0.0

    def to_json(self) -> str:
        body = {f.name: getattr(self, f.name) for f in fields(self)}
        return json.dumps(body | {"verdict": self.verdict.value}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CycleReport:
        """Parse one report; raises ValueError when it is not one."""
        body = json.loads(text)
        if not isinstance(body, dict) or "verdict" not in body:
            raise ValueError("not a cycle report: no verdict")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in body.items() if k in known}
        values["verdict"] = Verdict.parse(values["verdict"])
        return cls(**values)


_MOVE = ("champion_before", "champion_after")


@dataclass(frozen=True)
class LedgerEntry:
    """One ledger line. `moved` says the entry records the champion alias (before → after)."""

    event: Event
    reason: str
    who: str
    verdict: Verdict | None = None
    moved: bool = False
    champion_before: str | None = None
    champion_after: str | None = None
    trigger: str | None = None
    run_id: str | None = None
    challenger_version: str | None = None
    batch: str | None = None
    numbers: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] | None = None
    seconds: float | None = None
    trials: int | None = None
    features: tuple[str, ...] | None = None
    at: str | None = None  # set by the ledger when appended
    seq: int | None = None  # set by the ledger when appended

    def to_record(self) -> dict[str, Any]:
        """The stored form: the file format every reader of the ledger sees."""
        out: dict[str, Any] = {"event": self.event.value, "reason": self.reason, "who": self.who}
        if self.verdict is not None:
            out["verdict"] = self.verdict.value
        if self.moved:
            out |= {"champion_before": self.champion_before, "champion_after": self.champion_after}
        elif self.champion_after is not None:  # the champion at the time (a drift trigger)
            out["champion_after"] = self.champion_after
        for name in ("trigger", "run_id", "challenger_version", "batch", "seconds", "trials"):
            if (value := getattr(self, name)) is not None:
                out[name] = value
        if self.event is Event.CYCLE:
            out["numbers"] = dict(self.numbers)
            out.setdefault("run_id", None)
            out.setdefault("challenger_version", None)
        if self.data is not None:
            out["data"] = dict(self.data)
        if self.features is not None:
            out["features"] = list(self.features)
        for name in ("at", "seq"):
            if (value := getattr(self, name)) is not None:
                out[name] = value
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> LedgerEntry:
        """Read a stored entry back; unknown events and extra keys are tolerated."""
        try:
            event = Event(str(record.get("event", "")))
        except ValueError:
            event = Event.CYCLE if "verdict" in record else Event.RECONCILED
        verdict = record.get("verdict")
        return cls(
            event=event,
            reason=str(record.get("reason", "")),
            who=str(record.get("who", "")),
            verdict=None if verdict is None else Verdict.parse(verdict),
            moved=all(k in record for k in _MOVE),
            champion_before=record.get("champion_before"),
            champion_after=record.get("champion_after"),
            trigger=record.get("trigger"),
            run_id=record.get("run_id"),
            challenger_version=record.get("challenger_version"),
            batch=record.get("batch"),
            numbers=dict(record.get("numbers") or {}),
            data=record.get("data"),
            seconds=record.get("seconds"),
            trials=record.get("trials"),
            features=tuple(record["features"]) if record.get("features") else None,
            at=record.get("at"),
            seq=record.get("seq"),
        )

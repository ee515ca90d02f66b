"""Manual interventions on the champion (promote a version, roll back), recorded in the ledger."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from champion.training.errors import ChampionError, RegistryError
from champion.training.lease import REGISTRY
from champion.training.ports import Leases, LedgerStore, ModelRegistry
from champion.training.process import actor
from champion.training.records import Event, LedgerEntry

log = logging.getLogger(__name__)


def _require_reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise ChampionError("a reason is required (--reason TEXT); it goes into the ledger")
    return reason


def promote(
    version: str,
    *,
    reason: str,
    registry: ModelRegistry,
    ledger: LedgerStore,
    leases: Leases,
    lease_timeout: float = 30.0,
) -> dict[str, Any]:
    """Make `version` the champion after checking it loads; the old one becomes `previous`."""
    reason = _require_reason(reason)
    ref = registry.version(version)
    with tempfile.TemporaryDirectory() as tmp:
        registry.load(ref, cache_dir=Path(tmp))  # refuses a model whose digest does not match
    with leases.hold(REGISTRY, timeout=lease_timeout):
        current = registry.alias("champion")
        before = current.version if current else None
        if before == ref.version:
            raise ChampionError(f"v{ref.version} is already the champion")
        if not registry.move_champion(expected=before, new=ref.version):
            raise RegistryError("the champion alias moved during the promotion; try again")
        entry = ledger.append(
            LedgerEntry(
                Event.MANUAL_PROMOTE,
                reason,
                actor(),
                moved=True,
                champion_before=before,
                champion_after=ref.version,
            )
        )
    log.info("manual promotion", extra={"from": before, "to": ref.version, "reason": reason})
    return entry


def rollback(
    *,
    reason: str,
    registry: ModelRegistry,
    ledger: LedgerStore,
    leases: Leases,
    lease_timeout: float = 30.0,
) -> dict[str, Any]:
    """Swap `champion` and `previous`, so a second rollback undoes the first."""
    reason = _require_reason(reason)
    with leases.hold(REGISTRY, timeout=lease_timeout):
        current = registry.alias("champion")
        previous = registry.alias("previous")
        if current is None or previous is None:
            raise ChampionError("nothing to roll back to: there is no 'previous' version")
        if previous.version == current.version:
            raise ChampionError(f"'previous' is the champion itself (v{current.version})")
        with tempfile.TemporaryDirectory() as tmp:
            registry.load(previous, cache_dir=Path(tmp))
        if not registry.move_champion(expected=current.version, new=previous.version):
            raise RegistryError("the champion alias moved during the rollback; try again")
        entry = ledger.append(
            LedgerEntry(
                Event.ROLLBACK,
                reason,
                actor(),
                moved=True,
                champion_before=current.version,
                champion_after=previous.version,
            )
        )
    log.info("rollback", extra={"from": current.version, "to": previous.version, "reason": reason})
    return entry

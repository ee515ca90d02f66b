"""Every adapter and every fake offers what its port declares."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from champion.monitoring.capture import PredictionLog
from champion.monitoring.state import DriftFiles
from champion.training import ports
from champion.training.batches import FileBatches
from champion.training.clock import SystemClock
from champion.training.lease import FileLeases
from champion.training.ledger import Ledger
from champion.training.postgres.drift import PgDriftStore
from champion.training.postgres.leases import AdvisoryLeases
from champion.training.postgres.ledger import PgLedger
from champion.training.postgres.predictions import PgPredictionLog
from champion.training.registry import Registry
from tests import fakes


def _members(protocol: type) -> set[str]:
    """The methods and attributes a Protocol declares (its own, not typing's machinery)."""
    own = set(vars(protocol)) | set(getattr(protocol, "__annotations__", {}))
    return {n for n in own if not n.startswith("_")}


PAIRS: list[tuple[type, type]] = [
    (ports.ModelRegistry, Registry),
    (ports.ModelRegistry, fakes.FakeRegistry),
    (ports.LedgerStore, Ledger),
    (ports.LedgerStore, fakes.FakeLedger),
    (ports.Leases, FileLeases),
    (ports.Leases, fakes.FakeLeases),
    (ports.BatchStore, FileBatches),
    (ports.BatchStore, fakes.FakeBatches),
    (ports.PredictionStore, PredictionLog),
    (ports.PredictionStore, PgPredictionLog),
    (ports.LedgerStore, PgLedger),
    (ports.Leases, AdvisoryLeases),
    (ports.DriftStore, DriftFiles),
    (ports.DriftStore, PgDriftStore),
    (ports.DriftStore, fakes.FakeDriftStore),
    (ports.Clock, SystemClock),
    (ports.Clock, fakes.FakeClock),
]


@pytest.mark.parametrize(("port", "impl"), PAIRS, ids=lambda c: c.__name__)
def test_the_implementation_offers_every_member_of_its_port(port: type, impl: type) -> None:
    """It has every method of the port, each taking the port's parameters by name."""
    for name in sorted(_members(port)):
        if name in getattr(port, "__annotations__", {}) and not hasattr(port, name):
            # A data attribute, set per instance: the class declares it.
            declared = {n for k in impl.__mro__ for n in getattr(k, "__annotations__", {})}
            assert name in declared, f"{impl.__name__} does not declare {port.__name__}.{name}"
            continue
        assert hasattr(impl, name), f"{impl.__name__} lacks {port.__name__}.{name}"
        wanted = getattr(port, name)
        if not callable(wanted):
            continue
        have: Any = getattr(impl, name)
        want_params = set(inspect.signature(wanted).parameters) - {"self"}
        have_params = set(inspect.signature(have).parameters) - {"self"}
        missing = want_params - have_params
        assert not missing, f"{impl.__name__}.{name} lacks parameters {sorted(missing)}"

"""Unit tests of the manual interventions (promote a version, roll back) on in-memory ports."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from champion.training.actions import promote, rollback
from champion.training.errors import ChampionError, IntegrityError, LeaseBusyError, RegistryError
from champion.training.lease import REGISTRY
from tests.fakes import FakeLeases, FakeLedger, FakeRegistry


@dataclass
class Ports:
    registry: FakeRegistry
    ledger: FakeLedger
    leases: FakeLeases

    def kw(self, **extra: object) -> dict[str, object]:
        return {"registry": self.registry, "ledger": self.ledger, "leases": self.leases} | extra


@pytest.fixture
def ports() -> Ports:
    """Three registered versions; v2 is the champion, v1 the previous one."""
    registry = FakeRegistry()
    for name in ("model-1", "model-2", "model-3"):
        registry.add_version(name)
    registry.set_alias("champion", "2")
    registry.set_alias("previous", "1")
    return Ports(registry, FakeLedger(), FakeLeases("operator"))


# -- promote ----------------------------------------------------------------------------------


def test_promote_moves_the_champion_and_records_before_and_after(ports):
    """It makes the version champion, keeps the old one as previous and writes the ledger."""
    entry = promote("3", reason="  better on March data  ", **ports.kw())

    assert ports.registry.alias_map == {"champion": "3", "previous": "2"}
    assert entry["event"] == "manual_promote" and entry["reason"] == "better on March data"
    assert (entry["champion_before"], entry["champion_after"]) == ("2", "3")
    assert entry["seq"] == 1 and ports.ledger.records == [entry]
    assert ports.ledger.last_champion() == "3"


@pytest.mark.parametrize("reason", ["", "   \n"])
def test_promote_refuses_an_empty_reason(ports, reason):
    """It refuses a promotion without a reason before touching the registry or the leases."""
    with pytest.raises(ChampionError, match="reason is required"):
        promote("3", reason=reason, **ports.kw())
    assert ports.registry.calls == [] and ports.leases.taken == []
    assert ports.ledger.records == []


def test_promote_refuses_the_current_champion(ports):
    """It refuses promoting the version that already is the champion, recording nothing."""
    with pytest.raises(ChampionError, match="already the champion"):
        promote("2", reason="again", **ports.kw())
    assert ports.registry.alias_map == {"champion": "2", "previous": "1"}
    assert ports.ledger.records == [] and ports.leases.table == {}


def test_promote_refuses_a_version_whose_model_does_not_verify(ports):
    """It refuses a version whose stored model no longer matches its digest."""
    ports.registry.tamper("3")
    with pytest.raises(IntegrityError):
        promote("3", reason="try it", **ports.kw())
    assert ports.registry.alias_map["champion"] == "2" and ports.ledger.records == []


def test_promote_refuses_an_unknown_version(ports):
    """It names a version the registry does not hold and moves nothing."""
    with pytest.raises(RegistryError, match="v9 not found"):
        promote("9", reason="typo", **ports.kw())
    assert ports.registry.alias_map["champion"] == "2"


def test_promote_makes_the_first_champion_without_a_previous(ports):
    """It promotes into an empty alias, recording no champion before."""
    ports.registry.alias_map.clear()
    entry = promote("1", reason="first", **ports.kw())
    assert ports.registry.alias_map == {"champion": "1"}
    assert entry["champion_before"] is None and entry["champion_after"] == "1"


def test_promote_moves_the_alias_under_the_registry_lease(ports):
    """It holds the registry lease while it moves the alias and gives it up afterwards."""
    seen: list[str | None] = []
    ports.registry.before["move_champion"] = lambda: seen.append(ports.leases.holder(REGISTRY))
    promote("3", reason="under the lease", **ports.kw(lease_timeout=7.0))

    assert seen == ["operator"]
    assert ports.leases.taken == [REGISTRY] and ports.leases.timeouts == [7.0]
    assert ports.leases.holder(REGISTRY) is None


def test_promote_fails_while_another_owner_holds_the_registry_lease(ports):
    """It raises LeaseBusyError after the timeout when a cycle or another admin holds it."""
    ports.leases.peer("cycle@host").acquire(REGISTRY)
    with pytest.raises(LeaseBusyError, match="cycle@host"):
        promote("3", reason="busy", **ports.kw(lease_timeout=0.0))
    assert ports.leases.timeouts == [0.0]
    assert ports.registry.alias_map["champion"] == "2" and ports.ledger.records == []


def test_promote_refuses_when_the_alias_moves_under_it(ports):
    """It raises, records nothing, when the compare-and-set finds another champion."""
    ports.registry.before["move_champion"] = lambda: ports.registry.set_alias("champion", "1")
    with pytest.raises(RegistryError, match="moved during the promotion"):
        promote("3", reason="race", **ports.kw())
    assert ports.registry.alias_map["champion"] == "1" and ports.ledger.records == []
    assert ports.leases.table == {}


# -- rollback ---------------------------------------------------------------------------------


def test_rollback_swaps_champion_and_previous_and_a_second_undoes_it(ports):
    """It swaps champion and previous, so rolling back twice returns to the start."""
    first = rollback(reason="v2 misbehaves", **ports.kw())
    assert ports.registry.alias_map == {"champion": "1", "previous": "2"}
    assert first["event"] == "rollback"
    assert (first["champion_before"], first["champion_after"]) == ("2", "1")

    second = rollback(reason="it was the data", **ports.kw())
    assert ports.registry.alias_map == {"champion": "2", "previous": "1"}
    assert (second["champion_before"], second["champion_after"]) == ("1", "2")
    assert [e["seq"] for e in ports.ledger.records] == [1, 2]


def test_rollback_without_a_previous_version_is_refused(ports):
    """It refuses a rollback with nothing to go back to, moving and recording nothing."""
    del ports.registry.alias_map["previous"]
    with pytest.raises(ChampionError, match="nothing to roll back to"):
        rollback(reason="undo", **ports.kw())
    assert ports.registry.alias_map == {"champion": "2"} and ports.ledger.records == []
    assert ports.leases.table == {}


def test_rollback_without_a_champion_is_refused(ports):
    """It refuses a rollback when no version is champion."""
    del ports.registry.alias_map["champion"]
    with pytest.raises(ChampionError, match="nothing to roll back to"):
        rollback(reason="undo", **ports.kw())


def test_rollback_to_the_champion_itself_is_refused(ports):
    """It refuses when previous points at the champion (a torn move left them equal)."""
    ports.registry.set_alias("previous", "2")
    with pytest.raises(ChampionError, match="'previous' is the champion itself"):
        rollback(reason="undo", **ports.kw())
    assert ports.ledger.records == []


def test_rollback_refuses_an_empty_reason(ports):
    """It refuses a rollback without a reason before taking any lease."""
    with pytest.raises(ChampionError, match="reason is required"):
        rollback(reason=" ", **ports.kw())
    assert ports.leases.taken == [] and ports.registry.alias_map["champion"] == "2"


def test_rollback_refuses_a_previous_model_that_does_not_verify(ports):
    """It keeps the champion when the previous version's model fails its digest check."""
    ports.registry.tamper("1")
    with pytest.raises(IntegrityError):
        rollback(reason="undo", **ports.kw())
    assert ports.registry.alias_map == {"champion": "2", "previous": "1"}
    assert ports.ledger.records == [] and ports.leases.table == {}


def test_rollback_fails_while_another_owner_holds_the_registry_lease(ports):
    """It raises LeaseBusyError after the timeout 0 and leaves the aliases alone."""
    ports.leases.peer("cycle@host").acquire(REGISTRY)
    with pytest.raises(LeaseBusyError):
        rollback(reason="busy", **ports.kw(lease_timeout=0.0))
    assert ports.registry.alias_map == {"champion": "2", "previous": "1"}
    assert "alias" not in ports.registry.calls  # refused before reading the registry


def test_rollback_moves_the_alias_under_the_registry_lease(ports):
    """It holds the registry lease from reading the aliases until the ledger entry is written."""
    seen: list[str | None] = []
    ports.registry.before["alias"] = lambda: seen.append(ports.leases.holder(REGISTRY))
    ports.registry.before["move_champion"] = lambda: seen.append(ports.leases.holder(REGISTRY))
    append = ports.ledger.append

    def watched(entry: object) -> dict[str, object]:
        seen.append(ports.leases.holder(REGISTRY))
        return append(entry)

    ports.ledger.append = watched
    rollback(reason="under the lease", **ports.kw())
    assert seen == ["operator"] * 4  # champion, previous, the move, the ledger entry
    assert ports.leases.holder(REGISTRY) is None

"""The example contracts under `examples/` parse and document every key, as the shipped one."""

from __future__ import annotations

from pathlib import Path

import pytest

from champion.training.config import load_contract
from tests.unit.test_contract_docs import undocumented

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TASKS = {"multiclass": "classification", "regression": "regression"}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_example_contract_parses_and_documents_every_key(name: str) -> None:
    """It loads the example's champion.toml, paths under its folder, every key documented."""
    path = EXAMPLES / name / "champion.toml"
    contract = load_contract(path)
    assert contract.task == TASKS[name]
    assert contract.data.landing_zone == path.parent / "var" / "landing"
    assert contract.data.manifest == path.parent / "var" / "manifest.json"
    assert undocumented(path.read_text(encoding="utf-8")) == []
    if name == "multiclass":
        assert contract.classes is not None and len(contract.classes) == 3

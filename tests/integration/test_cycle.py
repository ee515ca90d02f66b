"""The retrain cycle against a real MLflow store: bootstrap, hold, promote, quarantine, STALE."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from champion.training import actions
from champion.training.artifacts import TAG_SHA256
from champion.training.manifest import Manifest
from champion.training.records import Verdict
from champion.training.registry import load_verified

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bootstrap_on_empty_registry_makes_version_1_champion(project):
    """It promotes version 1 on an empty registry and records everything a version needs."""
    project.simulate(2)
    result = project.cycle()
    assert result.verdict is Verdict.PROMOTE, result.reason
    registry = project.registry()
    assert registry.aliases()["champion"] == "1"
    ref = registry.alias("champion")
    assert ref.sha256 and ref.candidate_json
    # Whatever family the search picked, it serves compiled.
    assert ref.runtime == "onnxruntime", (ref.candidate_json, ref.runtime_note)
    loaded = registry.load(ref, cache_dir=project.root / "dl")
    assert list(loaded.input_names) == list(project.contract.features)
    run = registry.run_summary(ref.run_id)
    assert run is not None and run.status == "FINISHED"
    assert run.tags["champion.verdict"] == "PROMOTE"
    # What the MLflow UI shows an operator: the verdict sentence, the family, the CV summary.
    description = registry.client.get_model_version(registry.model_name, "1").description
    family = json.loads(ref.candidate_json)["family"]
    assert description.startswith(f"PROMOTE: {result.reason}\n")
    assert f"Family: {family} ({family}(" in description
    assert f"CV roc_auc: {run.metrics['cv_roc_auc_mean']:.4f} ± " in description
    assert "cv_roc_auc_mean" in run.metrics and "cv_roc_auc_fold_0" in run.metrics
    artifacts = set(registry.artifacts(ref.run_id))
    assert {"verdict.json", "fingerprint.json", "reference_profile.json", "plots"} <= artifacts
    plots = set(registry.artifacts(ref.run_id, "plots"))
    assert {
        "plots/confusion_matrix.png",
        "plots/roc_pr.png",
        "plots/feature_importance.png",
    } <= plots
    fp = registry.run_json(ref.run_id, "fingerprint.json")
    assert fp["rows"] == 1200 and len(fp["batches"]) == 2 and fp["time_min"] < fp["time_max"]
    trials = registry.runs(parent=ref.run_id)
    assert len(trials) == result.trials == 3
    assert any(k.startswith("roc_auc_fold_") for k in trials[0].metrics)
    entries = project.ledger().entries()
    assert entries[-1]["verdict"] == "PROMOTE" and entries[-1]["champion_after"] == "1"
    assert entries[-1]["data"]["rows"] == 1200


def test_more_data_from_the_same_concept_holds(project):
    """It keeps the champion when fresh data comes from the same concept (no promotion on noise)."""
    project.simulate(2)
    assert project.cycle().verdict is Verdict.PROMOTE
    project.simulate(1)
    result = project.cycle()
    assert result.verdict is Verdict.HOLD, result.reason
    aliases = project.registry().aliases()
    assert aliases["champion"] == "1" and aliases["challenger"] == "2"
    assert "previous" not in aliases


def test_concept_change_promotes_and_keeps_previous(project):
    """It promotes after a concept change, and `previous` points at the old champion."""
    project.simulate(2)
    assert project.cycle().verdict is Verdict.PROMOTE
    project.simulate(2, drift_at=2)
    result = project.cycle()
    assert result.verdict is Verdict.PROMOTE, result.reason
    assert result.numbers["mean_delta"] > 0.05
    aliases = project.registry().aliases()
    assert aliases == {"champion": "2", "previous": "1", "challenger": "2"}
    entry = project.ledger().entries()[-1]
    assert (entry["champion_before"], entry["champion_after"]) == ("1", "2")


def test_batch_with_shuffled_labels_is_not_promoted(project):
    """It does not promote a challenger trained on a batch whose labels are noise."""
    project.simulate(2)
    assert project.cycle().verdict is Verdict.PROMOTE
    (path,) = project.simulate(1, seed=99)
    frame = pd.read_csv(path)
    frame["approved"] = np.random.default_rng(0).permutation(frame["approved"].to_numpy())
    frame.to_csv(path, index=False)
    result = project.cycle()
    assert result.verdict is not Verdict.PROMOTE, result.reason
    assert project.registry().aliases()["champion"] == "1"


def test_corrupt_batches_are_quarantined_and_the_cycle_continues(project):
    """It quarantines corrupt batches with a reason, keeps every byte, and trains on the rest."""
    good = project.simulate(2)
    base = pd.read_csv(good[0])
    bad = {
        "missing-column.csv": base.drop(columns=["age"]),
        "wrong-type.csv": base.assign(salary="lots"),
        "unknown-class.csv": base.assign(approved=2),
    }
    originals = {}
    for name, frame in bad.items():
        frame.to_csv(project.landing / name, index=False)
        originals[name] = (project.landing / name).read_bytes()
    result = project.cycle()
    assert result.verdict is Verdict.PROMOTE, result.reason
    quarantine = project.contract.data.quarantine
    for name, content in originals.items():
        assert (quarantine / name).read_bytes() == content
        reason = json.loads((quarantine / f"{name}.reason.json").read_text())
        assert reason["reasons"], name
    reasons = {n: json.loads((quarantine / f"{n}.reason.json").read_text())["reasons"] for n in bad}
    assert any("'age': missing" in r for r in reasons["missing-column.csv"])
    assert any("'salary': wrong type" in r for r in reasons["wrong-type.csv"])
    assert any("not among the declared classes [0, 1]" in r for r in reasons["unknown-class.csv"])
    fp = project.registry().run_json(result.run_id, "fingerprint.json")
    assert fp["rows"] == 1200


def test_single_class_window_skips_until_another_class_arrives(project):
    """It skips a window holding one class and trains on those batches once others arrive."""
    (path,) = project.simulate(1)
    pd.read_csv(path).assign(approved=1).to_csv(path, index=False)
    result = project.cycle()
    assert result.verdict is Verdict.SKIPPED, result.reason
    assert "single class (1)" in result.reason
    manifest = Manifest(project.contract.data.manifest)
    (single,) = manifest.unconsumed()
    project.simulate(2)
    result = project.cycle()
    assert result.verdict is Verdict.PROMOTE, result.reason
    fp = project.registry().run_json(result.run_id, "fingerprint.json")
    assert single in fp["batches"] and fp["rows"] == 1800


def test_no_valid_data_skips_with_a_reason(project):
    """It ends SKIPPED, with a reason, when the landing zone holds nothing usable."""
    project.landing.mkdir(parents=True)
    pd.DataFrame({"x": [1, 2]}).to_csv(project.landing / "junk.csv", index=False)
    result = project.cycle()
    assert result.verdict is Verdict.SKIPPED
    assert "No valid data" in result.reason and "1 quarantined (junk.csv:" in result.reason
    assert project.cycle().verdict is Verdict.SKIPPED


def test_champion_moved_during_the_cycle_gives_stale(project):
    """It ends STALE and moves nothing when the champion changes after the comparison started."""
    project.simulate(2)
    assert project.cycle().verdict is Verdict.PROMOTE
    project.simulate(1)
    assert project.cycle().verdict is Verdict.HOLD  # v2 exists, not champion
    project.simulate(2, drift_at=3)
    registry, ledger = project.registry(), project.ledger()

    def meddle(stage: str) -> None:
        if stage == "promote":
            actions.promote(
                "2",
                reason="operator",
                registry=registry,
                ledger=ledger,
                leases=project.components().leases,
            )

    result = project.cycle(checkpoint=meddle)
    assert result.verdict is Verdict.STALE, result.reason
    assert registry.aliases()["champion"] == "2"
    assert registry.version(result.version).tags["champion.verdict"] == "STALE"
    # Its batches were not consumed: the next cycle compares against the new champion.
    again = project.cycle()
    assert again.verdict is Verdict.PROMOTE and again.champion_before == "2"


def test_same_data_config_and_seed_give_the_same_choice(tmp_path, template_db):
    """It chooses the same hyperparameters with the same scores from the same data and seed."""
    from tests.integration.conftest import make_project

    outcomes = []
    for name in ("a", "b"):
        proj = make_project(tmp_path / name, template_db)
        proj.simulate(2)
        result = proj.cycle()
        ref = proj.registry().alias("champion")
        metrics = proj.registry().run_summary(ref.run_id).metrics
        outcomes.append((ref.candidate_json, metrics["cv_roc_auc_mean"], result.trials))
    assert outcomes[0] == outcomes[1]


def test_tampered_model_is_refused(project):
    """It refuses to load or promote a model file whose digest does not match the record."""
    project.simulate(2)
    assert project.cycle().verdict is Verdict.PROMOTE
    registry = project.registry()
    ref = registry.alias("champion")
    local = registry.download(ref, project.root / "dl")
    load_verified(local, expected_sha256=ref.tags[TAG_SHA256])
    model_files = list(project.settings.artifact_root.rglob("model.skops"))
    assert len(model_files) == 1
    model_files[0].write_bytes(model_files[0].read_bytes() + b"tampered")
    from champion.training.errors import IntegrityError

    with pytest.raises(IntegrityError, match="digest"):
        registry.load(ref, cache_dir=project.root / "dl2")
    # A cycle against a corrupt champion fails loudly instead of comparing against nothing.
    project.simulate(1)
    result = project.cycle()
    assert result.verdict is Verdict.FAILED and "digest" in result.reason
    assert registry.aliases()["champion"] == "1"


def test_cycles_leave_no_model_copies_behind(project, tmp_path, monkeypatch):
    """It removes what each cycle downloads (the champion to compare against, its run's
    fingerprint): no temp folder is left behind."""
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    project.simulate(2)
    assert project.cycle().verdict is Verdict.PROMOTE
    project.simulate(1, seed=8)
    assert project.cycle().verdict in (Verdict.HOLD, Verdict.PROMOTE)  # loaded the champion
    assert sorted(p.name for p in scratch.iterdir()) == [], [
        sorted(str(q.relative_to(scratch)) for q in p.rglob("*"))[:10] for p in scratch.iterdir()
    ]

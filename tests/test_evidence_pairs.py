"""The evidence study's bookkeeping: the seed-ensemble control pairs each two stock replicates once, the budget curve
trains what an ensemble needs first, ensembles are predicted at the weight chosen on validation, and evaluated rows
carry the fields they are evaluated under now; the budget curve commits what each model says of itself."""

import json
import os
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import evidence_study  # noqa: E402
from benchmark_protocol import evaluate_prediction_folder, prepared_error  # noqa: E402
from evidence_study import budget_curve_models, diffusion_command, seed_ensemble_pairs  # noqa: E402


@pytest.mark.parametrize("replicates, pairs", [
    ([0], []),
    ([2, 3], [(2, 3)]),
    ([0, 1, 2], [(0, 1), (1, 2), (2, 0)]),
    ([0, 2, 3, 5], [(0, 2), (2, 3), (3, 5), (5, 0)]),
])
def test_each_unordered_pair_once(replicates, pairs):
    found = seed_ensemble_pairs(replicates)
    assert found == pairs
    assert len({frozenset(p) for p in found}) == len(found)
    assert all(a != b for a, b in found)


@pytest.mark.parametrize("replicates, stock_replicates, models", [
    ([0], 1, [("stock", 0), ("recycling_block", 0)]),
    ([0], 2, [("stock", 0), ("recycling_block", 0), ("stock", 1)]),
    ([2, 4], 2, [("stock", 2), ("recycling_block", 2), ("stock", 4), ("recycling_block", 4), ("stock", 3),
                 ("stock", 5)]),
])
def test_budget_curve_trains_each_ensembles_stock_before_its_recycling(replicates, stock_replicates, models):
    """Each model is predicted as soon as it is trained, and ensemble r needs stock r; the seed-ensemble partners
    come last, so that a run cut short has the ensembles first."""
    found = budget_curve_models(replicates, stock_replicates)
    assert found == models
    for r in replicates:
        assert found.index(("stock", r)) < found.index(("recycling_block", r))


def test_ensemble_prediction_takes_the_weight_chosen_on_validation():
    ensemble = diffusion_command("T", "ddpm", "/stock")
    assert ensemble[ensemble.index("--ensemble_with") + 1] == "/stock"
    assert "--ensemble_weight" not in ensemble
    # a diffusion model alone keeps every sampling step, for the per-step Dice
    assert "--save_steps" in diffusion_command("T", "ddim") and "--ensemble_with" not in diffusion_command("T", "ddim")


def test_cached_metrics_take_the_fields_of_the_current_call(tmp_path):
    """A metrics cache written under other fields (an older CSV layout) must not leak them into new rows."""
    cached = [{"iterations": 300, "method": "stock", "trainer": "old", "step": 5, "case": "c", "label": 1,
               "Dice": 0.5, "HD95": 2.0}]
    (tmp_path / "metrics.json").write_text(json.dumps(cached))
    rows = evaluate_prediction_folder(str(tmp_path), [], ".nii.gz", None, [1],
                                      {"iterations": 300, "method": "stock", "replicate": 0, "trainer": "new"})
    assert rows == [{"iterations": 300, "method": "stock", "replicate": 0, "trainer": "new", "step": 5, "case": "c",
                     "label": 1, "Dice": 0.5, "HD95": 2.0}]
    assert list(rows[0])[:4] == ["iterations", "method", "replicate", "trainer"]


@pytest.mark.parametrize("script, arguments", [
    ("evidence_study", ["--stage", "budget_curve", "--budgets", "3000"]),
    ("sample_count_study", ["--tag", "t", "-m", "m", "--ensemble_with", "s", "--stock_test", "p"]),
    ("uncertainty_study", []),
    ("paper_claims", ["--stage", "train"]),
])
def test_unprepared_work_folder_is_one_clear_error(script, arguments, tmp_path, monkeypatch, capsys):
    module = __import__(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--dataset", "hippocampus", "--work", str(tmp_path),
                                      *arguments])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert os.path.join(str(tmp_path), "hippocampus", "nnUNet_preprocessed", "Dataset527_Hippocampus") in error
    assert "--stage prepare" in error
    assert not os.path.exists(os.path.join(tmp_path, "hippocampus")), "nothing is created in a wrong --work"


def test_a_prepared_work_folder_passes(tmp_path):
    spec = {"name": "Dataset527_Hippocampus", "key": "hippocampus"}
    os.makedirs(tmp_path / "nnUNet_preprocessed" / "Dataset527_Hippocampus")
    # a work folder whose raw data was deleted later: the test cases' images and labels are gone
    assert "nnUNet_raw" in prepared_error(spec, str(tmp_path))
    os.makedirs(tmp_path / "nnUNet_raw" / "Dataset527_Hippocampus")
    assert prepared_error(spec, str(tmp_path)) is None
    assert "Dataset999_Other does not exist" in prepared_error({**spec, "name": "Dataset999_Other"}, str(tmp_path))


def _trained_model(folder, validation_dice: float, seconds: float | None = None):
    fold = folder / "fold_0"
    (fold / "validation").mkdir(parents=True)
    (fold / "validation" / "summary.json").write_text(json.dumps({"foreground_mean": {"Dice": validation_dice}}))
    if seconds is not None:
        (fold / "study_training_time.json").write_text(json.dumps({"seconds": seconds, "continued": False}))


def test_budget_curve_records_validation_dice_weights_and_wall_times(tmp_path, monkeypatch):
    """The budget curve's validation Dice, chosen weights and prediction times are committed with its test rows (they
    were once only in the work folder, and were lost with it); a later replicate merges into what is recorded."""
    monkeypatch.setattr(evidence_study, "REPO", str(tmp_path / "repo"))
    (tmp_path / "repo" / "docs" / "results").mkdir(parents=True)
    work = tmp_path / "work"
    stock, recycling = work / "r0" / "nnUNetTrainer_2000iters__P__2d", work / "r0" / "Recycle_2000iters__P__2d"
    _trained_model(stock, 0.96, seconds=2207.4)
    _trained_model(recycling, 0.97)  # trained outside the study: no wall time
    (recycling / "ensemble_choice.json").write_text(json.dumps({os.path.realpath(stock): {"weight": 0.45}}))
    for method, seconds in (("stock_2000", 80.2), ("ensemble_recycling_block_2000", 120.0)):
        (work / "predictions" / "replicate_0" / method).mkdir(parents=True)
        (work / "predictions" / "replicate_0" / method / "finished.json").write_text(json.dumps({"seconds": seconds}))
    spec = {"key": "hc18"}
    evidence_study.record_curve_models(spec, str(work), 2000, {("stock", 0): str(stock),
                                                               ("recycling_block", 0): str(recycling),
                                                               ("stock", 1): str(work / "r1" / "untrained")})
    later = work / "r2" / "nnUNetTrainer_2000iters__P__2d"
    _trained_model(later, 0.95, seconds=100.0)
    path = evidence_study.record_curve_models(spec, str(work), 2000, {("stock", 2): str(later)})

    recorded = json.load(open(path))["2000"]
    assert recorded["stock"]["0"] == {"trainer": "nnUNetTrainer_2000iters", "iterations": 2000,
                                      "validation_dice": 0.96, "training_seconds": 2207,
                                      "prediction_seconds": {"stock": 80}}
    assert recorded["stock"]["2"]["validation_dice"] == 0.95 and "1" not in recorded["stock"]
    block = recorded["recycling_block"]["0"]
    assert "training_seconds" not in block
    assert block["ensemble_choice"]["weight"] == 0.45
    assert block["prediction_seconds"] == {"ensemble_recycling_block": 120}


def test_timing_markers_are_read_back_and_finished_work_is_not_redone(tmp_path):
    """Every stage resumes by its marker: the wall time written is the one read back, and a marked stage is skipped."""
    marker = tmp_path / "stage" / "finished.json"
    calls = []
    evidence_study._timed(str(marker), calls.append, "ran")
    evidence_study._timed(str(marker), calls.append, "ran again")
    assert calls == ["ran"]
    evidence_study.record_seconds(str(tmp_path / "pair.json"), time.time() - 90.0, pair=["a", "b"])
    assert json.load(open(tmp_path / "pair.json"))["pair"] == ["a", "b"]
    assert evidence_study.recorded_seconds(str(tmp_path / "pair.json")) == 90
    assert evidence_study.recorded_seconds(str(tmp_path / "missing.json")) is None


def test_a_continued_training_records_the_wall_time_of_all_its_parts(tmp_path, monkeypatch):
    """A training cut short (by the end of a session) and continued with --c records the earlier part's epochs too, from
    the times nnU-Net's logger keeps in checkpoint_latest.pth, not only the continuation's own wall time."""
    spec = {"id": 520, "name": "Dataset520_HC18", "configuration": "2d"}
    fold = tmp_path / "nnUNet_results" / "replicate_0" / "Dataset520_HC18" / "T_5000iters__nnUNetPlans__2d" / "fold_0"
    fold.mkdir(parents=True)
    torch.save({"network_weights": {},
                "logging": {"epoch_start_timestamps": [0.0, 1000.0], "epoch_end_timestamps": [70.0, 1080.0]}},
               fold / "checkpoint_latest.pth")
    commands = []
    monkeypatch.setattr(evidence_study, "run", lambda command, env: commands.append(command))
    evidence_study.train_model(spec, str(tmp_path), "T_5000iters", 0, "cpu")

    assert commands[0][-1] == "--c"
    marker = json.load(open(fold / "study_training_time.json"))
    assert marker["continued"] and marker["seconds_before_continue"] == 150
    assert 150 <= marker["seconds"] < 160

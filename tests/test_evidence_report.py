"""The evidence report's numbers from per-case CSVs with known answers: the equal-budget control of the warm start,
the validation-based choice of "recycling" and the budget curve with the main study's 1000-iteration point."""

import json
import os
import sys

import pandas as pd
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import evidence_report  # noqa: E402

CASES = [f"case_{i}" for i in range(8)]


def _rows(method: str, sampler: str, replicate: int, dice: list[float]) -> list[dict]:
    steps = range(1, 6) if sampler != "-" else [5]
    return [{"replicate": replicate, "method": method, "sampler": sampler, "step": step, "case": case, "label": 1,
             "Dice": value, "HD95": 1.0} for step in steps for case, value in zip(CASES, dice, strict=True)]


@pytest.fixture
def study(tmp_path, monkeypatch):
    """A docs/results folder with two stock replicates, 'block' and warm recycling, stock at 1300 and a budget curve
    with a seed-ensemble and an ensemble at 300 iterations."""
    results = tmp_path / "docs" / "results"
    results.mkdir(parents=True)
    monkeypatch.setattr(evidence_report, "REPO", str(tmp_path))
    monkeypatch.setattr(evidence_report, "EVIDENCE", str(results / "evidence.json"))
    base = [0.80 + 0.01 * i for i in range(8)]
    rows = [*_rows("stock", "-", 0, base), *_rows("stock", "-", 1, [v + 0.02 for v in base]),
            *_rows("stock_seed_ensemble", "-", 0, [v + 0.015 for v in base]),
            *_rows("recycling_block", "ddpm", 0, [v - 0.01 for v in base]),
            # replicate 1 sampled with DDIM only: it does not count towards DDPM's replicates
            *_rows("recycling_block", "ddim", 1, base),
            *_rows("ensemble_recycling_block", "ddpm", 0, [v + 0.03 for v in base]),
            *_rows("stock_1300", "-", 1, [v + 0.005 for v in base]),
            # the warm start beats stock at 1300 by 0.01 on six cases and loses 0.01 on two
            *_rows("recycling_warm", "ddpm", 1, [v + 0.015 if i < 6 else v - 0.005 for i, v in enumerate(base)])]
    pd.DataFrame(rows).to_csv(results / "evidence_toy_cases.csv", index=False)
    models = {"recycling_block": {"0": {"validation_dice": 0.7}}, "recycling_warm": {"1": {"validation_dice": 0.9}}}
    (results / "evidence_toy_models.json").write_text(json.dumps(models))
    # at 300 iterations two stock replicates (0.6 and 0.7), their seed-ensemble, 'block' recycling and its ensemble
    curve = [{"iterations": 300, "method": method, "replicate": replicate, "trainer": "t", "training_seconds": 1,
              "step": 5, "case": case, "label": label, "Dice": value, "HD95": 1.0}
             for method, replicate, value in (("stock", 0, 0.6), ("stock", 1, 0.7), ("stock_seed_ensemble", 0, 0.66),
                                              ("recycling_block", 0, 0.5), ("ensemble_recycling_block", 0, 0.68))
             for case in CASES for label in (1, 2)]
    pd.DataFrame(curve).to_csv(results / "evidence_toy_budget_curve.csv", index=False)
    return tmp_path


def test_warm_start_is_compared_with_stock_at_its_total_budget(study):
    result = evidence_report.write_evidence({"key": "toy"})
    control = result["paired"]["recycling_warm_ddpm vs stock_1300"]
    assert control["mean_difference"] == pytest.approx((6 * 0.01 - 2 * 0.01) / 8)
    assert (control["better"], control["worse"], control["cases"]) == (6, 2, 8)
    assert result["dice"]["stock_1300"] == pytest.approx(sum(0.805 + 0.01 * i for i in range(8)) / 8)
    # per case the two stock replicates are averaged (+0.01 over replicate 0)
    assert result["paired"]["stock_1300 vs stock"]["mean_difference"] == pytest.approx(-0.005)
    # the same extra iterations against the other way to spend a second budget: two stock seeds averaged
    assert result["paired"]["stock_1300 vs stock_seed_ensemble"]["mean_difference"] == pytest.approx(0.005 - 0.015)
    # within replicate 1 stock_1300 meets that replicate's stock alone (+0.02 over replicate 0)
    within = result["paired_by_replicate"]
    assert within["1"]["stock_1300 vs stock"]["mean_difference"] == pytest.approx(-0.015)
    assert "stock_1300 vs stock" not in within["0"] and "recycling_block_ddpm vs stock" in within["0"]


def test_recycling_is_chosen_among_models_with_a_predicted_ensemble(study):
    result = evidence_report.write_evidence({"key": "toy"})
    # the warm model has the better validation Dice but no ensemble, so it cannot be "recycling"
    assert result["recycling_model"] == "recycling_block"
    assert result["paired"]["ensemble vs stock_seed_ensemble"]["mean_difference"] == pytest.approx(0.03 - 0.015)


def test_budget_curve_joins_its_runs_with_the_main_studys_1000_iterations(study):
    result = evidence_report.write_evidence({"key": "toy"})
    curve = result["budget_curve"]
    assert sorted(curve, key=int) == ["300", "1000"]
    # the two stock replicates of the 300 point are averaged per case
    assert curve["300"]["stock_dice"] == pytest.approx(0.65)
    assert curve["300"]["recycling_block vs stock"]["mean_difference"] == pytest.approx(-0.15)
    assert curve["300"]["recycling_block vs stock"]["cases"] == len(CASES)  # one value per case: labels averaged
    assert curve["300"]["ensemble_recycling_block vs stock"]["mean_difference"] == pytest.approx(0.03)
    assert curve["300"]["ensemble_recycling_block vs stock_seed_ensemble"]["mean_difference"] == pytest.approx(0.02)
    assert curve["300"]["stock_seed_ensemble vs stock"]["mean_difference"] == pytest.approx(0.01)
    # within replicate 0 the ensemble and the seed-ensemble meet stock 0 alone (0.6), not the mean of both stocks;
    # replicate 1 has stock only, and the main study's 1000 point keeps its paired tests at the top level
    within = curve["300"]["paired_by_replicate"]
    assert sorted(within) == ["0"]
    assert within["0"]["ensemble_recycling_block vs stock"]["mean_difference"] == pytest.approx(0.08)
    assert within["0"]["stock_seed_ensemble vs stock"]["mean_difference"] == pytest.approx(0.06)
    assert within["0"]["ensemble_recycling_block vs stock_seed_ensemble"]["mean_difference"] == pytest.approx(0.02)
    assert "paired_by_replicate" not in curve["1000"]
    # stock: per case the mean of replicates 0 and 1 (0.835 and 0.855 on average); 'block': replicate 0's DDPM only
    assert curve["1000"]["stock_dice"] == pytest.approx(0.845) == result["dice"]["stock"]
    assert curve["1000"]["recycling_block_dice"] == pytest.approx(0.825) == result["dice"]["recycling_block_ddpm"]
    assert curve["1000"]["ensemble_recycling_block vs stock_seed_ensemble"] == \
        result["paired"]["ensemble_recycling_block vs stock_seed_ensemble"]
    assert (curve["300"]["stock_replicates"], curve["1000"]["stock_replicates"]) == (2, 2)
    assert (curve["300"]["stock_seed_ensemble_replicates"], curve["1000"]["recycling_block_replicates"]) == (1, 1)
    assert os.path.isfile(study / "docs" / "evidence_toy_budget_curve.png")
    assert json.load(open(study / "docs" / "results" / "evidence.json"))["toy"]["budget_curve"] == curve

"""The sample-count study: the mean of the first k saved samples is what --num_samples k averages, and (K, w) is
chosen from validation Dice alone, ties going to fewer samples and to the weight nearest the plain average."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from sample_count_study import SAMPLE_COUNTS, choose, means_of_first_samples  # noqa: E402

from nnunetv2_diffusion.inference.ensemble_choice import WEIGHTS  # noqa: E402


def test_mean_of_the_first_k_samples(tmp_path):
    os.makedirs(tmp_path / "samples")
    samples = [np.full((2, 3), v, dtype=np.float32) for v in (0.2, 0.4, 0.9)]
    for k, p in enumerate(samples, start=1):
        np.savez(tmp_path / "samples" / f"case_sample{k}.npz", probabilities=p)
    means = means_of_first_samples(str(tmp_path), "case", (1, 2, 3))
    np.testing.assert_allclose(means[1], samples[0])
    np.testing.assert_allclose(means[2], np.full((2, 3), 0.3), rtol=1e-6)
    np.testing.assert_allclose(means[3], np.full((2, 3), 0.5), rtol=1e-6)


def _table(best: dict[int, tuple[float, float]]) -> dict[int, dict[float, np.ndarray]]:
    """Validation Dice 0.9 everywhere but at the ends (diffusion alone, w = 0: 0.88; stock alone, w = 1: 0.87)
    and at (K, w) -> Dice given in ``best``, three cases each."""
    table = {k: {w: np.full(3, {0.0: 0.88, 1.0: 0.87}.get(w, 0.9)) for w in WEIGHTS} for k in SAMPLE_COUNTS}
    for k, (w, dice) in best.items():
        table[k][w] = np.full(3, dice)
    return table


def test_choice_is_the_best_validation_ensemble():
    choice = choose(_table({1: (0.3, 0.91), 4: (0.7, 0.95), 8: (0.2, 0.93)}))
    assert (choice["samples"], choice["weight"]) == (4, 0.7)
    assert choice["weight_by_samples"] == {"1": 0.3, "2": 0.5, "4": 0.7, "8": 0.2}
    assert choice["validation_dice"]["4"]["ensemble"] == pytest.approx(0.95)
    assert choice["validation_dice"]["4"]["diffusion_alone"] == pytest.approx(0.88)
    assert choice["stock_alone"] == pytest.approx(0.87)


def test_ties_go_to_fewer_samples_and_the_plain_average():
    choice = choose(_table({}))
    assert (choice["samples"], choice["weight"]) == (1, 0.5)
    choice = choose(_table({2: (0.25, 0.95), 8: (0.75, 0.95)}))
    assert (choice["samples"], choice["weight"]) == (2, 0.25)


def test_pools_average_per_case_over_their_tags_and_are_kept(tmp_path, monkeypatch):
    import json

    import pandas as pd
    import sample_count_study

    csv_path, json_path = str(tmp_path / "s.csv"), str(tmp_path / "s.json")
    monkeypatch.setattr(sample_count_study, "results_paths", lambda key: (csv_path, json_path))
    rows = []
    for tag, shift in (("a", 0.0), ("b", 0.1)):
        for case, base in (("c1", 0.5), ("c2", 0.7)):
            rows.append({"tag": tag, "kind": "stock", "samples": 0, "weight": 1.0, "case": case, "dice": base + shift})
            for k in SAMPLE_COUNTS:  # each kind its own offset, so a mix-up of kinds shows
                for kind, offset in (("diffusion", 0.0), ("ensemble", 0.03), ("average", 0.02)):
                    rows.append({"tag": tag, "kind": kind, "samples": k, "weight": 0.5, "case": case,
                                 "dice": base + shift + 0.01 * k + offset})
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    json.dump({"tags": {t: {"samples": 2, "weight": 0.5} for t in ("a", "b")}}, open(json_path, "w"))
    result = sample_count_study.report("x", {"both": ["a", "b"]})
    tag_a = result["a"]["test_dice"]
    assert tag_a["chosen ensemble"] == pytest.approx((0.55 + 0.75) / 2)  # K = 2 chosen: + 0.02, ensemble + 0.03
    assert tag_a["diffusion_K2"] == pytest.approx(0.62) and tag_a["average_K2"] == pytest.approx(0.64)
    pooled = result["pool both"]["test_dice"]
    assert pooled["stock"] == pytest.approx((0.5 + 0.7 + 0.6 + 0.8) / 4)
    assert pooled["diffusion_K8"] == pytest.approx(pooled["stock"] + 0.08)
    assert pooled["ensemble_K4"] == pytest.approx(pooled["stock"] + 0.07)
    assert pooled["average_K8"] == pytest.approx(pooled["stock"] + 0.10)
    assert result["pool both"]["paired"]["chosen ensemble vs stock"]["better"] == 2
    assert "pool both" in sample_count_study.report("x")  # kept for reports that name no pools
    with pytest.raises(SystemExit, match="pool none"):
        sample_count_study.report("x", {"none": ["a", "zzz"]})

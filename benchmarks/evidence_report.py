"""Tables, paired tests, plots and docs/results/evidence.json for benchmarks/evidence_study.py.

Per case, Dice and HD95 are averaged over labels, then over the replicates that have the method; paired Wilcoxon
signed-rank tests compare two methods on the test cases both have. "recycling" is the recycling model with the best
mean final-validation Dice (nnU-Net's summary.json, averaged over replicates): it is chosen on validation, never on
the test cases, and "ensemble" is stock + that model at the validation-chosen weight (so only models whose ensemble
was predicted are candidates).
"""

import json
import os

import matplotlib
import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from benchmark_protocol import REPO, STEPS  # noqa: E402
from evidence_study import DIFFUSION_METHODS, ITERATIONS, STOCK_METHODS  # noqa: E402

EVIDENCE = os.path.join(REPO, "docs", "results", "evidence.json")


def per_case(frame: pd.DataFrame, by: tuple[str, ...] = ("method", "sampler")) -> pd.DataFrame:
    """One Dice/HD95 per ``by`` (the main study: method and sampler; the budget curve: iterations and method), step
    and case: mean over labels, then over replicates."""
    keys = [*by, "step", "case"]
    return frame.groupby([*keys, "replicate"])[["Dice", "HD95"]].mean().groupby(keys).mean().reset_index()


def final_metric(cases: pd.DataFrame, method: str, sampler: str, metric: str = "Dice") -> pd.Series:
    """Per-case values of the last sampling step (stock models have one step)."""
    chosen = cases[(cases.method == method) & (cases.sampler == sampler) & (cases.step == STEPS)]
    return chosen.set_index("case")[metric]


def paired(a: pd.Series, b: pd.Series) -> dict:
    """Wilcoxon signed-rank of per-case Dice, a vs b; positive mean_difference: a better."""
    joined = pd.concat([a, b], axis=1, keys=["a", "b"]).dropna()
    difference = joined["a"] - joined["b"]
    p = float(wilcoxon(joined["a"], joined["b"]).pvalue) if (difference != 0).any() else 1.0
    return {"mean_difference": float(difference.mean()), "p": p, "better": int((difference > 0).sum()),
            "worse": int((difference < 0).sum()), "cases": int(len(joined))}


def validation_dice(models: dict, method: str) -> float | None:
    """Mean foreground Dice of nnU-Net's final validation over the replicates that finished it, from
    docs/results/evidence_<dataset>_models.json (written by the study's evaluate stage)."""
    scores = [record["validation_dice"] for record in models.get(method, {}).values()]
    return float(np.mean(scores)) if scores else None


def _plot(cases: pd.DataFrame, key: str) -> list[str]:
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in [m for m in DIFFUSION_METHODS if m in set(cases.method)]:
        for sampler, style in (("ddpm", "-o"), ("ddim", "--s")):
            curve = cases[(cases.method == method) & (cases.sampler == sampler)].groupby("step")["Dice"].mean()
            if len(curve):
                ax.plot(curve.index, curve.values, style, label=f"{method} {sampler}")
    for method, color in zip((*STOCK_METHODS, "stock_seed_ensemble"), ("k", "tab:brown", "0.5"), strict=True):
        if method in set(cases.method):
            ax.axhline(cases[cases.method == method]["Dice"].mean(), linestyle=":", color=color, label=method)
    ax.set_xlabel("sampling step")
    ax.set_ylabel("mean test Dice")
    ax.set_xticks(range(1, STEPS + 1))
    ax.legend(fontsize=7)
    ax.set_title(f"{key}: Dice over sampling steps")
    fig.tight_layout()
    paths.append(os.path.join(REPO, "docs", f"evidence_{key}_dice_vs_step.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    final = cases[cases.step == STEPS].groupby(["method", "sampler"])["Dice"].agg(["mean", "sem"]).reset_index()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(range(len(final)), final["mean"], yerr=final["sem"], capsize=3)
    ax.set_xticks(range(len(final)), [f"{m}\n{s if s != '-' else ''}" for m, s in zip(final.method, final.sampler,
                                                                                      strict=True)],
                  rotation=45, ha="right", fontsize=7)
    ax.set_ylim(max(0.0, final["mean"].min() - 0.1), 1.0)
    ax.set_ylabel("mean test Dice (± s.e.m. over cases)")
    fig.tight_layout()
    paths.append(os.path.join(REPO, "docs", f"evidence_{key}_final_dice.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def paired_by_replicate(frame: pd.DataFrame, sources: dict, comparisons: list[tuple[str, str]]) -> dict:
    """The comparisons within each replicate that has both methods: models that share one stock model and work
    folder, so the pairing is not blurred by averaging over other replicates."""
    result = {}
    for replicate, rows in frame.groupby("replicate"):
        cases = per_case(rows)
        series = {name: values for name, source in sources.items() if len(values := final_metric(cases, *source))}
        found = {f"{a} vs {b}": paired(series[a], series[b]) for a, b in comparisons if a in series and b in series}
        if found:
            result[str(replicate)] = found
    return result


CURVE_METHODS = {"stock": "-", "recycling_block": "ddpm", "ensemble_recycling_block": "ddpm",
                 "stock_seed_ensemble": "-"}  # method: sampler in the main study's CSV
CURVE_COMPARISONS = (("recycling_block", "stock"), ("ensemble_recycling_block", "stock"),
                     ("ensemble_recycling_block", "stock_seed_ensemble"), ("stock_seed_ensemble", "stock"))


def budget_curve(key: str, frame: pd.DataFrame, cases: pd.DataFrame) -> dict:
    """Mean test Dice of stock, 'block' recycling (DDPM, final step), their ensemble and, where a budget has two
    stock models, the stock seed-ensemble, per training budget, with the paired tests of CURVE_COMPARISONS: the
    budget-curve runs and the main study's 1000-iteration models (``frame``, its rows, and ``cases``, its per-case
    values averaged over replicates; each point records how many replicates it averages, counted with the sampler).
    A budget-curve point also has the comparisons within each of its replicates (``paired_by_replicate``). Plotted
    to docs/evidence_<dataset>_budget_curve.png; empty without budget-curve results."""
    path = os.path.join(REPO, "docs", "results", f"evidence_{key}_budget_curve.csv")
    if not os.path.isfile(path):
        return {}
    runs = pd.read_csv(path).assign(sampler=lambda f: f.method.map(CURVE_METHODS))  # as the main study's rows
    final = runs[runs.step == STEPS]
    counts = final.groupby(["iterations", "method"]).replicate.nunique()
    curve, replicates = {}, {}
    for (iterations, method), values in per_case(final, by=("iterations", "method")).groupby(["iterations", "method"]):
        curve.setdefault(int(iterations), {})[method] = values.set_index("case")["Dice"]
        replicates.setdefault(int(iterations), {})[method] = int(counts[(iterations, method)])
    for method, sampler in CURVE_METHODS.items():
        values = final_metric(cases, method, sampler)
        if len(values):
            curve.setdefault(ITERATIONS["stock"], {})[method] = values
            counted = frame[(frame.method == method) & (frame.sampler == sampler)]
            replicates.setdefault(ITERATIONS["stock"], {})[method] = int(counted.replicate.nunique())
    sources = {method: (method, sampler) for method, sampler in CURVE_METHODS.items()}
    runs_by_budget = {int(iterations): rows for iterations, rows in runs.groupby("iterations")}
    result = {}
    for iterations in sorted(curve):
        point = curve[iterations]
        result[str(iterations)] = {**{f"{m}_dice": float(values.mean()) for m, values in point.items()},
                                   **{f"{m}_replicates": n for m, n in replicates[iterations].items()},
                                   **{f"{a} vs {b}": paired(point[a], point[b]) for a, b in CURVE_COMPARISONS
                                      if a in point and b in point}}
        if iterations in runs_by_budget:  # the main study's 1000 point has its own paired_by_replicate
            result[str(iterations)]["paired_by_replicate"] = paired_by_replicate(
                runs_by_budget[iterations], sources, CURVE_COMPARISONS)
    # every budget, then the budgets from 1000 on, where the methods differ by thousandths
    panels = [sorted(curve), [i for i in sorted(curve) if i >= ITERATIONS["stock"]]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, shown, title in zip(axes, panels, ("every budget", "from 1000 iterations"), strict=True):
        for method, style in zip(CURVE_METHODS, ("-o", "--s", ":^", "-.v"), strict=True):
            budgets = [i for i in shown if method in curve[i]]
            if budgets:
                ax.plot(budgets, [curve[i][method].mean() for i in budgets], style, label=method)
        ax.set_xscale("log")
        ax.set_xticks(shown, [str(i) for i in shown])
        ax.minorticks_off()
        ax.set_xlabel("training iterations")
        ax.set_ylabel("mean test Dice")
        ax.set_title(f"{key}: {title}", fontsize=10)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(REPO, "docs", f"evidence_{key}_budget_curve.png"), dpi=110)
    plt.close(fig)
    return result


def write_evidence(spec: dict) -> dict:
    key = spec["key"]
    frame = pd.read_csv(os.path.join(REPO, "docs", "results", f"evidence_{key}_cases.csv"))
    cases = per_case(frame)
    present = set(cases.method)
    models_path = os.path.join(REPO, "docs", "results", f"evidence_{key}_models.json")
    models = json.load(open(models_path)) if os.path.isfile(models_path) else {}
    validation = {m: validation_dice(models, m) for m in DIFFUSION_METHODS}
    # "ensemble" is stock + the chosen model, so a model whose ensemble was not predicted cannot be chosen
    candidates = [m for m in DIFFUSION_METHODS
                  if validation[m] is not None and m in present and f"ensemble_{m}" in present]
    best = max(candidates, key=lambda m: validation[m]) if candidates else None
    sources = {m: (m, "-") for m in (*STOCK_METHODS, "stock_seed_ensemble")}
    for method in DIFFUSION_METHODS:
        sources.update({f"{method}_{sampler}": (method, sampler) for sampler in ("ddpm", "ddim")})
        sources[f"ensemble_{method}"] = (f"ensemble_{method}", "ddpm")
    if best is not None:
        sources["recycling"], sources["ensemble"] = (best, "ddpm"), (f"ensemble_{best}", "ddpm")
    sources = {name: source for name, source in sources.items() if source[0] in present}
    series = {name: final_metric(cases, *source) for name, source in sources.items()}
    sources = {name: source for name, source in sources.items() if len(series[name])}  # e.g. one sampler not run
    series = {name: values for name, values in series.items() if len(values)}
    comparisons = [("recycling", "stock"), ("ensemble", "stock"), ("ensemble", "stock_seed_ensemble"),
                   ("stock_seed_ensemble", "stock"), *[(f"{m}_ddpm", "stock") for m in DIFFUSION_METHODS],
                   *[(f"ensemble_{m}", "stock_seed_ensemble") for m in DIFFUSION_METHODS],
                   ("recycling_block_ddpm", "recycling_stage_ddpm"), ("recycling_warm_ddpm", "recycling_block_ddpm"),
                   ("stock_1300", "stock"), ("stock_1300", "stock_seed_ensemble"),
                   ("recycling_warm_ddpm", "stock_1300"), ("ensemble_recycling_warm", "stock_1300")]
    result = {
        "iterations": ITERATIONS.get(best, 1000) if best else 1000,
        "replicates": int(frame.replicate.nunique()),
        "replicates_per_method": {m: int(n) for m, n in frame.groupby("method").replicate.nunique().items()},
        "test_cases": int(cases.case.nunique()),
        "recycling_model": best, "validation_dice": validation,
        "dice": {name: float(values.mean()) for name, values in series.items()},
        "hd95": {name: float(final_metric(cases, *source, metric="HD95").mean()) for name, source in sources.items()},
        "paired": {f"{a} vs {b}": paired(series[a], series[b]) for a, b in comparisons
                   if a in series and b in series},
        "paired_by_replicate": paired_by_replicate(frame, sources, comparisons),
        "per_step_dice": {f"{m}_{s}": cases[(cases.method == m) & (cases.sampler == s)].groupby("step")["Dice"]
                          .mean().round(4).to_dict() for m in DIFFUSION_METHODS for s in ("ddpm", "ddim")
                          if m in present},
        "plots": [os.path.relpath(p, REPO) for p in _plot(cases, key)],
    }
    curve = budget_curve(key, frame, cases)
    if curve:
        result["budget_curve"] = curve
        result["plots"].append(f"docs/evidence_{key}_budget_curve.png")
    evidence = json.load(open(EVIDENCE)) if os.path.isfile(EVIDENCE) else {}
    evidence[key] = result
    with open(EVIDENCE, "w") as f:
        json.dump(evidence, f, indent=1)
    print(json.dumps({k: result[k] for k in ("recycling_model", "dice", "paired")}, indent=1))
    return result

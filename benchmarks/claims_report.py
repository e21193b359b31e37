"""Tables, paired tests and plots for benchmarks/paper_claims.py (reads docs/results/<dataset>_cases.csv)."""

import json
import os

import matplotlib
import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from benchmark_protocol import REPO, SAMPLERS, STEPS, STOCK, prediction_folder  # noqa: E402

DIFFUSION = ["nnUNetTrainerDiff", "nnUNetTrainerDiffSelfCond", "nnUNetTrainerDiffRecycleNext",
             "nnUNetTrainerDiffRecycle"]
LABELS = {"nnUNetTrainer": "stock nnU-Net", "nnUNetTrainerDiff": "standard diffusion",
          "nnUNetTrainerDiffSelfCond": "self-conditioning", "nnUNetTrainerDiffRecycleNext": "xt-recycling",
          "nnUNetTrainerDiffRecycle": "xT-recycling (ours)", "ensemble": "stock + xT-recycling"}

RECYCLE = "nnUNetTrainerDiffRecycle"


def _per_case(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over labels, then over replicates: one Dice/HD95 per method, sampler, step and case."""
    return (frame.groupby(["method", "sampler", "step", "case", "replicate"])[["Dice", "HD95"]].mean()
            .groupby(["method", "sampler", "step", "case"]).mean().reset_index())


def _paired(cases: pd.DataFrame, a: tuple, b: tuple) -> dict:
    """Wilcoxon signed-rank on per-case Dice of a vs b (final step); positive difference = a better."""
    def final_dice(method, sampler):
        chosen = cases[(cases.method == method) & (cases.sampler == sampler) & (cases.step == STEPS)]
        return chosen.set_index("case")["Dice"]

    x, y = final_dice(*a), final_dice(*b)
    joined = pd.concat([x, y], axis=1, keys=["a", "b"]).dropna()
    diff = joined["a"] - joined["b"]
    p = float(wilcoxon(joined["a"], joined["b"]).pvalue) if (diff != 0).any() else 1.0
    return {"a": f"{a[0]} {a[1]}", "b": f"{b[0]} {b[1]}", "n_cases": int(len(joined)),
            "mean_difference": float(diff.mean()), "median_difference": float(diff.median()),
            "a_better_cases": int((diff > 0).sum()), "b_better_cases": int((diff < 0).sum()), "wilcoxon_p": p}


def _plot_steps(cases: pd.DataFrame, name: str, title: str) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, sampler in zip(axes, SAMPLERS, strict=True):
        for method in [m for m in DIFFUSION if m in set(cases.method)]:
            curve = cases[(cases.method == method) & (cases.sampler == sampler)].groupby("step")["Dice"].mean()
            ax.plot(curve.index, curve.values, marker="o", label=LABELS[method])
        stock = cases[cases.method == STOCK]["Dice"].mean()
        ax.axhline(stock, color="k", linestyle="--", label=LABELS[STOCK])
        ax.set_title(f"{title}: {sampler.upper()}")
        ax.set_xlabel("sampling step")
        ax.set_xticks(range(1, STEPS + 1))
    axes[0].set_ylabel("mean test Dice")
    axes[1].legend(fontsize=8)
    path = os.path.join(REPO, "docs", f"{name.lower()}_dice_vs_step.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_final(final: pd.DataFrame, name: str, title: str) -> str:
    fig, ax = plt.subplots(figsize=(9, 4))
    labels = [f"{LABELS[m]}\n{s if s != '-' else ''}" for m, s in zip(final.method, final.sampler, strict=True)]
    ax.bar(range(len(final)), final["Dice"], yerr=final["Dice_sem"], capsize=3,
           color=["0.4" if m == STOCK else "C3" if m == "ensemble" else "C0" for m in final.method])
    ax.set_xticks(range(len(final)), labels, rotation=45, ha="right", fontsize=8)
    low = max(0.0, final["Dice"].min() - 0.1)
    ax.set_ylim(low, 1.0)
    ax.set_ylabel("mean test Dice (± s.e.m. over cases)")
    ax.set_title(f"{title}: final Dice after {STEPS} steps")
    fig.tight_layout()
    path = os.path.join(REPO, "docs", f"{name.lower()}_final_dice.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _read_case(path: str) -> np.ndarray:
    """A 2D PNG as (H, W) or a NIfTI volume as (Z, Y, X)."""
    if path.endswith(".png"):
        from PIL import Image
        return np.asarray(Image.open(path))
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def _plot_overlays(spec: dict, work: str, name: str, cases: list[str]) -> str:
    """Image, ground truth (green) and each method's final mask (red; DDPM) for a few test cases; volumes show the
    axial slice with the most ground-truth foreground."""
    raw = os.path.join(work, "nnUNet_raw", spec["name"])
    ending = json.load(open(os.path.join(raw, "dataset.json")))["file_ending"]
    levels = [k + 0.5 for k in range(len(json.load(open(os.path.join(raw, "dataset.json")))["labels"]) - 1)]
    methods = [(m, s) for m, s in [(STOCK, None), *[(m, "ddpm") for m in DIFFUSION], ("ensemble", "ddpm")]
               if os.path.isdir(prediction_folder(work, 0, m, s))]
    fig, axes = plt.subplots(len(cases), len(methods) + 1, figsize=(2.1 * (len(methods) + 1), 1.6 * len(cases)),
                             squeeze=False)
    for row, case in enumerate(cases):
        image = _read_case(os.path.join(raw, "imagesTs", f"{case}_0000{ending}"))
        truth = _read_case(os.path.join(raw, "labelsTs", case + ending))
        masks = [_read_case(os.path.join(prediction_folder(work, 0, m, s), case + ending)) for m, s in methods]
        if image.ndim == 3:
            z = int(np.argmax((truth > 0).sum(axis=(1, 2))))
            image, truth, masks = image[z], truth[z], [mask[z] for mask in masks]
        for col, (mask, title) in enumerate([(None, "image + truth"), *zip(masks, [LABELS[m] for m, _ in methods],
                                                                            strict=True)]):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray")
            ax.contour(truth, levels=levels, colors="lime", linewidths=0.6)
            if mask is not None:
                ax.contour(mask, levels=levels, colors="red", linewidths=0.8)
            ax.set_title(title if row == 0 else "", fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    path = os.path.join(REPO, "docs", f"{name.lower()}_overlays.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(spec: dict, work: str, replicates: int, budget: str) -> dict:
    name = spec["key"]
    title = f"{spec['name'].split('_', 1)[1]} {spec['configuration']}"
    frame = pd.read_csv(os.path.join(REPO, "docs", "results", f"{name}_cases.csv"))
    cases = _per_case(frame)
    steps = cases.groupby(["method", "sampler", "step"])[["Dice", "HD95"]].mean().reset_index()
    final_cases = cases[cases.step == STEPS]
    final = final_cases.groupby(["method", "sampler"]).agg(Dice=("Dice", "mean"), Dice_sem=("Dice", "sem"),
                                                           HD95=("HD95", "mean")).reset_index()
    order = {m: i for i, m in enumerate([STOCK, *DIFFUSION, "ensemble"])}
    final = final.sort_values(by=["method", "sampler"], key=lambda c: c.map(order) if c.name == "method" else c)
    per_label = (frame[frame.step == STEPS].groupby(["method", "sampler", "label"])[["Dice", "HD95"]].mean()
                 .reset_index())
    present = set(cases.method)
    tests = [_paired(cases, (RECYCLE, s), (m, s)) for s in SAMPLERS for m in DIFFUSION if m != RECYCLE and m in present]
    tests += [_paired(cases, (RECYCLE, s), (STOCK, "-")) for s in SAMPLERS]
    if "ensemble" in present:
        tests.append(_paired(cases, ("ensemble", "ddpm"), (STOCK, "-")))
    timings = {}
    for replicate in range(replicates):
        for folder in os.listdir(os.path.join(work, "predictions", f"replicate_{replicate}")):
            marker = os.path.join(work, "predictions", f"replicate_{replicate}", folder, "finished.json")
            if os.path.isfile(marker):
                timings.setdefault(folder, []).append(json.load(open(marker))["seconds"])
    worst = final_cases[(final_cases.method == RECYCLE) & (final_cases.sampler == "ddpm")].sort_values("Dice")
    overlay_cases = [*worst.case.iloc[:2], *worst.case.iloc[len(worst) // 2: len(worst) // 2 + 2]]
    summary = {
        "dataset": spec["name"], "configuration": spec["configuration"], "budget": budget, "replicates": replicates,
        "n_test_cases": int(final_cases.case.nunique()),
        "final": final.to_dict("records"), "per_label": per_label.to_dict("records"),
        "per_step": steps.to_dict("records"), "paired_tests": tests, "prediction_seconds": timings,
        "plots": [_plot_steps(cases, name, title), _plot_final(final, name, title),
                  _plot_overlays(spec, work, name, overlay_cases)],
    }
    path = os.path.join(REPO, "docs", "results", f"{name}_summary.json")
    json.dump(summary, open(path, "w"), indent=1)
    print(final.to_string(index=False))
    print(pd.DataFrame(tests).to_string(index=False))
    return summary

"""Voxel-level calibration and error-detection metrics of probabilistic segmentations, accumulated over cases.

Conventions (docs/uncertainty.md, "How good is the uncertainty"): probabilities (C, *spatial) with channel = label id,
references (*spatial) label ids. Calibration is top-label: the confidence of a voxel is its largest probability and
it is correct when that class is the reference's. Log-likelihoods floor probabilities at NLL_FLOOR, because nnU-Net
stores probabilities in half precision where small ones round to 0.
"""

import numpy as np
from scipy.ndimage import maximum_filter, minimum_filter
from scipy.stats import rankdata

NLL_FLOOR = 1e-6
BINS = 15


def boundary_band(reference: np.ndarray, width: int = 2) -> np.ndarray:
    """Voxels whose (2 width + 1)-wide neighbourhood holds more than one reference label (both sides of every
    boundary), bool shaped like ``reference``."""
    size = 2 * width + 1
    return maximum_filter(reference, size=size, mode="nearest") != minimum_filter(reference, size=size, mode="nearest")


def temperature_scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) over the channel axis: temperature scaling of the logits, since log p differs from the
    logits by a per-voxel constant that the softmax removes."""
    logits = np.log(np.maximum(probabilities.astype(np.float64), NLL_FLOOR)) / temperature
    logits -= logits.max(0, keepdims=True)
    scaled = np.exp(logits)
    return (scaled / scaled.sum(0, keepdims=True)).astype(np.float32)


class CalibrationAccumulator:
    """Adds up, case by case, what ECE (15 equal-width confidence bins), Brier score, NLL and the error AUROC need,
    over all voxels and over the boundary band."""

    def __init__(self):
        self.bins = {part: np.zeros((3, BINS)) for part in ("all", "band")}  # count, sum confidence, sum correct
        self.brier, self.nll, self.count = 0.0, 0.0, 0
        self.uncertainty, self.error = {}, []

    def add(self, probabilities: np.ndarray, reference: np.ndarray, **uncertainty: np.ndarray) -> None:
        """probabilities (C, *spatial); reference (*spatial) ids in [0, C-1]; uncertainty: maps (*spatial) by name,
        the same names every case, each a score whose AUROC for telling wrong voxels from right ones is measured."""
        p = probabilities.astype(np.float64).reshape(probabilities.shape[0], -1)
        y = reference.reshape(-1).astype(np.int64)
        confidence, predicted = p.max(0), p.argmax(0)
        correct = predicted == y
        band = boundary_band(reference).reshape(-1)
        for part, mask in (("all", slice(None)), ("band", band)):
            index = np.minimum((confidence[mask] * BINS).astype(np.int64), BINS - 1)
            for row, values in enumerate((np.ones_like(confidence[mask]), confidence[mask], correct[mask])):
                self.bins[part][row] += np.bincount(index, weights=values, minlength=BINS)
        onehot = np.zeros_like(p)
        onehot[y, np.arange(y.size)] = 1
        self.brier += float(((p - onehot) ** 2).sum())
        self.nll += float(-np.log(np.maximum(p[y, np.arange(y.size)], NLL_FLOOR)).sum())
        self.count += y.size
        for name, values in uncertainty.items():
            self.uncertainty.setdefault(name, []).append(values.reshape(-1).astype(np.float32))
        self.error.append(~correct)

    def ece(self, part: str = "all") -> float:
        count, confidence, correct = self.bins[part]
        filled = count > 0
        gap = np.abs(correct[filled] - confidence[filled]) / count[filled]
        return float((gap * count[filled]).sum() / count.sum())

    def reliability(self, part: str = "all") -> dict:
        """Per bin: mean confidence, accuracy and voxel count (for reliability diagrams)."""
        count, confidence, correct = self.bins[part]
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"confidence": (confidence / count).tolist(), "accuracy": (correct / count).tolist(),
                    "count": count.astype(int).tolist()}

    def summary(self) -> dict:
        """ECE (all voxels, boundary band), Brier, NLL per voxel, and ``error_auroc_<name>`` per uncertainty map."""
        error = np.concatenate(self.error)
        return {"ece": self.ece("all"), "ece_boundary": self.ece("band"), "brier": self.brier / self.count,
                "nll": self.nll / self.count,
                **{f"error_auroc_{name}": auroc(np.concatenate(values), error)
                   for name, values in self.uncertainty.items()}}


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for telling ``positives`` from the rest (Mann-Whitney U with
    average ranks for ties; 0.5 for a constant score); NaN if either class is empty."""
    n_positive = int(positives.sum())
    n_negative = positives.size - n_positive
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


def fit_temperature(probabilities: list[np.ndarray], references: list[np.ndarray],
                    grid: np.ndarray = np.exp(np.linspace(np.log(0.25), np.log(8.0), 61))) -> float:  # noqa: B008
    """The temperature of the grid (0.25 ... 8, log-spaced) with the lowest mean NLL over all voxels of the given
    cases: the standard post-hoc calibration of a classifier, fitted on validation cases only."""
    totals = np.zeros(len(grid))
    for p, y in zip(probabilities, references, strict=True):
        flat = p.reshape(p.shape[0], -1)
        labels = y.reshape(-1).astype(np.int64)
        for i, temperature in enumerate(grid):
            scaled = temperature_scaled(flat, temperature)
            totals[i] += -np.log(np.maximum(scaled[labels, np.arange(labels.size)], NLL_FLOOR)).sum()
    return float(grid[int(np.argmin(totals))])

"""The benchmarks' HD95 on 2D masks stored as nnU-Net's (1, H, W) arrays equals HD95 on the plain 2D masks."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from segmentation_metrics import hd95  # noqa: E402


def test_hd95_of_a_shifted_square_is_the_shift_also_with_a_singleton_axis():
    reference = np.zeros((1, 40, 40), bool)
    reference[0, 10:30, 10:30] = True
    prediction = np.zeros_like(reference)
    prediction[0, 13:30, 10:30] = True
    assert hd95(reference[0], prediction[0], (1.0, 1.0)) == 3.0
    assert hd95(reference, prediction, (999.0, 1.0, 1.0)) == 3.0
    assert hd95(reference, reference, (999.0, 1.0, 1.0)) == 0.0

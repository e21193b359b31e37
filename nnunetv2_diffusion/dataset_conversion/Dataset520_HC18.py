"""HC18 fetal head ultrasound -> nnU-Net raw ``Dataset520_HC18`` (2D, one foreground class, PNG).

Source layout (HC18 Grand Challenge training set; van den Heuvel et al., PLoS ONE 13(8):e0200412, 2018; data
doi:10.5281/zenodo.1327317, https://hc18.grand-challenge.org/; the 200-image subset shipped in this repository under
``data/hc18_fetal_head_us/`` has the same layout, see its README.md)::

    image/NNN_HC.png                    8-bit grayscale B-mode image, 800 x 540 px (one shipped image is 786 x 542)
    image/NNN_2HC.png, NNN_3HC.png ...  further images of the same subject NNN
    annotation/NNN_HC_Annotation.png    ground truth: the ellipse OUTLINE of the skull (1-2 px), values {0, 255}
    training_set_pixel_size_and_HC.csv  optional: filename, pixel size(mm), head circumference (mm)

Labels: 0 background, 1 fetal head (the filled outline). Channel: ``{"0": "ultrasound"}`` (z-scored per image).

Filling. Each outline is filled at full resolution and the result must be one ellipse-like region: a single connected
component, area >= ``MIN_AREA_RATIO`` x the outline's (a failed fill leaves the outline alone, ratio ~1; the shipped
cases have >= 16.3), solidity >= ``MIN_SOLIDITY`` and IoU >= ``MIN_IOU`` with the ellipse fitted to the outline
pixels (``skimage.measure.EllipseModel``). Fixes are tried in order and each case records the one it needed:
``filled`` (plain ``binary_fill_holes``), ``closed_then_filled`` (small gaps in an open outline: dilated by a disk
of radius 2, 4 or 8 px, filled, eroded by the same disk), ``ellipse_fit`` (large gaps, or an ellipse cut by the image
border: the fitted ellipse is rasterised inside the image, together with the outline). A case that no fix makes
plausible raises DatasetConversionError, and so does an empty annotation (every HC18 image shows a head, so an
empty file is a broken one) or a constant image. All 200 shipped cases need no fix.

Resolution. ``downsample`` (default 4) is the documented reduction for CPU use: images are resized with bilinear
interpolation and anti-aliasing, masks with nearest neighbour after filling at full resolution (800 x 540 ->
200 x 135; the shipped 786 x 542 image -> 196 x 136). ``downsample=1`` keeps the original pixels.

File format. PNG, read by nnU-Net's ``NaturalImage2DIO`` as (1, 1, H, W) single-channel grayscale with a nominal
spacing of (999, 1, 1). PNG rather than NIfTI with the physical pixel size because the pixel size differs per image
(about 0.05-0.3 mm): with NIfTI nnU-Net would resample every image to the median spacing (and back at export), which
changes the apparent head size in pixels and costs an interpolation of the outline-derived masks, while with PNG all
images keep one grid of 200 x 135, nnU-Net plans a single 2d configuration whose patch covers the whole image, and
the stock baseline (docs/design.md, "Stock nnU-Net on two CPU cores") was measured on exactly these files. The
per-image pixel size (times the resampling factor) and the reference head circumference are written to
``pixel_size_and_hc.csv`` next to ``dataset.json``, so circumferences in mm can be computed from predictions.

Split. By subject (never splitting one): the last ``TEST_FRACTION`` (19 %, rounded) of the sorted subject ids go to
imagesTs/labelsTs, the rest to imagesTr/labelsTr; for the shipped 158 subjects that is exactly 000-127 (160 images)
for training and 128-157 (40 images) for testing. ``splits_final.json`` holds one fold whose validation set is the
last ``VAL_FRACTION`` (10 %) of the training subjects (115-127 for the shipped data).

Report. ``conversion_report.json`` (next to dataset.json) lists the counts per split, how many cases needed which fix,
the outlines touching the border, the smallest area ratio / solidity / IoU seen, and a check of the fitted ellipses'
perimeters against the reference head circumferences.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections import Counter

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.measure import EllipseModel, regionprops
from skimage.transform import resize

from nnunetv2_diffusion.dataset_conversion._common import (
    REPORT_FILE,
    DatasetConversionError,
    RawDatasetWriter,
    build_parser,
    check_image_intensities,
    read_image,
    require_dir,
    run_conversion,
    split_off_tail,
    to_grayscale,
    visible_files,
)

DATASET_ID = 520
DATASET_NAME = "HC18"
TEST_FRACTION = 0.19
VAL_FRACTION = 0.10
MIN_AREA_RATIO = 8.0
MIN_SOLIDITY = 0.97
MIN_IOU = 0.90
MAX_FIT_RESIDUAL = 3.0
CLOSING_RADII = (2, 4, 8)
PIXEL_CSV = "training_set_pixel_size_and_HC.csv"
CITATION = ("T. L. A. van den Heuvel, D. de Bruijn, C. L. de Korte, B. van Ginneken. Automated measurement of fetal "
            "head circumference using 2D ultrasound images. PLoS ONE 13(8): e0200412, 2018. "
            "doi:10.1371/journal.pone.0200412. Data: doi:10.5281/zenodo.1327317 (CC BY 4.0)")

_IMAGE_NAME = re.compile(r"^(?P<subject>\d+)_(?P<index>\d*)HC\.png$")


def subject_of(image_name: str) -> str:
    """``"014_3HC.png"`` -> ``"014"``."""
    match = _IMAGE_NAME.match(image_name)
    if match is None:
        raise DatasetConversionError(image_name, "image name does not follow NNN_HC.png / NNN_<k>HC.png")
    return match.group("subject")


def fit_ellipse(outline: np.ndarray) -> tuple[float, float, float, float, float, float] | None:
    """Least-squares ellipse through the outline pixels: (xc, yc, a, b, theta, mean distance in px) or None."""
    yx = np.argwhere(outline)
    if len(yx) < 5:
        return None
    xy = yx[:, ::-1].astype(np.float64)
    if hasattr(EllipseModel, "from_estimate"):  # scikit-image >= 0.26
        model = EllipseModel.from_estimate(xy)
        if not model:
            return None
        (xc, yc), (a, b), theta = model.center, model.axis_lengths, model.theta
    else:
        model = EllipseModel()
        if not model.estimate(xy):
            return None
        xc, yc, a, b, theta = model.params
    if not np.all(np.isfinite([xc, yc, a, b, theta])) or min(a, b) <= 0:
        return None
    # distance to the ellipse along the ray from its centre (EllipseModel.residuals is exact but ~100x slower)
    u = (xy[:, 0] - xc) * math.cos(theta) + (xy[:, 1] - yc) * math.sin(theta)
    v = -(xy[:, 0] - xc) * math.sin(theta) + (xy[:, 1] - yc) * math.cos(theta)
    r = np.maximum(np.hypot(u / a, v / b), 1e-12)
    residual = float(np.mean(np.abs(1 - 1 / r) * np.hypot(u, v)))
    return float(xc), float(yc), float(a), float(b), float(theta), residual


def rasterise_ellipse(params, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of the pixels whose centres lie inside the ellipse (xc, yc, a, b, theta, ...)."""
    xc, yc, a, b, theta = params[:5]
    y, x = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
    u = (x - xc) * math.cos(theta) + (y - yc) * math.sin(theta)
    v = -(x - xc) * math.sin(theta) + (y - yc) * math.cos(theta)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def ellipse_perimeter(a: float, b: float) -> float:
    """Ramanujan's second approximation of an ellipse's perimeter."""
    h = ((a - b) / (a + b)) ** 2
    return math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))


def _measures(mask: np.ndarray, outline: np.ndarray, ellipse: np.ndarray | None) -> dict:
    _, n_components = ndimage.label(mask)
    area = int(mask.sum())
    solidity = float(regionprops(mask.astype(np.uint8))[0].solidity) if n_components == 1 else 0.0
    iou = float((mask & ellipse).sum() / max((mask | ellipse).sum(), 1)) if ellipse is not None else 0.0
    return {"components": int(n_components), "area_ratio": area / max(int(outline.sum()), 1),
            "solidity": solidity, "iou_with_fitted_ellipse": iou}


def _plausible(m: dict) -> bool:
    return (m["components"] == 1 and m["area_ratio"] >= MIN_AREA_RATIO and m["solidity"] >= MIN_SOLIDITY
            and m["iou_with_fitted_ellipse"] >= MIN_IOU)


def _bridge_and_fill(outline: np.ndarray, radius: int) -> np.ndarray:
    """Dilate with a disk (bridging gaps narrower than ~2 radius), fill, erode with the same disk, add the outline.

    A closing of the outline alone would not do: it never bridges a gap in a thin line. Padding keeps the border
    from cutting the dilation and erosion.
    """
    disk = np.hypot(*np.mgrid[-radius:radius + 1, -radius:radius + 1]) <= radius
    pad = radius + 1
    dilated = ndimage.binary_dilation(np.pad(outline, pad), structure=disk)
    filled = ndimage.binary_erosion(ndimage.binary_fill_holes(dilated), structure=disk)
    return filled[pad:-pad, pad:-pad] | outline


def fill_outline(outline: np.ndarray, case: str) -> tuple[np.ndarray, str, dict]:
    """Fill an ellipse outline (boolean (H, W)) into a head mask.

    Returns (mask, fix, measures), fix in {"filled", "closed_then_filled", "ellipse_fit"}, measures holding the
    plausibility numbers and the ellipse ``fit`` (``fit_ellipse``'s tuple or None); raises
    DatasetConversionError when no fix yields one ellipse-like region.
    """
    if not outline.any():
        raise DatasetConversionError(case, "annotation is empty")
    fit = fit_ellipse(outline)
    ellipse = None
    if fit is not None and fit[5] <= MAX_FIT_RESIDUAL:
        ellipse = rasterise_ellipse(fit, outline.shape) | outline
    candidates = [("filled", lambda: ndimage.binary_fill_holes(outline))]
    candidates += [("closed_then_filled", lambda r=r: _bridge_and_fill(outline, r)) for r in CLOSING_RADII]
    for fix, make in candidates:
        mask = make()
        m = _measures(mask, outline, ellipse)
        if _plausible(m):
            return mask, fix, {**m, "fit": fit}
    if ellipse is None:
        residual = "no ellipse" if fit is None else f"mean residual {fit[5]:.1f} px"
        raise DatasetConversionError(case, f"outline cannot be filled and no ellipse fits it ({residual})")
    m = _measures(ellipse, outline, ellipse)
    if m["components"] != 1 or m["solidity"] < MIN_SOLIDITY:
        raise DatasetConversionError(case, f"the ellipse fitted to the outline is not one convex region ({m})")
    return ellipse, "ellipse_fit", {**m, "fit": fit}


def _read_uint8_png(path: str, case: str, what: str) -> np.ndarray:
    array = to_grayscale(sitk.GetArrayFromImage(read_image(path, case)), case, what)
    if array.dtype != np.uint8:
        raise DatasetConversionError(case, f"{what} is {array.dtype}, expected 8-bit")
    return array


def read_outline(path: str, case: str) -> np.ndarray:
    """Boolean outline from an annotation PNG whose values must lie in {0, 255}."""
    array = _read_uint8_png(path, case, "annotation")
    unexpected = sorted(set(np.unique(array).tolist()) - {0, 255})
    if unexpected:
        raise DatasetConversionError(case, f"annotation values {unexpected[:5]} outside the documented set {{0, 255}}")
    return array > 0


def downsampled_shape(shape: tuple[int, int], factor: int) -> tuple[int, int]:
    return max(1, int(round(shape[0] / factor))), max(1, int(round(shape[1] / factor)))


def downsample_case(image: np.ndarray, mask: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Image: bilinear with anti-aliasing; mask: nearest neighbour. Both to ``downsampled_shape``."""
    if factor == 1:
        return image, mask.astype(np.uint8)
    shape = downsampled_shape(image.shape, factor)
    small = resize(image.astype(np.float32), shape, order=1, anti_aliasing=True, preserve_range=True)
    small_mask = resize(mask.astype(np.uint8), shape, order=0, anti_aliasing=False, preserve_range=True)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8), small_mask.astype(np.uint8)


def read_pixel_csv(source_folder: str) -> dict[str, tuple[float, float]] | None:
    """{image name: (pixel size mm, head circumference mm)} from the HC18 CSV, or None when it is absent."""
    path = os.path.join(source_folder, PIXEL_CSV)
    if not os.path.isfile(path):
        return None
    table = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row or not row[0].endswith(".png"):
                continue  # header
            try:
                table[row[0]] = (float(row[1]), float(row[2]))
            except (IndexError, ValueError):
                raise DatasetConversionError(row[0], f"{path}: pixel size and head circumference must be numbers, "
                                                     f"the row is {row}") from None
    return table


def _images_by_subject(image_dir: str) -> dict[str, list[str]]:
    """{subject: its image names} for the PNGs in ``image_dir``.

    Raises FileNotFoundError when there are none, DatasetConversionError for a name that is not NNN_<k>HC.png.
    """
    images = visible_files(image_dir, ".png")
    if not images:
        raise FileNotFoundError(f"no images in {image_dir}")
    by_subject: dict[str, list[str]] = {}
    for name in images:
        by_subject.setdefault(subject_of(name), []).append(name)
    return by_subject


def _convert_case(writer: RawDatasetWriter, image_path: str, annotation_path: str, case: str, test: bool,
                  downsample: int) -> tuple[str, dict, bool, tuple[int, int], tuple[int, int]]:
    """Read, check, fill, downsample and write one image/annotation pair (to imagesTs/labelsTs when ``test``).

    Returns (fix, measures, touches_border, (H, W) as read, (H, W) as written), fix and measures as from
    ``fill_outline``; raises DatasetConversionError for a pair that fails a check.
    """
    image = _read_uint8_png(image_path, case, "image")
    outline = read_outline(annotation_path, case)
    if image.shape != outline.shape:
        raise DatasetConversionError(case, f"image shape {image.shape} != annotation shape {outline.shape} (H, W)")
    check_image_intensities(image, case, "image")
    touches_border = bool(outline[0].any() or outline[-1].any() or outline[:, 0].any() or outline[:, -1].any())
    mask, fix, measures = fill_outline(outline, case)
    small, small_mask = downsample_case(image, mask, downsample)
    # the full-resolution mask is one region, but nearest-neighbour downsampling can split it or lose it
    _, n_components = ndimage.label(small_mask)
    if n_components != 1:
        raise DatasetConversionError(case, f"downsampled mask has {n_components} components")
    sitk.WriteImage(sitk.GetImageFromArray(small), writer.image_path(case, 0, test))
    sitk.WriteImage(sitk.GetImageFromArray(small_mask), writer.label_path(case, test))
    return fix, measures, touches_border, image.shape, small.shape


def _conversion_report(writer: RawDatasetWriter, source_folder: str, downsample: int, subjects: dict[str, list[str]],
                       fixes: dict[str, str], border: list[str], worst: dict[str, float], shapes: Counter,
                       hc_errors: list[float]) -> dict:
    """The content of conversion_report.json.

    ``subjects`` maps "train", "test", "fold0_train" and "fold0_val" to sorted subject ids, ``fixes`` each case to
    its fix, ``worst`` each plausibility measure to its smallest value; ``hc_errors`` holds the relative errors of
    the fitted-ellipse perimeters against the reference head circumferences (empty without the CSV).
    """
    fix_counts = Counter(fixes.values())
    return {
        "dataset": writer.name,
        "source": os.path.abspath(source_folder),
        "downsample": downsample,
        "num_images": {"imagesTr": len(writer.training_cases), "imagesTs": len(writer.test_cases)},
        "num_subjects": {k: len(v) for k, v in subjects.items()},
        "subject_ranges": {k: [subjects[k][0], subjects[k][-1]] if subjects[k] else []
                           for k in ("train", "test", "fold0_val")},
        "mask_fix_counts": {k: fix_counts.get(k, 0) for k in ("filled", "closed_then_filled", "ellipse_fit")},
        "cases_needing_a_fix": {c: f for c, f in sorted(fixes.items()) if f != "filled"},
        "outlines_touching_border": border,
        "smallest": {k: round(v, 4) for k, v in worst.items()},
        "output_shapes_HxW": dict(shapes),
        "head_circumference_check": (
            {"n": len(hc_errors), "median_relative_error": round(float(np.median(hc_errors)), 5),
             "max_relative_error": round(float(np.max(hc_errors)), 5)} if hc_errors else None),
    }


def _write_metadata(writer: RawDatasetWriter, downsample: int, rows: list[list[str]]) -> None:
    """Write dataset.json and, when there are ``rows`` (one per case), pixel_size_and_hc.csv next to it."""
    writer.write_dataset_json(
        {"0": "ultrasound"}, {"background": 0, "fetal head": 1}, citation=CITATION,
        reference="https://hc18.grand-challenge.org/", release="https://zenodo.org/record/1327317",
        license="CC BY 4.0",
        description=f"HC18 training images with filled skull outlines, downsampled by {downsample}; "
                    f"split by subject (see conversion_report.json)")
    if rows:
        with open(writer.extra_file("pixel_size_and_hc.csv"), "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["case", "split", "pixel_size_x_mm", "pixel_size_y_mm", "head_circumference_mm"])
            out.writerows(rows)


def convert_hc18(source_folder: str, dataset_id: int = DATASET_ID, overwrite: bool = False, downsample: int = 4,
                 *, raw_root: str | None = None, preprocessed_root: str | None = None) -> str:
    """Convert the HC18 training layout in ``source_folder`` (see module docstring); returns the dataset folder."""
    if downsample < 1:
        raise ValueError(f"downsample factor must be >= 1, got {downsample}")
    image_dir = require_dir(os.path.join(source_folder, "image"), "HC18 image folder")
    annotation_dir = require_dir(os.path.join(source_folder, "annotation"), "HC18 annotation folder")
    by_subject = _images_by_subject(image_dir)
    subjects = sorted(by_subject, key=int)
    train_subjects, test_subjects = split_off_tail(subjects, TEST_FRACTION)
    fit_subjects, val_subjects = split_off_tail(train_subjects, VAL_FRACTION)
    pixel_table = read_pixel_csv(source_folder)

    fixes: dict[str, str] = {}
    border, shapes, rows, hc_errors = [], Counter(), [], []
    worst = {"area_ratio": math.inf, "solidity": math.inf, "iou_with_fitted_ellipse": math.inf}
    with RawDatasetWriter(dataset_id, DATASET_NAME, ".png", overwrite=overwrite, raw_root=raw_root,
                          preprocessed_root=preprocessed_root, writes_splits=True) as writer:
        for subject in subjects:
            test = subject in test_subjects
            for name in by_subject[subject]:
                case = name[:-len(".png")]
                fix, measures, touches_border, full_shape, shape = _convert_case(
                    writer, os.path.join(image_dir, name), os.path.join(annotation_dir, f"{case}_Annotation.png"),
                    case, test, downsample)
                fixes[case] = fix
                if touches_border:
                    border.append(case)
                for k in worst:
                    worst[k] = min(worst[k], measures[k])
                shapes[f"{shape[0]}x{shape[1]}"] += 1

                if pixel_table is not None:
                    if name not in pixel_table:
                        raise DatasetConversionError(case, f"no row in {PIXEL_CSV}")
                    pixel_mm, hc_mm = pixel_table[name]
                    fit = measures["fit"]
                    if fit is not None:
                        hc_errors.append(abs(ellipse_perimeter(fit[2], fit[3]) * pixel_mm - hc_mm) / hc_mm)
                    rows.append([case, "test" if test else ("val" if subject in val_subjects else "train"),
                                 f"{pixel_mm * full_shape[1] / shape[1]:.9g}",
                                 f"{pixel_mm * full_shape[0] / shape[0]:.9g}", f"{hc_mm:g}"])

        _write_metadata(writer, downsample, rows)
        cases_of = {s: [n[:-len(".png")] for n in by_subject[s]] for s in subjects}
        splits = [{"train": sorted(c for s in fit_subjects for c in cases_of[s]),
                   "val": sorted(c for s in val_subjects for c in cases_of[s])}]
        report = _conversion_report(writer, source_folder, downsample,
                                    {"train": train_subjects, "test": test_subjects, "fold0_train": fit_subjects,
                                     "fold0_val": val_subjects}, fixes, border, worst, shapes, hc_errors)
        writer.write_json(REPORT_FILE, report)
        folder = writer.finish(splits if fit_subjects and val_subjects else None)
    _print_report(report, folder)
    return folder


def _print_report(report: dict, folder: str) -> None:
    print(f"wrote {folder}: {report['num_images']['imagesTr']} training / {report['num_images']['imagesTs']} test "
          f"images ({report['num_subjects']['train']} / {report['num_subjects']['test']} subjects); fold 0 "
          f"validation: {report['num_subjects']['fold0_val']} subjects")
    print(f"masks: {report['mask_fix_counts']} (outlines touching the border: "
          f"{len(report['outlines_touching_border'])}); smallest {report['smallest']}")
    if report["head_circumference_check"]:
        print(f"fitted-ellipse perimeter vs reference HC: {report['head_circumference_check']}")


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(__doc__.split("\n")[0], DATASET_ID)
    parser.add_argument("--downsample", type=int, default=4,
                        help="integer reduction of both image axes (default 4: 800x540 -> 200x135); 1 keeps all")
    args = parser.parse_args(argv)
    run_conversion(parser, lambda: convert_hc18(args.input_folder, args.dataset_id, args.overwrite, args.downsample))


if __name__ == "__main__":
    main()

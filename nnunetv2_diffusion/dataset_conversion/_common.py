"""What the dataset conversion scripts share: checked reading, staged writing, splits and reports.

A conversion writes into a hidden staging folder next to the target (``nnUNet_raw/.DatasetXXX_Name.incomplete-*``)
and renames it into place only after every case has been checked and written, so a failed conversion never leaves a
half-written dataset behind and an existing dataset is replaced only on request (``overwrite=True``). Source files are
only ever read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from nnunetv2_diffusion.file_integrity import NIFTI_ENDINGS, nifti_file_problem

REPORT_FILE = "conversion_report.json"
SPLITS_FILE = "splits_final.json"


class DatasetConversionError(ValueError):
    """A source case that does not match its documented layout. The message names the case and the problem."""

    def __init__(self, case: str, problem: str):
        self.case = case
        self.problem = problem
        super().__init__(f"case {case}: {problem}")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name for a dataset, e.g. ``Dataset520_HC18``."""
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"nnU-Net dataset ids are 1..999, got {dataset_id}")
    return f"Dataset{int(dataset_id):03d}_{name}"


def nnunet_root(explicit: str | None, variable: str) -> str | None:
    """``explicit`` if given, else the folder named by nnU-Net's environment variable (None when unset)."""
    if explicit is not None:
        return os.path.abspath(explicit)
    from nnunetv2 import paths

    value = getattr(paths, variable)
    if hasattr(value, "get"):  # nnunetv2 >= 2.8 wraps the variable and reads it when asked
        value = value.get()
    return None if value is None else os.path.abspath(str(value))


def visible_files(folder: str, suffix: str) -> list[str]:
    """Sorted file names in ``folder`` ending with ``suffix``, skipping hidden files (e.g. macOS ``._*`` forks)."""
    return sorted(f for f in os.listdir(folder) if f.endswith(suffix) and not f.startswith(".")
                  and os.path.isfile(os.path.join(folder, f)))


def read_source_json(path: str, required: Sequence[str]) -> dict:
    """A source dataset's JSON index; DatasetConversionError naming the file when it is not valid JSON or lacks one of
    the ``required`` keys."""
    try:
        with open(path) as f:
            content = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetConversionError(path, f"cannot be read as JSON ({e})") from None
    missing = [key for key in required if not isinstance(content, dict) or key not in content]
    if missing:
        raise DatasetConversionError(path, f"has no {', '.join(map(repr, missing))}")
    return content


def require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def tail_count(n: int, fraction: float) -> int:
    """How many of ``n`` items form the last ``fraction``: rounded, and at least 1 and at most n - 1 when n >= 2."""
    if n < 2:
        return 0
    return min(max(int(round(n * fraction)), 1), n - 1)


def split_off_tail(items: Sequence, fraction: float) -> tuple[list, list]:
    """(head, tail) of ``items``, the tail being the last ``tail_count(len(items), fraction)`` items."""
    k = tail_count(len(items), fraction)
    return list(items[:len(items) - k]), list(items[len(items) - k:])


# ----------------------------------------------------------------------------------------------------------------------
# images: reading and checks


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of an image in SimpleITK order (x, y, z)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int = 1

    @classmethod
    def of(cls, image: sitk.Image | sitk.ImageFileReader) -> Geometry:
        components = (image.GetNumberOfComponentsPerPixel() if isinstance(image, sitk.Image)
                      else image.GetNumberOfComponents())
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()), components)


def read_image(path: str, case: str) -> sitk.Image:
    """Read an image with SimpleITK; a missing, unreadable or truncated file raises DatasetConversionError naming
    ``case`` (SimpleITK itself reads a truncated NIfTI file without error: :mod:`nnunetv2_diffusion.file_integrity`)."""
    if not os.path.isfile(path):
        raise DatasetConversionError(case, f"missing file {path}")
    if path.endswith(NIFTI_ENDINGS):
        problem = nifti_file_problem(path, check_finite=False)
        if problem is not None:
            raise DatasetConversionError(case, f"cannot read {path}: {problem}")
    try:
        return sitk.ReadImage(path)
    except RuntimeError as e:
        raise DatasetConversionError(case, f"cannot read {path} ({str(e).strip().splitlines()[-1]})") from e


def read_voxels(path: str, case: str) -> np.ndarray:
    """The voxel values stored in an image file, in SimpleITK's (z, y, x) order for 3D files of one component.

    NIfTI files are read with nibabel: SimpleITK's NIfTI reader (checked with 2.5.7) returns 0 for NaN and inf, so
    it would hide them here, while nnU-Net's nibabel readers (``NibabelIO``, ``NibabelIOWithReorient``) pass them on.
    """
    if not path.endswith(NIFTI_ENDINGS):
        return sitk.GetArrayViewFromImage(read_image(path, case))
    import nibabel

    if not os.path.isfile(path):
        raise DatasetConversionError(case, f"missing file {path}")
    try:
        return np.asanyarray(nibabel.load(path).dataobj).T
    except Exception as e:  # nibabel and zlib raise many types for a damaged file
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise DatasetConversionError(case, f"cannot read {path} ({reason})") from e


def read_geometry(path: str, case: str) -> Geometry:
    """The grid of an image file, from its header only."""
    if not os.path.isfile(path):
        raise DatasetConversionError(case, f"missing file {path}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise DatasetConversionError(case, f"cannot read {path} ({str(e).strip().splitlines()[-1]})") from e
    return Geometry.of(reader)


def check_same_grid(reference: Geometry, other: Geometry, case: str, what: str) -> bool:
    """Check that ``other`` lies on the voxel grid of ``reference``.

    Size or spacing (relative 1e-3) mismatches raise. Origin/direction differences within rounding noise (origin
    within 1e-3 of a voxel, direction within 1e-3) return True: the caller then gives ``other`` the reference's
    geometry and reports it. Larger origin/direction differences raise.
    """
    if reference.size != other.size:
        raise DatasetConversionError(case, f"{what}: shape mismatch {reference.size} vs {other.size} (x, y, z)")
    if not np.allclose(reference.spacing, other.spacing, rtol=1e-3, atol=1e-6):
        raise DatasetConversionError(case, f"{what}: spacing mismatch {reference.spacing} vs {other.spacing}")
    origin_diff = np.abs(np.subtract(reference.origin, other.origin))
    direction_diff = np.abs(np.subtract(reference.direction, other.direction))
    if np.all(origin_diff <= 1e-6) and np.all(direction_diff <= 1e-6):
        return False
    if np.all(origin_diff <= 1e-3 * np.asarray(reference.spacing)) and np.all(direction_diff <= 1e-3):
        return True
    raise DatasetConversionError(case, f"{what}: origin/direction mismatch (origin {reference.origin} vs "
                                       f"{other.origin}, direction {reference.direction} vs {other.direction})")


def checked_label_array(label: sitk.Image, allowed: Iterable[int], case: str) -> tuple[np.ndarray, bool]:
    """Label voxels as uint8 after checking they are integers from ``allowed``.

    Returns (array in SimpleITK's (z, y, x) order, True when the stored type was not uint8 and had to be cast).
    """
    if label.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetConversionError(case, f"label has {label.GetNumberOfComponentsPerPixel()} components, expected 1")
    array = sitk.GetArrayFromImage(label)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise DatasetConversionError(case, f"label stored as {array.dtype} holds non-integer values")
    elif array.dtype.kind not in "iu":
        raise DatasetConversionError(case, f"label has unsupported pixel type {array.dtype}")
    allowed = sorted(int(a) for a in allowed)
    found = np.unique(array)
    unexpected = [v.item() for v in found if v not in allowed]
    if unexpected:
        raise DatasetConversionError(case, f"label values {unexpected} outside the documented set {allowed}")
    return array.astype(np.uint8), array.dtype != np.uint8


def check_image_intensities(array: np.ndarray, case: str, what: str) -> None:
    """Refuse an image channel that nnU-Net would normalise into garbage without a word.

    NaN or infinite values spread through nnU-Net's normalisation (the z-score's mean and std become NaN) into every
    training batch and prediction of the case. A constant image (zero variance) has nothing to segment from, and
    nnU-Net's z-score, ``(x - mean) / max(std, 1e-8)``, silently turns it into zeros.
    """
    if array.dtype.kind == "f":
        non_finite = int(np.count_nonzero(~np.isfinite(array)))
        if non_finite:
            raise DatasetConversionError(case, f"{what} holds {non_finite} NaN or infinite values")
    if array.size == 0:
        raise DatasetConversionError(case, f"{what} is empty (shape {array.shape})")
    low, high = array.min(), array.max()
    if low == high:
        raise DatasetConversionError(case, f"{what} is constant (every voxel is {low.item()}): zero variance, no "
                                           f"intensity to segment from")


def image_like(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A SimpleITK image holding ``array`` ((z, y, x) order) on ``geometry``'s grid."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def to_grayscale(array: np.ndarray, case: str, what: str) -> np.ndarray:
    """A 2D (H, W) array from a grayscale, gray-as-RGB(A) or colour PNG array (ITU-R 601 luma for colour)."""
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        rgb = array[..., :3]
        if np.all(rgb == rgb[..., :1]):
            return rgb[..., 0]
        luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)
    raise DatasetConversionError(case, f"{what} has shape {array.shape}, expected a 2D grayscale or RGB image")


# ----------------------------------------------------------------------------------------------------------------------
# writing


class RawDatasetWriter:
    """Writes one nnU-Net raw dataset through a staging folder; use as a context manager.

    >>> with RawDatasetWriter(520, "HC18", ".png", raw_root=...) as w:
    ...     sitk.WriteImage(img, w.image_path("case", 0)); sitk.WriteImage(seg, w.label_path("case"))
    ...     w.write_dataset_json({"0": "ultrasound"}, {"background": 0, "head": 1})
    ...     folder = w.finish(splits)

    Refuses (FileExistsError) an existing ``DatasetXXX_Name`` unless ``overwrite``, and always refuses another
    dataset with the same id but a different name (nnU-Net could not tell them apart). When ``writes_splits``, an
    existing ``nnUNet_preprocessed/DatasetXXX_Name/splits_final.json`` is refused the same way.
    """

    def __init__(self, dataset_id: int, name: str, file_ending: str, *, overwrite: bool = False,
                 raw_root: str | None = None, preprocessed_root: str | None = None, writes_splits: bool = False):
        self.name = dataset_folder_name(dataset_id, name)
        self.file_ending = file_ending
        self.overwrite = overwrite
        self.raw_root = nnunet_root(raw_root, "nnUNet_raw")
        if self.raw_root is None:
            raise RuntimeError("nnUNet_raw is not set: export nnUNet_raw=<folder>")
        self.preprocessed_root = nnunet_root(preprocessed_root, "nnUNet_preprocessed")
        self.folder = os.path.join(self.raw_root, self.name)
        self.writes_splits = writes_splits
        self.staging: str | None = None
        self.cases: dict[str, set[str]] = {"Tr": set(), "Ts": set()}
        self._check_targets(dataset_id)

    def _check_targets(self, dataset_id: int) -> None:
        prefix = f"Dataset{int(dataset_id):03d}_"
        for root in (self.raw_root, self.preprocessed_root):
            if root is None or not os.path.isdir(root):
                continue
            clashes = [d for d in os.listdir(root) if d.startswith(prefix) and d != self.name
                       and os.path.isdir(os.path.join(root, d))]
            if clashes:
                raise FileExistsError(f"dataset id {dataset_id} is already used by {clashes} in {root}; "
                                      f"choose another id with -d")
        if os.path.exists(self.folder) and not self.overwrite:
            raise FileExistsError(f"{self.folder} exists; pass overwrite=True (--overwrite) to replace it")
        splits = os.path.join(self.preprocessed_root, self.name, SPLITS_FILE) if self.preprocessed_root else None
        if splits is not None and os.path.exists(splits):
            if self.writes_splits and not self.overwrite:
                raise FileExistsError(f"{splits} exists; pass overwrite=True (--overwrite) to replace it")
            if not self.writes_splits:  # kept (it may be the user's own), but nnU-Net will train on it
                print(f"warning: {splits} exists and this conversion writes no split: nnU-Net will keep using it; "
                      f"delete it for nnU-Net's random 5-fold split", file=sys.stderr)

    def __enter__(self) -> RawDatasetWriter:
        os.makedirs(self.raw_root, exist_ok=True)
        self.staging = tempfile.mkdtemp(prefix=f".{self.name}.incomplete-", dir=self.raw_root)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.staging is not None and os.path.isdir(self.staging):
            shutil.rmtree(self.staging)
        self.staging = None
        return False

    def _path(self, subfolder: str, filename: str) -> str:
        if self.staging is None:
            raise RuntimeError("RawDatasetWriter is used outside its `with` block")
        folder = os.path.join(self.staging, subfolder)
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, filename)

    def image_path(self, case: str, channel: int, test: bool = False) -> str:
        """Where channel ``channel`` of ``case`` goes (imagesTr, or imagesTs when ``test``)."""
        self.cases["Ts" if test else "Tr"].add(case)
        return self._path("imagesTs" if test else "imagesTr", f"{case}_{channel:04d}{self.file_ending}")

    def label_path(self, case: str, test: bool = False) -> str:
        """Where the label of ``case`` goes (labelsTr, or labelsTs when ``test``)."""
        return self._path("labelsTs" if test else "labelsTr", f"{case}{self.file_ending}")

    def extra_file(self, filename: str) -> str:
        """Path for a file of our own next to dataset.json (reports, tables)."""
        return self._path("", filename)

    def write_json(self, filename: str, content) -> str:
        path = self.extra_file(filename)
        with open(path, "w") as f:
            json.dump(content, f, indent=2, sort_keys=False)
        return path

    @property
    def training_cases(self) -> list[str]:
        return sorted(self.cases["Tr"])

    @property
    def test_cases(self) -> list[str]:
        return sorted(self.cases["Ts"])

    def write_dataset_json(self, channel_names: dict, labels: dict, *, citation: str | None = None,
                           regions_class_order: tuple[int, ...] | None = None, **kwargs) -> None:
        """nnU-Net's ``generate_dataset_json`` for the training cases written so far, plus ``citation``."""
        from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

        generate_dataset_json(self.staging, dict(channel_names), dict(labels), len(self.cases["Tr"]),
                              self.file_ending, regions_class_order=regions_class_order, dataset_name=self.name,
                              converted_by="nnunetv2_diffusion.dataset_conversion", **kwargs)
        if citation is not None:
            # generate_dataset_json (2.8.1) stores `release` under 'citation', so the citation is added here
            path = os.path.join(self.staging, "dataset.json")
            with open(path) as f:
                content = json.load(f)
            content["citation"] = citation
            with open(path, "w") as f:
                json.dump(content, f, indent=4, sort_keys=False)

    def finish(self, splits: list[dict] | None = None) -> str:
        """Validate ``splits``, move the staged dataset into place, write splits_final.json; return the folder."""
        if self.staging is None:
            raise RuntimeError("RawDatasetWriter.finish() is called outside its `with` block")
        if splits is not None:
            check_splits(splits, self.training_cases)
            self.write_json(SPLITS_FILE, splits)
        if os.path.exists(self.folder):
            old = tempfile.mkdtemp(prefix=f".{self.name}.replaced-", dir=self.raw_root)
            os.rename(self.folder, os.path.join(old, self.name))
            os.rename(self.staging, self.folder)
            shutil.rmtree(old)
        else:
            os.rename(self.staging, self.folder)
        self.staging = None
        if splits is not None:
            write_splits(splits, self.name, self.preprocessed_root)
        return self.folder


def check_splits(splits: list[dict], training_cases: Sequence[str]) -> None:
    """Each fold: non-empty, disjoint train/val lists of cases that exist in imagesTr."""
    known = set(training_cases)
    for i, fold in enumerate(splits):
        train, val = set(fold["train"]), set(fold["val"])
        if not train or not val:
            raise ValueError(f"fold {i} of splits_final has an empty train or val list")
        if train & val:
            raise ValueError(f"fold {i}: cases in both train and val: {sorted(train & val)[:5]}")
        if (train | val) - known:
            raise ValueError(f"fold {i}: cases not in imagesTr: {sorted((train | val) - known)[:5]}")


def write_splits(splits: list[dict], dataset_name: str, preprocessed_root: str | None) -> str | None:
    """Write ``nnUNet_preprocessed/<dataset_name>/splits_final.json`` atomically; None when the root is unset."""
    if preprocessed_root is None:
        print(f"nnUNet_preprocessed is not set: copy {SPLITS_FILE} from the raw dataset folder to "
              f"nnUNet_preprocessed/{dataset_name}/ before training")
        return None
    folder = os.path.join(preprocessed_root, dataset_name)
    os.makedirs(folder, exist_ok=True)
    others = sorted(set(os.listdir(folder)) - {SPLITS_FILE})
    if others:
        print(f"note: {folder} already holds {others[:3]}...; rerun nnUNetv2_plan_and_preprocess for the new data")
    path = os.path.join(folder, SPLITS_FILE)
    fd, tmp = tempfile.mkstemp(prefix=".splits_final-", suffix=".json", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(splits, f, indent=2)
    os.replace(tmp, path)
    return path


def convert_nifti_case(writer: RawDatasetWriter, case: str, image_files: Sequence[str], label_file: str | None,
                       allowed_labels: Iterable[int], *, test: bool = False,
                       label_map: Callable[[np.ndarray], np.ndarray] | None = None) -> dict:
    """Check and write one 3D case whose channels are separate files.

    Every channel must lie on the label's grid (shape and spacing; tiny origin/direction noise is repaired on the
    label and reported). Every channel is read and checked by :func:`check_image_intensities` (no NaN/inf, not
    constant); ``.nii.gz`` channels are then copied byte for byte, other formats rewritten as ``.nii.gz``.
    The label is checked against ``allowed_labels``, mapped by ``label_map`` if given, and written as uint8.
    Returns flags for the report: ``label_cast`` (stored type was not uint8), ``label_geometry_copied``,
    ``empty_label`` (no foreground voxel after ``label_map``: kept, since a case without the structure is valid
    training data, but listed so that a broken export shows up).
    """
    geometries = [read_geometry(f, case) for f in image_files]
    for i, g in enumerate(geometries):
        if g.components != 1:
            raise DatasetConversionError(case, f"channel {i} ({image_files[i]}) has {g.components} components")
        if i > 0:
            check_same_grid(geometries[0], g, case, f"channel 0 and channel {i}")
    flags = {"label_cast": False, "label_geometry_copied": False, "empty_label": False}
    if label_file is not None:
        label = read_image(label_file, case)
        if label.GetDimension() != len(geometries[0].size):
            raise DatasetConversionError(case, f"label is {label.GetDimension()}D, image is "
                                               f"{len(geometries[0].size)}D")
        flags["label_geometry_copied"] = check_same_grid(geometries[0], Geometry.of(label), case, "image and label")
        array, flags["label_cast"] = checked_label_array(label, allowed_labels, case)
        if label_map is not None:
            array = label_map(array).astype(np.uint8)
        flags["empty_label"] = not array.any()
        sitk.WriteImage(image_like(array, geometries[0]), writer.label_path(case, test), useCompression=True)
    for channel, src in enumerate(image_files):
        check_image_intensities(read_voxels(src, case), case, f"channel {channel} ({src})")
        dst = writer.image_path(case, channel, test)
        if src.endswith(".nii.gz"):
            shutil.copyfile(src, dst)
        else:
            sitk.WriteImage(read_image(src, case), dst, useCompression=True)
    return flags


def summarise_flags(flags: dict[str, dict]) -> dict[str, list[str]]:
    """{flag: [cases where it is True]} from {case: {flag: bool}}."""
    names = sorted({k for f in flags.values() for k in f})
    return {k: sorted(c for c, f in flags.items() if f.get(k)) for k in names}


def run_conversion(parser: argparse.ArgumentParser, convert: Callable[[], str]) -> str:
    """Calls ``convert`` for a script's ``main``: bad input (:class:`DatasetConversionError`, an existing target, a
    missing source folder, an out-of-range option such as ``-d 1000``, ``nnUNet_raw`` unset) ends the command like
    ``parser.error`` does, with one line on stderr and exit status 1; nothing has been written then (the staging
    folder is removed on the way out)."""
    try:
        return convert()
    except (ValueError, RuntimeError, FileExistsError, FileNotFoundError) as e:
        parser.exit(1, f"{parser.prog}: error: {e}\n")


def build_parser(description: str, default_id: int | None, id_help: str | None = None) -> argparse.ArgumentParser:
    """The ``-i/-d/--overwrite`` command line every conversion script shares."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input_folder", required=True, help="downloaded and extracted source folder")
    parser.add_argument("-d", "--dataset_id", type=int, default=default_id,
                        help=id_help or f"nnU-Net dataset id (default {default_id})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    return parser

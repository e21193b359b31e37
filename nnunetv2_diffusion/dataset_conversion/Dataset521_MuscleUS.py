"""Transverse muscle ultrasound (Marzola et al. 2021) -> nnU-Net raw ``Dataset521_MuscleUS`` (2D, PNG, 1 class).

Source layout (Mendeley Data doi:10.17632/3jykz7wz8d.1, "DATASET for 'Deep learning segmentation of transverse
musculoskeletal ultrasound images for neuromuscular disease assessment'"; Marzola, van Alfen, Doorduin, Meiburger,
Computers in Biology and Medicine 135:104623, 2021; 3917 images of biceps brachii, tibialis anterior and gastrocnemius
medialis from 1283 subjects, Esaote MyLab Twice; CC BY 4.0)::

    Polito-Radboud-DeepLearningUS/Segmentation_models/data/MuscleCNN/
        train/<uid>.png       trainannot/<uid>.png     B-mode image / manual cross-sectional area (CSA) mask
        val/<uid>.png         valannot/<uid>.png
        test/<uid>.png        testannot/<uid>.png

``source_folder`` may be the extracted archive or the ``MuscleCNN`` folder itself. ``<uid>`` looks like
``BB_anon_348_1`` (muscle code, anonymised subject number, image number). Masks are binary, stored as {0, 255}
({0, 1} is accepted too); grayscale or gray-as-RGB PNG. Images without a mask are left out and listed in the report
(the paper's reference code drops them the same way: 3917 images, 3910 used). What is relied on: folder names and
the uid pattern come from the paper's reference code (ImgX-DiffSeg v0.2.0, ``imgx/datasets/muscle_us``) and file
names in its test fixtures; the mask encoding and the image size (480 x 512 there) could not be checked against a
download. That subject numbers identify a person across the three muscles is an assumption (the paper counts 1283
subjects for 3917 images, about three muscles each); grouping by it is the cautious choice.

Split. The published folders (2531 / 666 / 713 images used by the paper): train + val -> imagesTr/labelsTr with
``splits_final.json`` fold 0 = (train, val); test -> imagesTs/labelsTs. One subject's images must stay in one split:
a subject found in more than one folder is moved entirely to the folder holding most of its images (ties: test
before val before train, so the test set never loses a subject); moves are listed in the report and are none when
the published split is already subject-disjoint. Images are written at full resolution.
"""

from __future__ import annotations

import os
import re
from collections import Counter

import numpy as np
import SimpleITK as sitk

from nnunetv2_diffusion.dataset_conversion._common import (
    REPORT_FILE,
    DatasetConversionError,
    RawDatasetWriter,
    build_parser,
    check_image_intensities,
    read_image,
    run_conversion,
    to_grayscale,
    visible_files,
)

DATASET_ID = 521
DATASET_NAME = "MuscleUS"
SPLITS = ("train", "val", "test")
NESTED = os.path.join("Polito-Radboud-DeepLearningUS", "Segmentation_models", "data", "MuscleCNN")
CITATION = ("F. Marzola, N. van Alfen, J. Doorduin, K. M. Meiburger. Deep learning segmentation of transverse "
            "musculoskeletal ultrasound images for neuromuscular disease assessment. Computers in Biology and "
            "Medicine 135:104623, 2021. doi:10.1016/j.compbiomed.2021.104623. Data: doi:10.17632/3jykz7wz8d.1")
_UID = re.compile(r"^(?P<muscle>[A-Za-z]+)_anon_(?P<subject>\d+)_(?P<index>\d+)$")


def find_data_dir(source_folder: str) -> str:
    """The folder holding train/, trainannot/, ...: ``source_folder`` itself or its ``.../MuscleCNN``."""
    for candidate in (source_folder, os.path.join(source_folder, NESTED)):
        if all(os.path.isdir(os.path.join(candidate, d)) for d in ("train", "trainannot")):
            return candidate
    raise FileNotFoundError(f"no train/ and trainannot/ folders in {source_folder} or {NESTED} below it")


def subject_of(uid: str) -> str:
    """``"BB_anon_348_1"`` -> ``"348"``; a uid without that pattern is its own subject."""
    match = _UID.match(uid)
    return match.group("subject") if match else uid


def regroup_by_subject(assignment: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Move each subject's images into one split. Returns (new {uid: split}, {uid: "old->new"} of moved images)."""
    by_subject: dict[str, list[str]] = {}
    for uid in assignment:
        by_subject.setdefault(subject_of(uid), []).append(uid)
    new, moved = dict(assignment), {}
    priority = {"test": 0, "val": 1, "train": 2}
    for uids in by_subject.values():
        counts = Counter(assignment[u] for u in uids)
        if len(counts) == 1:
            continue
        target = min(counts, key=lambda s: (-counts[s], priority[s]))
        for u in uids:
            if assignment[u] != target:
                new[u] = target
                moved[u] = f"{assignment[u]}->{target}"
    return new, moved


def read_mask(path: str, case: str) -> np.ndarray:
    """{0, 1} uint8 mask from a PNG holding {0, 255} or {0, 1}."""
    array = to_grayscale(sitk.GetArrayFromImage(read_image(path, case)), case, "mask")
    values = set(np.unique(array).tolist())
    if values <= {0, 255}:
        return (array == 255).astype(np.uint8)
    if values <= {0, 1}:
        return array.astype(np.uint8)
    raise DatasetConversionError(case, f"mask values {sorted(values)[:6]} outside the documented set {{0, 255}}")


def convert_muscle_us(source_folder: str, dataset_id: int = DATASET_ID, overwrite: bool = False, *,
                      raw_root: str | None = None, preprocessed_root: str | None = None) -> str:
    """Convert the Mendeley MuscleCNN layout in ``source_folder`` (see module docstring); returns the folder."""
    data_dir = find_data_dir(source_folder)
    published, without_mask, masks_without_image = {}, [], []
    for split in SPLITS:
        image_dir, mask_dir = os.path.join(data_dir, split), os.path.join(data_dir, f"{split}annot")
        if not os.path.isdir(image_dir):
            continue
        uids = [f[:-len(".png")] for f in visible_files(image_dir, ".png")]
        masks = {f[:-len(".png")] for f in visible_files(mask_dir, ".png")} if os.path.isdir(mask_dir) else set()
        masks_without_image += sorted(masks - set(uids))
        for uid in uids:
            if uid in published:
                raise DatasetConversionError(uid, f"image in both {published[uid]}/ and {split}/")
            if uid in masks:
                published[uid] = split
            else:
                without_mask.append(f"{split}/{uid}")
    assignment, moved = regroup_by_subject(published)
    if not any(s == "train" for s in assignment.values()):
        raise FileNotFoundError(f"no training images with masks in {data_dir}")

    shapes, empty_masks = Counter(), []
    with RawDatasetWriter(dataset_id, DATASET_NAME, ".png", overwrite=overwrite, raw_root=raw_root,
                          preprocessed_root=preprocessed_root, writes_splits=True) as writer:
        for uid in sorted(assignment):
            source_split, test = published[uid], assignment[uid] == "test"
            image = to_grayscale(sitk.GetArrayFromImage(read_image(os.path.join(data_dir, source_split, f"{uid}.png"),
                                                                   uid)), uid, "image")
            if image.dtype != np.uint8:
                raise DatasetConversionError(uid, f"image is {image.dtype}, expected 8-bit")
            mask = read_mask(os.path.join(data_dir, f"{source_split}annot", f"{uid}.png"), uid)
            if image.shape != mask.shape:
                raise DatasetConversionError(uid, f"image shape {image.shape} != mask shape {mask.shape} (H, W)")
            check_image_intensities(image, uid, "image")
            if not mask.any():
                empty_masks.append(uid)
            shapes[f"{image.shape[0]}x{image.shape[1]}"] += 1
            sitk.WriteImage(sitk.GetImageFromArray(image), writer.image_path(uid, 0, test))
            sitk.WriteImage(sitk.GetImageFromArray(mask), writer.label_path(uid, test))
        writer.write_dataset_json({"0": "ultrasound"}, {"background": 0, "muscle": 1}, citation=CITATION,
                                  reference="https://data.mendeley.com/datasets/3jykz7wz8d/1", license="CC BY 4.0",
                                  description="Transverse muscle ultrasound, cross-sectional area masks; published "
                                              "train/val/test folders, subjects kept in one split")
        split_of = {s: sorted(u for u, a in assignment.items() if a == s) for s in SPLITS}
        report = {"dataset": writer.name, "source": os.path.abspath(source_folder),
                  "num_images": {s: len(split_of[s]) for s in SPLITS},
                  "num_subjects": {s: len({subject_of(u) for u in split_of[s]}) for s in SPLITS},
                  "images_moved_to_keep_subjects_in_one_split": moved,
                  "images_without_mask": without_mask, "masks_without_image": masks_without_image,
                  "empty_masks": empty_masks, "image_shapes_HxW": dict(shapes)}
        writer.write_json(REPORT_FILE, report)
        folder = writer.finish([{"train": split_of["train"], "val": split_of["val"]}] if split_of["val"] else None)
    print(f"wrote {folder}: images train/val/test {report['num_images']}; moved to keep subjects together: "
          f"{len(moved)}; images without mask left out: {len(without_mask)}; empty masks kept: {len(empty_masks)}")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(__doc__.split("\n")[0], DATASET_ID)
    args = parser.parse_args(argv)
    run_conversion(parser, lambda: convert_muscle_us(args.input_folder, args.dataset_id, args.overwrite))


if __name__ == "__main__":
    main()

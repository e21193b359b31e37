"""BraTS 2021 -> nnU-Net raw ``Dataset525_BraTS2021`` (region-based) or ``Dataset526_BraTS2021WholeTumour`` (binary).

Source layout (RSNA-ASNR-MICCAI BraTS 2021 task 1 training data; Baid et al., arXiv:2107.02314, 2021;
https://www.synapse.org/#!Synapse:syn25829067; the same files are mirrored on Kaggle as
``dschettler8845/brats-2021-task1``, whose ``BraTS2021_Training_Data`` folder the paper's reference code ImgX-DiffSeg
reads)::

    BraTS2021_XXXXX/BraTS2021_XXXXX_t1.nii.gz      native T1
    BraTS2021_XXXXX/BraTS2021_XXXXX_t1ce.nii.gz    post-contrast T1 (Gd)
    BraTS2021_XXXXX/BraTS2021_XXXXX_t2.nii.gz      T2
    BraTS2021_XXXXX/BraTS2021_XXXXX_flair.nii.gz   T2-FLAIR
    BraTS2021_XXXXX/BraTS2021_XXXXX_seg.nii.gz     0 background, 1 necrotic tumour core (NCR), 2 peritumoral
                                                   edema (ED), 4 GD-enhancing tumour (ET); no label 3

All volumes 240 x 240 x 155 at 1 mm, co-registered and skull-stripped. Channels are written in the order t1, t1ce,
t2, flair (``_0000`` .. ``_0003``), as nnU-Net's own Dataset137_BraTS21 does. Case folders must be directly in the
source folder (pass ``.../BraTS2021_Training_Data``). A case with a missing modality or segmentation raises.

Region-based form (default, id 525). Labels are remapped so that the BraTS evaluation regions are nested label
sets: ED 2 -> 1, NCR 1 -> 2, ET 4 -> 3. dataset.json then declares the regions whole tumour (1, 2, 3),
tumour core (2, 3) and enhancing tumour (3) with ``regions_class_order`` (1, 2, 3), so nnU-Net trains one sigmoid
per region and exports label maps in the remapped convention; ``convert_labels_back_to_brats`` /
``convert_folder_back_to_brats`` restore 0/1/2/4 for submission.

Whole-tumour form (``whole_tumour=True``, ``--whole_tumour``; id 526 unless ``-d`` is given). The paper (Fu et al.,
MELBA 2023, and its code ImgX-DiffSeg v0.2.0) segments the whole tumour only: label 1 = any of 1, 2, 4. No inverse
exists for this form.

Split. The paper's: the case ids sorted, the first 938 train, the next 31 validate, the last 282 test (of 1251).
Train + validation -> imagesTr/labelsTr with ``splits_final.json`` fold 0 = (938, 31); test -> imagesTs/labelsTs.
For another number of cases the same fractions are used (rounded, at least one case each).
"""

from __future__ import annotations

import os
import re

import numpy as np
import SimpleITK as sitk

from nnunetv2_diffusion.dataset_conversion._common import (
    REPORT_FILE,
    DatasetConversionError,
    RawDatasetWriter,
    build_parser,
    convert_nifti_case,
    read_image,
    require_dir,
    run_conversion,
    split_off_tail,
    summarise_flags,
    visible_files,
)

LICENSE = "the BraTS 2021 data use terms, see https://www.synapse.org/#!Synapse:syn25829067"
DATASET_ID = 525
DATASET_ID_WHOLE_TUMOUR = 526
MODALITIES = ("t1", "t1ce", "t2", "flair")
BRATS_LABELS = (0, 1, 2, 4)
PAPER_SPLIT = (938, 31, 282)  # train, validation, test of 1251 cases (ImgX-DiffSeg v0.2.0)
REGION_LABELS = {"background": 0, "whole tumour": (1, 2, 3), "tumour core": (2, 3), "enhancing tumour": (3,)}
REGIONS_CLASS_ORDER = (1, 2, 3)
CITATION = ("U. Baid et al. The RSNA-ASNR-MICCAI BraTS 2021 Benchmark on Brain Tumor Segmentation and "
            "Radiogenomic Classification. arXiv:2107.02314, 2021")
_CASE = re.compile(r"^BraTS2021_\d{5}$")

# BraTS label -> nnU-Net label and back (region-based form)
_TO_NNUNET = np.array([0, 2, 1, 0, 3], dtype=np.uint8)
_TO_BRATS = np.array([0, 2, 1, 4], dtype=np.uint8)


def brats_to_regions(seg: np.ndarray) -> np.ndarray:
    """BraTS labels {0, 1 NCR, 2 ED, 4 ET} -> {0, 1 ED, 2 NCR, 3 ET}: whole tumour = {1,2,3}, core = {2,3}."""
    return _TO_NNUNET[seg]


def brats_to_whole_tumour(seg: np.ndarray) -> np.ndarray:
    """BraTS labels -> {0, 1 whole tumour}."""
    return (seg > 0).astype(np.uint8)


def convert_labels_back_to_brats(seg: np.ndarray) -> np.ndarray:
    """Inverse of ``brats_to_regions`` for submission: {0, 1, 2, 3} -> {0, 2, 1, 4}."""
    seg = np.asarray(seg)
    if seg.size and (seg.min() < 0 or seg.max() > 3):
        raise ValueError(f"expected labels in 0..3, got range {seg.min()}..{seg.max()}")
    return _TO_BRATS[seg.astype(np.intp)]


def convert_folder_back_to_brats(input_folder: str, output_folder: str) -> list[str]:
    """Write every ``.nii.gz`` prediction of ``input_folder`` with BraTS labels into ``output_folder``."""
    os.makedirs(output_folder, exist_ok=True)
    written = []
    for name in visible_files(input_folder, ".nii.gz"):
        prediction = read_image(os.path.join(input_folder, name), name)
        converted = sitk.GetImageFromArray(convert_labels_back_to_brats(sitk.GetArrayFromImage(prediction)))
        converted.CopyInformation(prediction)
        sitk.WriteImage(converted, os.path.join(output_folder, name), useCompression=True)
        written.append(name)
    return written


def paper_split(cases: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(train, validation, test) of the sorted cases in the paper's proportions 938 / 31 / 282."""
    cases = sorted(cases)
    if len(cases) < 3:
        raise ValueError(f"need at least 3 cases for a train/validation/test split, found {len(cases)}")
    total = sum(PAPER_SPLIT)
    trainval, test = split_off_tail(cases, PAPER_SPLIT[2] / total)
    train, val = split_off_tail(trainval, PAPER_SPLIT[1] / (PAPER_SPLIT[0] + PAPER_SPLIT[1]))
    return train, val, test


def convert_brats2021(source_folder: str, dataset_id: int | None = None, overwrite: bool = False,
                      whole_tumour: bool = False, *, raw_root: str | None = None,
                      preprocessed_root: str | None = None) -> str:
    """Convert BraTS 2021 case folders in ``source_folder`` (see module docstring); returns the dataset folder."""
    require_dir(source_folder, "BraTS 2021 folder")
    cases = sorted(d for d in os.listdir(source_folder)
                   if _CASE.match(d) and os.path.isdir(os.path.join(source_folder, d)))
    if not cases:
        raise FileNotFoundError(f"no BraTS2021_XXXXX case folders in {source_folder}")
    train, val, test = paper_split(cases)
    if dataset_id is None:
        dataset_id = DATASET_ID_WHOLE_TUMOUR if whole_tumour else DATASET_ID
    name = "BraTS2021WholeTumour" if whole_tumour else "BraTS2021"
    label_map = brats_to_whole_tumour if whole_tumour else brats_to_regions

    flags = {}
    with RawDatasetWriter(dataset_id, name, ".nii.gz", overwrite=overwrite, raw_root=raw_root,
                          preprocessed_root=preprocessed_root, writes_splits=True) as writer:
        for case in cases:
            folder = os.path.join(source_folder, case)
            images = [os.path.join(folder, f"{case}_{m}.nii.gz") for m in MODALITIES]
            missing = [m for m, f in zip(MODALITIES, images, strict=True) if not os.path.isfile(f)]
            if missing:
                raise DatasetConversionError(case, f"missing modality {missing} ({case}_<modality>.nii.gz)")
            flags[case] = convert_nifti_case(writer, case, images, os.path.join(folder, f"{case}_seg.nii.gz"),
                                             BRATS_LABELS, test=case in test, label_map=label_map)
        channels = {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
        if whole_tumour:
            writer.write_dataset_json(channels, {"background": 0, "whole tumour": 1}, citation=CITATION,
                                      reference="https://www.synapse.org/#!Synapse:syn25829067", license=LICENSE,
                                      description="BraTS 2021 training cases, binary whole tumour (labels 1, 2, 4)")
        else:
            writer.write_dataset_json(channels, REGION_LABELS, citation=CITATION,
                                      regions_class_order=REGIONS_CLASS_ORDER,
                                      reference="https://www.synapse.org/#!Synapse:syn25829067", license=LICENSE,
                                      description="BraTS 2021 training cases; labels remapped ED 2->1, NCR 1->2, "
                                                  "ET 4->3; convert back with convert_labels_back_to_brats")
        report = {"dataset": writer.name, "source": os.path.abspath(source_folder), "whole_tumour": whole_tumour,
                  "num_cases": {"imagesTr": len(train) + len(val), "imagesTs": len(test), "fold0_train": len(train),
                                "fold0_val": len(val)}, **summarise_flags(flags)}
        writer.write_json(REPORT_FILE, report)
        folder = writer.finish([{"train": train, "val": val}])
    print(f"wrote {folder}: {len(train)} train + {len(val)} validation (fold 0) / {len(test)} test cases; "
          f"empty labels kept: {len(report.get('empty_label', []))}")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(__doc__.split("\n")[0], None, f"nnU-Net dataset id (default {DATASET_ID}, or "
                                                       f"{DATASET_ID_WHOLE_TUMOUR} with --whole_tumour)")
    parser.add_argument("--whole_tumour", action="store_true",
                        help=f"binary whole tumour as in the paper (default id {DATASET_ID_WHOLE_TUMOUR})")
    args = parser.parse_args(argv)
    run_conversion(parser, lambda: convert_brats2021(args.input_folder, args.dataset_id, args.overwrite,
                                                     args.whole_tumour))


if __name__ == "__main__":
    main()

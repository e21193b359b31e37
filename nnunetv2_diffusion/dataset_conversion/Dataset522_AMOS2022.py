"""AMOS 2022 abdominal CT -> nnU-Net raw ``Dataset522_AMOS2022`` (3D CT, 15 organs).

Source layout (AMOS 2022 as released after the challenge, ``amos22.zip`` of https://zenodo.org/record/7262581;
Ji et al., "AMOS: A Large-Scale Abdominal Multi-Organ Benchmark for Versatile Medical Image Segmentation",
NeurIPS 2022 Datasets and Benchmarks; https://amos22.grand-challenge.org/)::

    dataset.json               MSD style: "labels" {"0": "background", "1": "spleen", ...}, "training" / "validation"
                               lists of {"image": "./imagesTr/amos_0001.nii.gz", "label": "./labelsTr/..."}
    imagesTr/amos_XXXX.nii.gz  training images (200 CT + 40 MR)
    labelsTr/amos_XXXX.nii.gz  0 background, 1 spleen, 2 right kidney, 3 left kidney, 4 gall bladder, 5 esophagus,
                               6 liver, 7 stomach, 8 aorta, 9 postcava (IVC), 10 pancreas, 11 right adrenal gland,
                               12 left adrenal gland, 13 duodenum, 14 bladder, 15 prostate/uterus
    imagesVa/, labelsVa/       official validation cases (100 CT + 20 MR), labels released after the challenge
    imagesTs/                  unlabelled test images (ignored)

CT only, as in the paper: cases with id <= 500 are CT, ids above are MR (the rule of the paper's reference code
ImgX-DiffSeg; nnU-Net's Dataset218 uses the same boundary). The case lists and label names come from the source
``dataset.json`` when present (its 16 label values must be 0..15; its names are kept, including the release's
spelling "arota"); without it the folders are listed and the names above are used. The label list and the CT-id rule
are taken from these two code bases and the AMOS paper, not re-checked against a download.

Images are copied unchanged; dataset.json selects nnU-Net's ``NibabelIOWithReorient`` reader (every scan read in RAS
orientation), as nnU-Net's own AMOS conversions (Dataset218/219) do. Channel "CT" selects nnU-Net's CT normalisation.

Split. The paper trains on the 200 CT training cases and evaluates on the official CT validation cases:
imagesTr/labelsTr = imagesTr, imagesTs/labelsTs = imagesVa (100). No splits_final.json is written (one scan per
patient, so nnU-Net's own 5-fold split is valid). With ``paper_validation=True`` (``--paper_validation``) the split of
ImgX-DiffSeg is reproduced instead: the first 10 % of the official validation cases (in dataset.json order) join
imagesTr and form the validation set of a single fold 0 in ``splits_final.json``; the other 90 % are the test set.
"""

from __future__ import annotations

import os
import re

from nnunetv2_diffusion.dataset_conversion._common import (
    REPORT_FILE,
    DatasetConversionError,
    RawDatasetWriter,
    build_parser,
    convert_nifti_case,
    read_source_json,
    require_dir,
    run_conversion,
    summarise_flags,
    visible_files,
)

DATASET_ID = 522
DATASET_NAME = "AMOS2022"
LAST_CT_ID = 500
PAPER_VAL_FRACTION = 0.10
LABEL_NAMES = ("background", "spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver",
               "stomach", "aorta", "postcava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum",
               "bladder", "prostate/uterus")
CITATION = ("Y. Ji et al. AMOS: A Large-Scale Abdominal Multi-Organ Benchmark for Versatile Medical Image "
            "Segmentation. NeurIPS 2022 Datasets and Benchmarks. Data: doi:10.5281/zenodo.7262581")
_CASE = re.compile(r"^amos_(\d+)$")


def is_ct(case: str) -> bool:
    match = _CASE.match(case)
    if match is None:
        raise DatasetConversionError(case, "name does not follow amos_XXXX")
    return int(match.group(1)) <= LAST_CT_ID


def _cases_from(entries: list) -> list[str]:
    names = [os.path.basename(e["image"] if isinstance(e, dict) else e) for e in entries]
    return [n[:-len(".nii.gz")] for n in names]


def read_source_index(source_folder: str) -> tuple[list[str], list[str], dict[str, int]]:
    """(training cases, validation cases, labels) from dataset.json, or from the folders when it is absent."""
    path = os.path.join(source_folder, "dataset.json")
    if not os.path.isfile(path):
        train = [f[:-len(".nii.gz")] for f in visible_files(os.path.join(source_folder, "imagesTr"), ".nii.gz")]
        val_dir = os.path.join(source_folder, "imagesVa")
        val = [f[:-len(".nii.gz")] for f in visible_files(val_dir, ".nii.gz")] if os.path.isdir(val_dir) else []
        return train, val, {n: i for i, n in enumerate(LABEL_NAMES)}
    meta = read_source_json(path, ("labels",))
    labels = {str(v): int(k) for k, v in meta["labels"].items()}
    if sorted(labels.values()) != list(range(len(LABEL_NAMES))):
        raise DatasetConversionError("dataset.json", f"labels {meta['labels']} are not the documented 0..15")
    return _cases_from(meta.get("training", [])), _cases_from(meta.get("validation", [])), labels


def convert_amos2022(source_folder: str, dataset_id: int = DATASET_ID, overwrite: bool = False,
                     paper_validation: bool = False, *, raw_root: str | None = None,
                     preprocessed_root: str | None = None) -> str:
    """Convert the AMOS 2022 release in ``source_folder`` (see module docstring); returns the dataset folder."""
    require_dir(os.path.join(source_folder, "imagesTr"), "AMOS imagesTr folder")
    train_all, val_all, labels = read_source_index(source_folder)
    train = [c for c in train_all if is_ct(c)]
    official_val = [c for c in val_all if is_ct(c)]
    if not train:
        raise FileNotFoundError(f"no CT training cases (amos_XXXX with XXXX <= {LAST_CT_ID}) in {source_folder}")
    if official_val:
        require_dir(os.path.join(source_folder, "imagesVa"), "AMOS imagesVa folder")
    extra_train, test = ([], official_val)
    if paper_validation:
        if len(official_val) < 2:
            raise FileNotFoundError("--paper_validation needs at least 2 labelled CT validation cases (imagesVa)")
        k = max(1, int(len(official_val) * PAPER_VAL_FRACTION))
        extra_train, test = official_val[:k], official_val[k:]

    flags = {}
    with RawDatasetWriter(dataset_id, DATASET_NAME, ".nii.gz", overwrite=overwrite, raw_root=raw_root,
                          preprocessed_root=preprocessed_root, writes_splits=paper_validation) as writer:
        for case in train:
            flags[case] = convert_nifti_case(writer, case, [os.path.join(source_folder, "imagesTr", f"{case}.nii.gz")],
                                             os.path.join(source_folder, "labelsTr", f"{case}.nii.gz"),
                                             labels.values())
        for case in official_val:
            flags[case] = convert_nifti_case(writer, case, [os.path.join(source_folder, "imagesVa", f"{case}.nii.gz")],
                                             os.path.join(source_folder, "labelsVa", f"{case}.nii.gz"),
                                             labels.values(), test=case in test)
        writer.write_dataset_json({"0": "CT"}, labels, citation=CITATION, reference="https://amos22.grand-challenge.org/",
                                  release="https://zenodo.org/record/7262581", license="CC BY 4.0",
                                  overwrite_image_reader_writer="NibabelIOWithReorient",
                                  description="AMOS 2022 CT cases; test set = official validation CT cases")
        report = {"dataset": writer.name, "source": os.path.abspath(source_folder),
                  "paper_validation": paper_validation,
                  "num_cases": {"imagesTr": len(train) + len(extra_train), "imagesTs": len(test),
                                "mr_cases_skipped": len(train_all) + len(val_all) - len(train) - len(official_val)},
                  **summarise_flags(flags)}
        writer.write_json(REPORT_FILE, report)
        folder = writer.finish([{"train": sorted(train), "val": sorted(extra_train)}] if paper_validation else None)
    print(f"wrote {folder}: {report['num_cases']['imagesTr']} training / {len(test)} test CT cases"
          + (f" (fold 0 validation: {len(extra_train)})" if paper_validation else "")
          + f"; empty labels kept: {len(report.get('empty_label', []))}")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(__doc__.split("\n")[0], DATASET_ID)
    parser.add_argument("--paper_validation", action="store_true",
                        help="first 10%% of the official validation cases as fold-0 validation set (ImgX-DiffSeg)")
    args = parser.parse_args(argv)
    run_conversion(parser, lambda: convert_amos2022(args.input_folder, args.dataset_id, args.overwrite,
                                                    args.paper_validation))


if __name__ == "__main__":
    main()

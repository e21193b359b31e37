"""Male pelvic T2 MR (Li et al. 2022) -> nnU-Net raw ``Dataset523_PelvicMR`` (3D MR, 8 structures).

Source layout (zenodo record 7013610, files ``data.zip`` and ``institution.txt``; Li, Fu, Gayo et al.,
"Prototypical few-shot segmentation for cross-institution male pelvic structures with spatial registration",
arXiv:2209.05160 / Medical Image Analysis 2023; 589 T2-weighted scans from seven studies)::

    institution.txt        one line per scan: "<key> <institution>", space separated
    data/<key>_img.nii     T2-weighted image (uncompressed NIfTI; .nii.gz is accepted too)
    data/<key>_mask.nii    labels 0 background, 1 bladder, 2 bone, 3 obturator internus, 4 transition zone,
                           5 central gland, 6 rectum, 7 seminal vesicles, 8 neurovascular bundles

``data/`` may also be the source folder itself, with ``institution.txt`` inside it. What is relied on: the file
names, label order and split follow the paper's reference code (ImgX-DiffSeg v0.2.0,
``imgx/datasets/male_pelvic_mr``), which reads exactly these files; class names there are "BladderMask",
"BoneMask", "ObdInternMask", "TZ", "CG", "RectumMask", "SV", "NVB", and the institutions it expects are "UCL",
"Prostate3T", "ProstateDx", "ProstateMRI", "bergen", "Nijmegen", "Rutgers". The key format inside institution.txt
could not be checked against a download; keys are used verbatim as case ids, institutions as found.

Split. The paper's, per institution in institution.txt order: the first 2 scans validate, the scans up to
``int(0.75 n) - 2`` train, the rest test (ImgX-DiffSeg's formula; it puts ~25-30 % of each institution into the test
set). Train + validation -> imagesTr/labelsTr with ``splits_final.json`` fold 0; test -> imagesTs/labelsTs. Each
scan is one patient. Institutions need at least 3 scans. Where ``int(0.75 n) - 2 < 2`` (n < 6) the reference
formula would let validation and test overlap; the test set then starts right after the 2 validation scans.
"""

from __future__ import annotations

import os

from nnunetv2_diffusion.dataset_conversion._common import (
    REPORT_FILE,
    DatasetConversionError,
    RawDatasetWriter,
    build_parser,
    convert_nifti_case,
    run_conversion,
    summarise_flags,
)

DATASET_ID = 523
DATASET_NAME = "PelvicMR"
LABELS = {"background": 0, "bladder": 1, "bone": 2, "obturator internus": 3, "transition zone": 4,
          "central gland": 5, "rectum": 6, "seminal vesicles": 7, "neurovascular bundles": 8}
TRAIN_RATIO = 0.75
NUM_VAL_PER_INSTITUTION = 2
CITATION = ("Y. Li, Y. Fu, I. Gayo, et al. Prototypical few-shot segmentation for cross-institution male pelvic "
            "structures with spatial registration. arXiv:2209.05160, 2022. Data: doi:10.5281/zenodo.7013610")


def read_institutions(path: str) -> dict[str, list[str]]:
    """{institution: [keys in file order]} from institution.txt."""
    table: dict[str, list[str]] = {}
    seen = set()
    with open(path) as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DatasetConversionError(f"institution.txt line {number}", f"expected '<key> <institution>', "
                                                                                f"got {line.strip()!r}")
            key, institution = parts
            if key in seen:
                raise DatasetConversionError(key, "listed twice in institution.txt")
            seen.add(key)
            table.setdefault(institution, []).append(key)
    return table


def paper_split(keys: list[str], institution: str) -> tuple[list[str], list[str], list[str]]:
    """(train, validation, test) of one institution's keys, following ImgX-DiffSeg."""
    n = len(keys)
    if n < NUM_VAL_PER_INSTITUTION + 1:
        raise DatasetConversionError(institution, f"{n} scans; the split needs at least "
                                                  f"{NUM_VAL_PER_INSTITUTION + 1}")
    end_train = max(int(n * TRAIN_RATIO) - NUM_VAL_PER_INSTITUTION, NUM_VAL_PER_INSTITUTION)
    return keys[NUM_VAL_PER_INSTITUTION:end_train], keys[:NUM_VAL_PER_INSTITUTION], keys[end_train:]


def _find_file(data_dir: str, stem: str, case: str) -> str:
    for ending in (".nii", ".nii.gz"):
        if os.path.isfile(os.path.join(data_dir, stem + ending)):
            return os.path.join(data_dir, stem + ending)
    raise DatasetConversionError(case, f"missing file {os.path.join(data_dir, stem)}.nii")


def convert_pelvic_mr(source_folder: str, dataset_id: int = DATASET_ID, overwrite: bool = False, *,
                      raw_root: str | None = None, preprocessed_root: str | None = None) -> str:
    """Convert the zenodo 7013610 layout in ``source_folder`` (see module docstring); returns the dataset folder."""
    data_dir = os.path.join(source_folder, "data")
    if not os.path.isdir(data_dir):
        data_dir = source_folder
    institution_file = next((p for p in (os.path.join(source_folder, "institution.txt"),
                                         os.path.join(data_dir, "institution.txt")) if os.path.isfile(p)), None)
    if institution_file is None:
        raise FileNotFoundError(f"institution.txt not found in {source_folder} (download it from zenodo 7013610)")
    institutions = read_institutions(institution_file)
    train, val, test = [], [], []
    for institution, keys in institutions.items():
        t, v, s = paper_split(keys, institution)
        train += t
        val += v
        test += s

    flags, test_set = {}, set(test)
    with RawDatasetWriter(dataset_id, DATASET_NAME, ".nii.gz", overwrite=overwrite, raw_root=raw_root,
                          preprocessed_root=preprocessed_root, writes_splits=True) as writer:
        for key in val + train + test:
            flags[key] = convert_nifti_case(writer, key, [_find_file(data_dir, f"{key}_img", key)],
                                            _find_file(data_dir, f"{key}_mask", key), LABELS.values(),
                                            test=key in test_set)
        writer.write_dataset_json({"0": "T2"}, LABELS, citation=CITATION, reference="https://zenodo.org/record/7013610",
                                  license="see the source record, https://zenodo.org/record/7013610",
                                  description="Male pelvic T2 MR from seven studies; split per institution as in "
                                              "ImgX-DiffSeg")
        report = {"dataset": writer.name, "source": os.path.abspath(source_folder),
                  "num_cases": {"imagesTr": len(train) + len(val), "imagesTs": len(test), "fold0_train": len(train),
                                "fold0_val": len(val)},
                  "per_institution": {i: {"train": len(paper_split(k, i)[0]), "val": len(paper_split(k, i)[1]),
                                          "test": len(paper_split(k, i)[2])} for i, k in institutions.items()},
                  **summarise_flags(flags)}
        writer.write_json(REPORT_FILE, report)
        folder = writer.finish([{"train": sorted(train), "val": sorted(val)}] if train else None)
    print(f"wrote {folder}: {len(train)} train + {len(val)} validation (fold 0) / {len(test)} test cases from "
          f"{len(institutions)} institutions; empty labels kept: {len(report.get('empty_label', []))}")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(__doc__.split("\n")[0], DATASET_ID)
    args = parser.parse_args(argv)
    run_conversion(parser, lambda: convert_pelvic_mr(args.input_folder, args.dataset_id, args.overwrite))


if __name__ == "__main__":
    main()

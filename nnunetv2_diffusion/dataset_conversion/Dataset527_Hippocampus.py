"""MSD Task04 Hippocampus -> nnU-Net raw ``Dataset527_Hippocampus`` (3D MR, labels anterior / posterior).

Source layout (Medical Segmentation Decathlon, Antonelli et al., Nat. Commun. 13:4128, 2022,
doi:10.1038/s41467-022-30695-9, http://medicaldecathlon.com/, CC BY-SA 4.0; the 208-case subset shipped in this
repository under ``data/msd_hippocampus/`` is the Udacity redistribution in the same layout, see its README.md)::

    imagesTr/hippocampus_XXX.nii.gz   3D mono-modal MR, about 35 x 50 x 35 voxels at 1 mm (float32 or uint8)
    labelsTr/hippocampus_XXX.nii.gz   same grid; 0 background, 1 anterior (head), 2 posterior (body + tail)

Hidden files (macOS ``._*`` forks in the MSD tar), ``dataset.json`` and the unlabelled MSD ``imagesTs`` are ignored.
Labels stored as float (two shipped files) are cast to uint8 after checking that they hold integers; the casts are
listed in ``conversion_report.json``. Image intensities are left as they are although their scales differ between
cases (uint8 0-255 next to float32 up to ~3000): nnU-Net z-scores each case (channel name "MRI").

Split. Fixed, as in the stock CPU baseline (docs/design.md, "Stock nnU-Net on two CPU cores"): the cases sorted by
name, the first 80 % (rounded) -> imagesTr/labelsTr, the last 20 % -> imagesTs/labelsTs (166 / 42 for the shipped
208). ``splits_final.json`` holds the baseline's single fold 0 whose validation set is the last 10 % (rounded, 17
of 166) of the training cases. Each case is one subject, so nothing else constrains the split.
"""

from __future__ import annotations

import os

from nnunetv2_diffusion.dataset_conversion._common import (
    REPORT_FILE,
    DatasetConversionError,
    RawDatasetWriter,
    build_parser,
    convert_nifti_case,
    require_dir,
    run_conversion,
    split_off_tail,
    summarise_flags,
    visible_files,
)

DATASET_ID = 527
DATASET_NAME = "Hippocampus"
TEST_FRACTION = 0.20
VAL_FRACTION = 0.10
LABELS = {"background": 0, "anterior": 1, "posterior": 2}
CITATION = ("M. Antonelli, A. Reinke, S. Bakas, et al. The Medical Segmentation Decathlon. Nature Communications 13, "
            "4128 (2022). doi:10.1038/s41467-022-30695-9")


def convert_hippocampus(source_folder: str, dataset_id: int = DATASET_ID, overwrite: bool = False, *,
                        raw_root: str | None = None, preprocessed_root: str | None = None) -> str:
    """Convert MSD Task04 imagesTr/labelsTr in ``source_folder`` (see module docstring); returns the dataset folder."""
    image_dir = require_dir(os.path.join(source_folder, "imagesTr"), "MSD imagesTr folder")
    label_dir = require_dir(os.path.join(source_folder, "labelsTr"), "MSD labelsTr folder")
    cases = [f[:-len(".nii.gz")] for f in visible_files(image_dir, ".nii.gz")]
    labels_without_image = sorted(set(f[:-len(".nii.gz")] for f in visible_files(label_dir, ".nii.gz")) - set(cases))
    if labels_without_image:
        raise DatasetConversionError(labels_without_image[0], "label without image in imagesTr")
    if len(cases) < 3:
        raise FileNotFoundError(f"need at least 3 cases in {image_dir}, found {len(cases)}")
    train, test = split_off_tail(cases, TEST_FRACTION)
    fit, val = split_off_tail(train, VAL_FRACTION)

    flags = {}
    with RawDatasetWriter(dataset_id, DATASET_NAME, ".nii.gz", overwrite=overwrite, raw_root=raw_root,
                          preprocessed_root=preprocessed_root, writes_splits=True) as writer:
        for case in cases:
            flags[case] = convert_nifti_case(writer, case, [os.path.join(image_dir, f"{case}.nii.gz")],
                                             os.path.join(label_dir, f"{case}.nii.gz"), LABELS.values(),
                                             test=case in test)
        writer.write_dataset_json({"0": "MRI"}, LABELS, citation=CITATION, reference="http://medicaldecathlon.com/",
                                  license="CC BY-SA 4.0",
                                  description="MSD Task04 Hippocampus training cases; last 20% (sorted) as test set")
        report = {"dataset": writer.name, "source": os.path.abspath(source_folder),
                  "num_cases": {"imagesTr": len(train), "imagesTs": len(test), "fold0_train": len(fit),
                                "fold0_val": len(val)},
                  "test_cases": test, **summarise_flags(flags)}
        writer.write_json(REPORT_FILE, report)
        folder = writer.finish([{"train": fit, "val": val}])
    print(f"wrote {folder}: {len(train)} training / {len(test)} test cases, fold 0 validation {len(val)}; "
          f"labels cast to uint8: {report['label_cast']}; empty labels kept: {len(report.get('empty_label', []))}")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(__doc__.split("\n")[0], DATASET_ID)
    args = parser.parse_args(argv)
    run_conversion(parser, lambda: convert_hippocampus(args.input_folder, args.dataset_id, args.overwrite))


if __name__ == "__main__":
    main()

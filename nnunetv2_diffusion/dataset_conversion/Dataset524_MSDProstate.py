"""MSD Task05 Prostate -> nnU-Net raw ``Dataset524_MSDProstate`` (3D MR, 2 channels T2 / ADC, labels PZ / TZ).

Source layout (Medical Segmentation Decathlon ``Task05_Prostate.tar``, http://medicaldecathlon.com/; Antonelli et al.,
Nat. Commun. 13:4128, 2022, doi:10.1038/s41467-022-30695-9; CC BY-SA 4.0)::

    dataset.json                  "modality" {"0": "T2", "1": "ADC"}, "labels" {"0": "background", "1": "PZ",
                                  "2": "TZ"}, "training" [{"image": "./imagesTr/prostate_XX.nii.gz", "label": ...}],
                                  "test" ["./imagesTs/prostate_XX.nii.gz", ...]
    imagesTr/prostate_XX.nii.gz   4D NIfTI (x, y, z, 2): modality last, channel 0 T2, channel 1 ADC (32 cases)
    labelsTr/prostate_XX.nii.gz   3D, 0 background, 1 peripheral zone (PZ), 2 transition zone (TZ)
    imagesTs/prostate_XX.nii.gz   4D, unlabelled (16 cases)

Each 4D image is split into ``_0000`` (T2) and ``_0001`` (ADC) 3D files on the label's grid (the 4D image's first
three axes; its 4th spacing/origin/direction row is dropped). Hidden ``._*`` files of the MSD tar are ignored. Without
dataset.json the folders are listed and the names above are used. A 4D image with another number of channels than
dataset.json's "modality" (2) raises: that is a missing modality.

Split. MSD's own: its 32 labelled cases -> imagesTr/labelsTr, its 16 unlabelled test images -> imagesTs. No
splits_final.json (one scan per patient; nnU-Net's 5-fold cross-validation applies).
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from nnunetv2_diffusion.dataset_conversion._common import (
    REPORT_FILE,
    DatasetConversionError,
    Geometry,
    RawDatasetWriter,
    build_parser,
    check_image_intensities,
    check_same_grid,
    checked_label_array,
    image_like,
    read_image,
    read_source_json,
    read_voxels,
    require_dir,
    run_conversion,
    summarise_flags,
    visible_files,
)

DATASET_ID = 524
DATASET_NAME = "MSDProstate"
CHANNELS = {"0": "T2", "1": "ADC"}
LABELS = {"background": 0, "PZ": 1, "TZ": 2}
CITATION = ("M. Antonelli, A. Reinke, S. Bakas, et al. The Medical Segmentation Decathlon. Nature Communications 13, "
            "4128 (2022). doi:10.1038/s41467-022-30695-9")


def split_4d(image: sitk.Image, num_channels: int, case: str) -> tuple[list[np.ndarray], Geometry]:
    """Channel arrays ((z, y, x) each) of an MSD 4D image with modality last, and their 3D grid."""
    found = {3: 1, 4: image.GetSize()[-1]}.get(image.GetDimension())  # a 3D file holds one modality
    if found is None or image.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetConversionError(case, f"image is {image.GetDimension()}D with "
                                           f"{image.GetNumberOfComponentsPerPixel()} components per voxel, expected "
                                           f"4D with the {num_channels} modalities on the last axis")
    if found != num_channels:
        raise DatasetConversionError(case, f"image has {found} modalities, expected {num_channels} "
                                           f"({', '.join(CHANNELS.values())}) on the last axis")
    direction = np.array(image.GetDirection()).reshape(4, 4)[:3, :3]
    geometry = Geometry(tuple(image.GetSize()[:3]), tuple(image.GetSpacing()[:3]), tuple(image.GetOrigin()[:3]),
                        tuple(direction.ravel()))
    array = sitk.GetArrayFromImage(image)  # (channel, z, y, x)
    return [array[c] for c in range(num_channels)], geometry


def read_source_index(source_folder: str) -> tuple[list[str], list[str], dict, dict]:
    """(training cases, test cases, channel names, labels) from dataset.json or, without it, the folders."""
    path = os.path.join(source_folder, "dataset.json")
    list_dir = os.path.join(source_folder, "imagesTs")
    if not os.path.isfile(path):
        train = [f[:-len(".nii.gz")] for f in visible_files(os.path.join(source_folder, "imagesTr"), ".nii.gz")]
        test = [f[:-len(".nii.gz")] for f in visible_files(list_dir, ".nii.gz")] if os.path.isdir(list_dir) else []
        return train, test, dict(CHANNELS), dict(LABELS)
    meta = read_source_json(path, ("training",))

    def stem(entry) -> str:
        return os.path.basename(entry["image"] if isinstance(entry, dict) else entry)[:-len(".nii.gz")]

    channels = {str(k): v for k, v in meta.get("modality", CHANNELS).items()}
    labels = {v: int(k) for k, v in meta.get("labels", {v: k for k, v in LABELS.items()}).items()}
    if sorted(labels.values()) != list(range(len(labels))):
        raise DatasetConversionError("dataset.json", f"labels {meta.get('labels')} are not consecutive from 0")
    return sorted(stem(e) for e in meta["training"]), sorted(stem(e) for e in meta.get("test", [])), channels, labels


def convert_msd_prostate(source_folder: str, dataset_id: int = DATASET_ID, overwrite: bool = False, *,
                         raw_root: str | None = None, preprocessed_root: str | None = None) -> str:
    """Convert ``Task05_Prostate`` in ``source_folder`` (see module docstring); returns the dataset folder."""
    require_dir(os.path.join(source_folder, "imagesTr"), "MSD imagesTr folder")
    require_dir(os.path.join(source_folder, "labelsTr"), "MSD labelsTr folder")
    train, test, channels, labels = read_source_index(source_folder)
    if not train:
        raise FileNotFoundError(f"no training cases in {source_folder}")

    flags = {}
    with RawDatasetWriter(dataset_id, DATASET_NAME, ".nii.gz", overwrite=overwrite, raw_root=raw_root,
                          preprocessed_root=preprocessed_root) as writer:
        for case in train + test:
            is_test = case in test
            image_file = os.path.join(source_folder, "imagesTs" if is_test else "imagesTr", f"{case}.nii.gz")
            arrays, geometry = split_4d(read_image(image_file, case), len(channels), case)
            flags[case] = {"label_cast": False, "label_geometry_copied": False, "empty_label": False}
            if not is_test:
                label = read_image(os.path.join(source_folder, "labelsTr", f"{case}.nii.gz"), case)
                if label.GetDimension() != 3:
                    raise DatasetConversionError(case, f"label is {label.GetDimension()}D, expected 3D")
                flags[case]["label_geometry_copied"] = check_same_grid(geometry, Geometry.of(label), case,
                                                                       "image and label")
                array, flags[case]["label_cast"] = checked_label_array(label, labels.values(), case)
                flags[case]["empty_label"] = not array.any()
                sitk.WriteImage(image_like(array, geometry), writer.label_path(case), useCompression=True)
            stored = read_voxels(image_file, case)  # SimpleITK reads NaN and inf in NIfTI as 0
            for channel, array in enumerate(arrays):
                check_image_intensities(stored[channel] if stored.ndim == 4 else stored, case,
                                        f"channel {channel} ({channels.get(str(channel))})")
                sitk.WriteImage(image_like(array, geometry), writer.image_path(case, channel, is_test),
                                useCompression=True)
        writer.write_dataset_json(channels, labels, citation=CITATION, reference="http://medicaldecathlon.com/",
                                  license="CC BY-SA 4.0",
                                  description="MSD Task05 Prostate; 4D images split into one file per modality")
        report = {"dataset": writer.name, "source": os.path.abspath(source_folder),
                  "num_cases": {"imagesTr": len(train), "imagesTs": len(test)}, **summarise_flags(flags)}
        writer.write_json(REPORT_FILE, report)
        folder = writer.finish()
    print(f"wrote {folder}: {len(train)} training / {len(test)} unlabelled test cases; empty labels kept: "
          f"{len(report.get('empty_label', []))}")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(__doc__.split("\n")[0], DATASET_ID)
    args = parser.parse_args(argv)
    run_conversion(parser, lambda: convert_msd_prostate(args.input_folder, args.dataset_id, args.overwrite))


if __name__ == "__main__":
    main()

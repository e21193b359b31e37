"""Writing predictions without half-written files: nnU-Net's export into a temporary name, then a rename.

Every file lands under ``<output folder>/.partial/`` first and is moved to its final name with ``os.replace``
(atomic on one file system) only once complete, so an interrupted run leaves finished files and a ``.partial``
folder, never a truncated ``case.nii.gz`` or ``case.npz`` that ``--continue_prediction``, ``nnUNetv2_ensemble`` or
an evaluation would take for a result. The functions here run in nnU-Net's spawn export workers, so they are
module-level and take only picklable arguments.
"""

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator

import nibabel
import numpy as np
import SimpleITK as sitk
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
from nnunetv2.imageio.nibabel_reader_writer import NibabelIO, NibabelIOWithReorient
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.inference.export_prediction import (
    export_prediction_from_logits,
)

PARTIAL_FOLDER = ".partial"


@contextlib.contextmanager
def temporary_name(output_file_truncated: str) -> Iterator[str]:
    """A unique temporary path (no file ending) in the ``.partial`` folder next to ``output_file_truncated``, for
    the block's duration. A marker file kept there meanwhile makes the folder non-empty, so another process writing
    into the same output folder (the parts of a ``-num_parts`` split) cannot remove it under this writer; when the
    block ends, the marker and whatever is still at the temporary path (an export that failed) are removed."""
    folder = os.path.join(os.path.dirname(os.path.abspath(output_file_truncated)), PARTIAL_FOLDER)
    prefix = f"{os.path.basename(output_file_truncated)}.{uuid.uuid4().hex[:12]}"
    while True:
        os.makedirs(folder, exist_ok=True)
        try:
            open(os.path.join(folder, prefix + ".writing"), "x").close()
            break
        except FileNotFoundError:  # another process removed the empty folder between the two calls
            continue
    try:
        yield os.path.join(folder, prefix)
    finally:
        for name in os.listdir(folder):
            if name.startswith(prefix + "."):
                os.remove(os.path.join(folder, name))


def write_atomically(path: str, write: Callable[[str], None]) -> str:
    """``write(temporary)`` to a temporary file under ``.partial`` whose name ends like ``path`` (writers choose the
    format from the ending), then renamed to ``path``; returns ``path``."""
    with temporary_name(path) as temporary:
        staged = f"{temporary}.{os.path.basename(path)}"
        write(staged)
        os.replace(staged, path)
    return path


def remove_partial_folder(output_folder: str) -> None:
    """Removes ``<output_folder>/.partial`` if it is empty (it is not while a writer holds a temporary name, nor
    after an interrupted export)."""
    try:
        os.rmdir(os.path.join(output_folder, PARTIAL_FOLDER))
    except OSError:
        pass


def export_prediction_atomically(log_probabilities: np.ndarray, properties: dict, configuration_manager,
                                 plans_manager, dataset_json: dict, output_file_truncated: str,
                                 save_probabilities: bool = False) -> None:
    """nnU-Net's ``export_prediction_from_logits`` (resampling, un-cropping, segmentation, optional ``.npz``/``.pkl``)
    written under a temporary name and renamed when complete; the segmentation is renamed last, so its presence
    means the case is done (what ``--continue_prediction`` checks).

    log_probabilities: (C, *preprocessed shape) float32, handed to nnU-Net as its "logits" (softmax(log p) = p).
    """
    suffixes = [".npz", ".pkl"] if save_probabilities else []
    with temporary_name(output_file_truncated) as temporary:
        export_prediction_from_logits(log_probabilities, properties, configuration_manager, plans_manager,
                                      dataset_json, temporary, save_probabilities)
        for suffix in [*suffixes, dataset_json["file_ending"]]:
            os.replace(temporary + suffix, output_file_truncated + suffix)


def write_float_image(array: np.ndarray, output_file_truncated: str, file_ending: str, properties: dict,
                      reader_writer) -> str:
    """Writes a float32 map in the geometry of the input image, atomically; returns the path written.

    nnU-Net's ``write_seg`` casts to uint8/uint16, so float maps need their own writer. The geometry handling
    follows the dataset's reader/writer: SimpleITK-based ones (spacing, origin, direction, and the original
    orientation for ``SimpleITKIOWithReorient``) and nibabel-based ones (the original affine, re-orientation for
    ``NibabelIOWithReorient``). Other readers/writers (PNG, TIFF) get ``<name>.npz`` with the array under ``"map"``.

    array: the map in the layout ``write_seg`` takes for a segmentation of this case: (x, y, z) after nnU-Net's
        transpose_backward, 2D images as (1, x, y).
    """
    array = np.asarray(array, dtype=np.float32)
    if isinstance(reader_writer, SimpleITKIO):
        ending = file_ending
        sitk_stuff = properties["sitk_stuff"]
        image = sitk.GetImageFromArray(array[0] if len(sitk_stuff["spacing"]) == 2 else array)
        image.SetSpacing(sitk_stuff["spacing"])
        image.SetOrigin(sitk_stuff["origin"])
        image.SetDirection(sitk_stuff["direction"])
        if "original_orientation" in sitk_stuff:  # SimpleITKIOWithReorient
            image = sitk.DICOMOrient(image, sitk_stuff["original_orientation"])

        def write(path):
            sitk.WriteImage(image, path, True)
    elif isinstance(reader_writer, (NibabelIO, NibabelIOWithReorient)):
        ending = file_ending
        nib_stuff = properties["nibabel_stuff"]
        data = array.transpose((2, 1, 0))
        if isinstance(reader_writer, NibabelIOWithReorient):
            image = nibabel.Nifti1Image(data, affine=nib_stuff["reoriented_affine"])
            from_canonical = ornt_transform(axcodes2ornt("RAS"), io_orientation(nib_stuff["original_affine"]))
            image = image.as_reoriented(from_canonical)
        else:
            image = nibabel.Nifti1Image(data, affine=nib_stuff["original_affine"])

        def write(path):
            nibabel.save(image, path)
    else:
        ending = ".npz"

        def write(path):
            np.savez_compressed(path, map=array)
    return write_atomically(output_file_truncated + ending, write)

"""Conversion of public datasets into nnU-Net v2 raw datasets (one ``DatasetXXX_Name.py`` module per dataset).

Each module reads one documented source layout, checks every case (missing or unreadable files, label values,
image/label geometry, NaN/inf or constant images; empty labels are kept and counted in the report), writes
``nnUNet_raw/DatasetXXX_Name`` (``dataset.json``, ``imagesTr``, ``labelsTr``, ``imagesTs``, ``labelsTs``,
``conversion_report.json``) and, where subjects repeat or the paper fixes a split,
``nnUNet_preprocessed/DatasetXXX_Name/splits_final.json``. Run one as
``python -m nnunetv2_diffusion.dataset_conversion.Dataset520_HC18 -i <source folder>``.

| id  | module                    | data                                            |
|-----|---------------------------|-------------------------------------------------|
| 520 | Dataset520_HC18           | HC18 fetal head ultrasound (2D, shipped subset)  |
| 521 | Dataset521_MuscleUS       | transverse muscle ultrasound (2D)                |
| 522 | Dataset522_AMOS2022       | AMOS 2022 abdominal CT, 15 organs (3D)           |
| 523 | Dataset523_PelvicMR       | male pelvic T2 MR, 8 structures (3D)             |
| 524 | Dataset524_MSDProstate    | MSD Task05 prostate, T2 + ADC (3D)               |
| 525 | Dataset525_BraTS2021      | BraTS 2021, region-based (3D)                    |
| 526 | Dataset525_BraTS2021      | BraTS 2021, binary whole tumour (3D)             |
| 527 | Dataset527_Hippocampus    | MSD Task04 hippocampus (3D, shipped subset)      |
"""

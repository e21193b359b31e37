"""-num_parts / -part_id: two processes, each predicting its part of a folder, write exactly what one process writes,
on nnU-Net's in-process path (-npp 0 -nps 0, whose stock counterpart drops the parts) and with worker processes."""

import filecmp
import os
import subprocess
import sys

import numpy as np
import pytest
from inference_fixtures import write_model_folder, write_raw_case

from nnunetv2_diffusion.training import nnUNetTrainerDiffRecycle_10iters


@pytest.mark.parametrize("processes", ["0", "1"])
def test_two_parts_in_two_processes_write_the_files_of_one_process(nnunet_env, tmp_path, processes):
    write_model_folder(nnunet_env["nnUNet_results"], nnUNetTrainerDiffRecycle_10iters)
    for index in range(5):
        write_raw_case(tmp_path / "in", f"case{index}", (36 + 4 * index, 40), seed=index)
    command = [os.path.join(os.path.dirname(sys.executable), "nnUNetv2_predict_diffusion"), "-i", str(tmp_path / "in"),
               "-d", "999", "-c", "2d", "-f", "0", "-tr", nnUNetTrainerDiffRecycle_10iters.__name__, "-device", "cpu",
               "-npp", processes, "-nps", processes, "--steps", "3", "--save_probabilities", "--disable_progress_bar"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parts = [subprocess.Popen([*command, "-o", str(tmp_path / f"part{part}"), "-num_parts", "2", "-part_id", str(part)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for part in (0, 1)]
    whole = subprocess.run([*command, "-o", str(tmp_path / "whole")], env=env, capture_output=True, timeout=600)
    for process in parts:
        assert process.wait(timeout=600) == 0, process.stderr.read()[-2000:]
    assert whole.returncode == 0, whole.stderr[-2000:]
    outputs = sorted(name for name in os.listdir(tmp_path / "whole") if name.startswith("case"))
    assert len(outputs) == 15  # segmentation, probabilities and properties of each case
    written = [sorted(n for n in os.listdir(tmp_path / f"part{part}") if n.startswith("case")) for part in (0, 1)]
    # nnU-Net's selection, cases[part_id::num_parts]: each part writes only its own cases
    assert {name.split(".")[0] for name in written[0]} == {"case0", "case2", "case4"}
    assert {name.split(".")[0] for name in written[1]} == {"case1", "case3"}
    assert sorted(written[0] + written[1]) == outputs
    for part, names in enumerate(written):
        files = [name for name in names if not name.endswith(".npz")]
        match, mismatch, errors = filecmp.cmpfiles(tmp_path / "whole", tmp_path / f"part{part}", files, shallow=False)
        assert mismatch == [] and errors == [] and len(match) == len(files)
        for name in set(names) - set(files):  # zip archives carry their writing time: compare what they hold
            whole, split = np.load(tmp_path / "whole" / name), np.load(tmp_path / f"part{part}" / name)
            assert whole.files == split.files and all(np.array_equal(whole[k], split[k]) for k in whole.files)

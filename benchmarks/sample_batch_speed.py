"""Seconds per case of K diffusion samples run one after the other (--sample_batch 1) and together (--sample_batch K),
measured side by side on the same preprocessed cases, rounds alternating, for K = 1, 4, 8.

    .venv/bin/python benchmarks/sample_batch_speed.py -m <diffusion model folder> -i <imagesTs> --cases 5 [--name N]

Writes docs/results/sample_batch_speed[_N].json (per K: seconds per case of each form, their ratio, per round).
"""

import argparse
import glob
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_protocol import REPO, log  # noqa: E402

from nnunetv2_diffusion.inference.predictor import nnUNetDiffusionPredictor  # noqa: E402


def preprocessed_cases(predictor: nnUNetDiffusionPredictor, images: str, count: int) -> list[torch.Tensor]:
    ending = predictor.dataset_json["file_ending"]
    files = sorted(glob.glob(os.path.join(images, f"*_0000{ending}")))[:count]
    items = predictor._preprocess_in_process([[f] for f in files], None, None)
    return [item["data"] for item in items]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", required=True, help="diffusion model folder")
    parser.add_argument("-i", required=True, help="folder of input images (<case>_0000<ending>)")
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default=None, help="suffix of the result file, e.g. the dataset")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    results = {"model": os.path.abspath(args.m), "cases": args.cases, "device": args.device,
               "threads": torch.get_num_threads(), "samples": {}}
    for k in (1, 4, 8):
        timings = {1: [], k: []}
        predictors = {}
        for batch in timings:
            predictors[batch] = nnUNetDiffusionPredictor(device=torch.device(args.device), allow_tqdm=False,
                                                         use_mirroring=False, num_samples=k, sample_batch=batch)
            predictors[batch].initialize_from_trained_model_folder(args.m, (0,))
        cases = preprocessed_cases(predictors[1], args.i, args.cases)
        for round_index in range(args.rounds):
            order = list(timings) if round_index % 2 == 0 else list(timings)[::-1]
            for batch in order:
                start = time.perf_counter()
                for data in cases:
                    predictors[batch].predict_case(data)
                timings[batch].append((time.perf_counter() - start) / len(cases))
        sequential, together = min(timings[1]), min(timings[k])
        results["samples"][str(k)] = {"seconds_per_case_sequential": sequential,
                                      "seconds_per_case_batched": together,
                                      "speedup_batched": sequential / together,
                                      "rounds": {str(b): t for b, t in timings.items()}}
        log(f"K={k}: sequential {sequential:.2f} s/case, batched {together:.2f} s/case "
            f"({sequential / together:.2f}x)")
    path = os.path.join(REPO, "docs", "results", f"sample_batch_speed{'_' + args.name if args.name else ''}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()

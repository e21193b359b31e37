"""Cost of global-step diffusion inference relative to stock nnU-Net inference on the same cases.

Time ratio = (time of a ``steps``-step diffusion prediction) / (``steps`` x time of a stock nnU-Net prediction), same
cases, plans, tile step and test-time mirroring; 1.0 means the sampler adds nothing over its network calls (target
<= 1.05). Memory ratio = peak memory of the diffusion prediction / that of the stock one (target <= 1.2), measured as
the increase over the memory held before the call, so what both share (libraries, weights, the input) cancels: on a
GPU ``torch.cuda.max_memory_allocated``; on the CPU the bytes glibc's malloc has handed out (``mallinfo2``: in-use
heap + mmapped chunks, exact and free of the allocator's caching, unlike the resident set size), sampled every
0.5 ms; without glibc >= 2.33 the resident set size instead.

Both predictors live in one process and run each case side by side (order alternating per round); the median over
rounds is reported, so drifts of a shared machine hit both alike. Both call ``predict_logits_from_preprocessed_data``
on the same preprocessed tensors, so preprocessing and export (identical for both) are left out.

    # synthetic data (default): random weights, nnU-Net-like 2D plans, 256 x 256 cases
    python benchmarks/inference_speed.py --device cpu --threads 1
    python benchmarks/inference_speed.py --dim 3 --shape 80 80 80 --patch 48 48 48 --tta off
    # a trained pair: diffusion and stock model folders, raw images of the dataset
    python benchmarks/inference_speed.py --diffusion_model DIFF_FOLDER --stock_model STOCK_FOLDER -i imagesTs

Prints a markdown table and writes docs/results/inference_speed.json (``-o`` to change).
"""

import argparse
import copy
import ctypes
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time

os.environ.setdefault("nnUNet_compile", "f")
for _folder in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    os.environ.setdefault(_folder, tempfile.gettempdir())  # nnU-Net reads these at import; nothing is written there

import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME_TARGET, MEMORY_TARGET = 1.05, 1.2


def synthetic_plans(dim: int, patch: list[int], num_classes: int) -> tuple[dict, dict]:
    """Plans shaped like nnU-Net's defaults for this patch (PlainConvUNet, 32 features doubling to 512 in 2D / 320
    in 3D, stride-2 stages down to ~4 voxels), with single-channel z-scored input and ``num_classes`` labels."""
    n_stages = 1
    while min(p // 2 ** n_stages for p in patch) >= 4 and n_stages < (7 if dim == 2 else 6):
        n_stages += 1
    cap = 512 if dim == 2 else 320
    conv = "torch.nn.modules.conv.Conv2d" if dim == 2 else "torch.nn.modules.conv.Conv3d"
    norm = "torch.nn.modules.instancenorm.InstanceNorm2d" if dim == 2 else \
        "torch.nn.modules.instancenorm.InstanceNorm3d"
    architecture = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n_stages, "features_per_stage": [min(32 * 2 ** i, cap) for i in range(n_stages)],
            "conv_op": conv, "kernel_sizes": [[3] * dim] * n_stages,
            "strides": [[1] * dim] + [[2] * dim] * (n_stages - 1), "n_conv_per_stage": [2] * n_stages,
            "n_conv_per_stage_decoder": [2] * (n_stages - 1), "conv_bias": True, "norm_op": norm,
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    name = "2d" if dim == 2 else "3d_fullres"
    resampling = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    plans = {
        "dataset_name": "Dataset000_Benchmark", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "original_median_shape_after_transp": [1, *patch],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {name: {
            "data_identifier": f"nnUNetPlans_{name}", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": list(patch), "median_image_size_in_voxels": list(patch), "spacing": [1.0] * dim,
            "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {**resampling, "order": 3},
            "resampling_fn_seg_kwargs": {**resampling, "is_seg": True},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": resampling, "architecture": architecture, "batch_dice": True,
        }},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"max": 1.0, "mean": 0.0, "median": 0.0, "min": -1.0,
                                                              "percentile_00_5": -1.0, "percentile_99_5": 1.0,
                                                              "std": 1.0}},
    }
    dataset_json = {"channel_names": {"0": "image"}, "file_ending": ".nii.gz", "numTraining": 1,
                    "labels": {"background": 0, **{f"class{k}": k for k in range(1, num_classes)}}}
    return plans, dataset_json


def synthetic_pair(args, device: torch.device, use_mirroring: bool):
    """(stock predictor, diffusion predictor, cases, description) with random weights on synthetic plans."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_diffusion.inference.predictor import nnUNetDiffusionPredictor
    from nnunetv2_diffusion.training import nnUNetTrainerDiff

    plans, dataset_json = synthetic_plans(args.dim, args.patch, args.classes)
    plans_manager = PlansManager(copy.deepcopy(plans))
    configuration = plans_manager.get_configuration("2d" if args.dim == 2 else "3d_fullres")
    mirror_axes = tuple(range(args.dim))
    torch.manual_seed(0)
    predictors = []
    for trainer, predictor_class, kwargs in ((nnUNetTrainer, nnUNetPredictor, {}),
                                             (nnUNetTrainerDiff, nnUNetDiffusionPredictor, {"steps": args.steps})):
        network = trainer.build_network_architecture(plans_manager, configuration, 1, args.classes, False)
        predictor = predictor_class(tile_step_size=0.5, use_mirroring=use_mirroring, device=device,
                                    allow_tqdm=False, **kwargs)
        predictor.manual_initialization(network, plans_manager, configuration, [network.state_dict()], dataset_json,
                                        trainer.__name__, mirror_axes)
        predictors.append(predictor)
    generator = torch.Generator().manual_seed(1)
    shape = (1, 1, *args.shape) if args.dim == 2 else (1, *args.shape)
    cases = [torch.randn(shape, generator=generator) for _ in range(args.cases)]
    arch = configuration.network_arch_init_kwargs
    description = (f"synthetic {args.dim}D, {args.cases} case(s) of {' x '.join(map(str, args.shape))}, patch "
                   f"{' x '.join(map(str, args.patch))}, PlainConvUNet {arch['n_stages']} stages "
                   f"{arch['features_per_stage'][0]}-{arch['features_per_stage'][-1]} features, {args.classes} "
                   f"classes, random weights")
    return predictors[0], predictors[1], cases, description


def model_pair(args, device: torch.device, use_mirroring: bool):
    """(stock predictor, diffusion predictor, preprocessed cases, description) from trained model folders."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    from nnunetv2_diffusion.inference.predictor import nnUNetDiffusionPredictor

    diffusion = nnUNetDiffusionPredictor(tile_step_size=0.5, use_mirroring=use_mirroring, device=device,
                                         allow_tqdm=False, steps=args.steps)
    diffusion.initialize_from_trained_model_folder(args.diffusion_model, args.folds)
    stock = nnUNetPredictor(tile_step_size=0.5, use_mirroring=use_mirroring, device=device, allow_tqdm=False)
    stock.initialize_from_trained_model_folder(args.stock_model, args.folds)
    files = create_lists_from_splitted_dataset_folder(args.input, diffusion.dataset_json["file_ending"])[:args.cases]
    cases = [item["data"] for item in diffusion._preprocess_in_process(files, None, None)]
    description = f"{args.diffusion_model} vs {args.stock_model}, {len(cases)} case(s) from {args.input}"
    return stock, diffusion, cases, description


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_in_use_function():
    """bytes currently allocated through malloc (all arenas + mmapped chunks), or None without glibc >= 2.33."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None

    def in_use() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd
    return in_use


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory above the level at entry, in MiB: CUDA allocations on a GPU, malloc'd bytes (or the resident set
    size) on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib = 0.0
        self._bytes = _heap_in_use_function() or _rss_bytes
        self.method = "cuda max_memory_allocated" if device.type == "cuda" else \
            ("glibc mallinfo2 in-use bytes" if self._bytes is not _rss_bytes else "resident set size")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        self._start, self._peak, self._stop = self._bytes(), 0, threading.Event()

        def sample():
            while not self._stop.is_set():
                self._peak = max(self._peak, self._bytes())
                time.sleep(0.0005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = (torch.cuda.max_memory_allocated() - self._start) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mib = (max(self._peak, self._bytes()) - self._start) / 2**20


def timed(predictor, cases, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for case in cases:
        predictor.predict_logits_from_preprocessed_data(case)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(args, device: torch.device, use_mirroring: bool) -> dict:
    make = model_pair if args.diffusion_model else synthetic_pair
    stock, diffusion, cases, description = make(args, device, use_mirroring)
    steps = diffusion.sampler.num_inference_steps
    timed(stock, cases[:1], device), timed(diffusion, cases[:1], device)  # warm-up (allocator, kernels, caches)
    times = {"stock": [], "diffusion": []}
    for round_index in range(args.repeats):
        order = ("stock", "diffusion") if round_index % 2 == 0 else ("diffusion", "stock")
        for name in order:
            times[name].append(timed(stock if name == "stock" else diffusion, cases, device))
        print(f"  round {round_index + 1}/{args.repeats}: stock {times['stock'][-1]:.2f} s, "
              f"diffusion {times['diffusion'][-1]:.2f} s", flush=True)
    memory = {}
    for name, predictor in (("stock", stock), ("diffusion", diffusion)):
        with PeakMemory(device) as peak:
            timed(predictor, cases[:1], device)
        memory[name], memory_method = peak.peak_mib, peak.method
    stock_s, diffusion_s = statistics.median(times["stock"]), statistics.median(times["diffusion"])
    return {"description": description, "tta": use_mirroring, "steps": steps,
            "sampler": type(diffusion.sampler).__name__, "stock_s": stock_s, "diffusion_s": diffusion_s,
            "time_ratio": diffusion_s / (steps * stock_s),
            "stock_peak_mib": memory["stock"], "diffusion_peak_mib": memory["diffusion"],
            "memory_method": memory_method,
            "memory_ratio": memory["diffusion"] / memory["stock"] if memory["stock"] > 0 else float("nan"),
            "rounds": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--diffusion_model", help="trained diffusion model folder (with --stock_model and -i)")
    parser.add_argument("--stock_model", help="trained stock nnU-Net model folder, same dataset")
    parser.add_argument("-i", "--input", help="folder of raw images (nnU-Net naming) to predict")
    parser.add_argument("-f", "--folds", nargs="+", default=["0"], help="folds of both models. Default: 0")
    parser.add_argument("--dim", type=int, choices=(2, 3), default=2, help="synthetic: 2D or 3D. Default: 2")
    parser.add_argument("--shape", type=int, nargs="+", default=None, help="synthetic case size. Default: 256 x 256")
    parser.add_argument("--patch", type=int, nargs="+", default=None, help="synthetic patch size. Default: 128 x 128")
    parser.add_argument("--classes", type=int, default=3, help="synthetic: classes incl. background. Default: 3")
    parser.add_argument("--cases", type=int, default=1, help="number of cases. Default: 1")
    parser.add_argument("--steps", type=int, default=5, help="denoising steps. Default: 5")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported). Default: 3")
    parser.add_argument("--tta", choices=("both", "on", "off"), default="both", help="mirroring. Default: both")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads. Default: torch's")
    parser.add_argument("-o", "--output", default=os.path.join(REPO, "docs", "results", "inference_speed.json"))
    args = parser.parse_args()
    if args.diffusion_model and not (args.stock_model and args.input):
        parser.error("--diffusion_model needs --stock_model and -i")
    args.shape = args.shape or ([256, 256] if args.dim == 2 else [80, 80, 80])
    args.patch = args.patch or ([128, 128] if args.dim == 2 else [48, 48, 48])
    args.folds = [f if f == "all" else int(f) for f in args.folds]
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["nnUNet_def_n_proc"] = str(args.threads)  # the predictors cap their threads at this
    device = torch.device(args.device)

    results = []
    for use_mirroring in {"both": (False, True), "on": (True,), "off": (False,)}[args.tta]:
        print(f"mirroring {'on' if use_mirroring else 'off'}:", flush=True)
        results.append(measure(args, device, use_mirroring))

    environment = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
                   or platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "python": platform.python_version()}
    print(f"\n{results[0]['description']}; {results[0]['steps']} {results[0]['sampler']} steps; "
          f"{environment['device']}, {environment['threads']} thread(s)\n")
    print("| mirroring | stock (s) | diffusion (s) | time ratio (target <= 1.05) | stock peak (MiB) | "
          "diffusion peak (MiB) | memory ratio (target <= 1.2) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {'on' if r['tta'] else 'off'} | {r['stock_s']:.3f} | {r['diffusion_s']:.3f} | "
              f"{r['time_ratio']:.3f} | {r['stock_peak_mib']:.1f} | {r['diffusion_peak_mib']:.1f} | "
              f"{r['memory_ratio']:.2f} |")
    report = {"command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]), "environment": environment,
              "targets": {"time_ratio": TIME_TARGET, "memory_ratio": MEMORY_TARGET}, "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    temporary = f"{args.output}.partial-{os.getpid()}"
    with open(temporary, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(temporary, args.output)
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()

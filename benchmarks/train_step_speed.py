"""Compute cost of each diffusion training strategy relative to stock nnU-Net: seconds per training iteration and
peak memory, every trainer built on the same plans and fed the same batches.

Timing: all trainers live in one process; after a warm-up, each round times one ``train_step`` of every trainer
(round-robin, starting trainer rotated per round), and the median over rounds is reported, so drifts of a shared
machine hit all trainers alike. Memory: one subprocess per trainer runs a few steps and reports its peak resident
memory (and CUDA peak allocation on a GPU), so trainers do not share an allocator.

    # real plans: preprocessed dataset (only plans + dataset.json are read, no data is loaded)
    python benchmarks/train_step_speed.py -d 520 -c 2d --device cuda
    # fallback without a dataset: the unit tests' tiny synthetic plans
    python benchmarks/train_step_speed.py --tiny --device cpu

Prints a markdown table and writes docs/results/train_step_speed.json (``-o`` to change). torch.compile stays off
unless ``nnUNet_compile=t`` is set, for every trainer alike.
"""

import argparse
import atexit
import copy
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

# nnU-Net reads its folders at import time; the trainers write logs into nnUNet_results, keep those out of the way
os.environ["nnUNet_results"] = tempfile.mkdtemp(prefix="train_step_speed_")
atexit.register(shutil.rmtree, os.environ["nnUNet_results"], ignore_errors=True)
os.environ.setdefault("nnUNet_compile", "f")

import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TRAINERS = ["nnUNetTrainer", "nnUNetTrainerDiff", "nnUNetTrainerDiffSelfCond", "nnUNetTrainerDiffSelfCondNext",
                    "nnUNetTrainerDiffRecycleNext", "nnUNetTrainerDiffRecycle"]
TIME_TARGETS = {"standard": 1.05, "xt_recycling": 1.35, "xT_recycling": 1.35}  # s/iteration, x stock
MEMORY_TARGET = 1.10  # peak memory, x stock, every diffusion trainer


def load_plans(args) -> tuple[dict, dict, str]:
    """(plans, dataset_json, description) from a preprocessed dataset, or the unit tests' tiny plans."""
    if args.tiny:
        sys.path.insert(0, os.path.join(REPO, "tests"))
        from nnunet_fixtures import dataset_json, tiny_plans
        plans = tiny_plans(2, patch_size=tuple(args.tiny_patch))
        plans["configurations"]["2d"]["batch_size"] = args.tiny_batch
        return plans, dataset_json(), "tests' tiny synthetic plans (2d, 3-stage PlainConvUNet 8-32 features)"
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    folder = os.path.join(nnUNet_preprocessed, maybe_convert_to_dataset_name(args.dataset))
    with open(os.path.join(folder, f"{args.plans}.json")) as f:
        plans = json.load(f)
    with open(os.path.join(folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    return plans, dataset_json, f"{folder}/{args.plans}.json"


def find_trainer(name: str):
    import nnunetv2_diffusion.training as ours
    if hasattr(ours, name):
        return getattr(ours, name)
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    return recursive_find_trainer_class_by_name(name)


def build_trainer(name: str, plans: dict, configuration: str, dataset_json: dict, device: torch.device):
    """The trainer as ``initialize()`` leaves it (network, optimiser, loss), without the dataset loaders."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    plans = copy.deepcopy(plans)
    plans["continue_training"] = False  # nnU-Net's run_training adds this
    trainer = find_trainer(name)(plans, configuration, 0, dataset_json, device)
    trainer._set_batch_size_and_oversample()
    trainer.num_input_channels = determine_num_input_channels(trainer.plans_manager, trainer.configuration_manager,
                                                              dataset_json)
    trainer.network = trainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
        trainer.label_manager.num_segmentation_heads, trainer.enable_deep_supervision).to(device)
    if trainer._do_i_compile():
        trainer.network = torch.compile(trainer.network)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.loss = trainer._build_loss()
    trainer.was_initialized = True
    trainer.network.train()
    return trainer


def make_batches(trainer, count: int, seed: int = 0) -> list[dict]:
    """Random batches of the planned batch and patch size, as nnU-Net's loader gives them (CPU, label maps per
    deep-supervision scale). Same seed, same plans -> identical batches for every trainer."""
    generator = torch.Generator().manual_seed(seed)
    patch = list(trainer.configuration_manager.patch_size)
    num_classes = trainer.label_manager.num_segmentation_heads
    batches = []
    for _ in range(count):
        labels = torch.randint(0, num_classes, (trainer.batch_size, 1, *patch), generator=generator).float()
        data = torch.randn((trainer.batch_size, trainer.num_input_channels, *patch), generator=generator)
        target = labels
        if trainer.enable_deep_supervision:
            target = [labels] + [torch.nn.functional.interpolate(labels, size=[round(p * s) for p, s in
                                                                              zip(patch, scale, strict=True)])
                                 for scale in trainer._get_deep_supervision_scales()[1:]]
        batches.append({"data": data, "target": target})
    return batches


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_trainers(names, plans, configuration, dataset_json, device, warmup: int, rounds: int) -> dict:
    trainers = {name: build_trainer(name, plans, configuration, dataset_json, device) for name in names}
    batches = make_batches(next(iter(trainers.values())), count=4)
    times = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            batch = batches[round_index % len(batches)]
            _sync(device)
            start = time.perf_counter()
            trainers[name].train_step(batch)
            _sync(device)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def memory_worker(args) -> None:
    """Runs in its own process: build one trainer, run some steps, print its memory peaks as JSON."""
    import resource
    device = torch.device(args.device)
    plans, dataset_json, _ = load_plans(args)
    trainer = build_trainer(args.memory_worker, plans, args.configuration, dataset_json, device)
    batches = make_batches(trainer, count=2)
    rss_before = _proc_status_kib("VmRSS")
    try:  # reset the kernel's peak-RSS mark (VmHWM) so the training peak is not hidden by start-up
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        peak_was_reset = True
    except OSError:
        peak_was_reset = False
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.memory_steps):
        trainer.train_step(batches[i % 2])
    _sync(device)
    hwm = _proc_status_kib("VmHWM")
    if peak_was_reset and hwm is not None and rss_before is not None:
        result = {"peak_rss_mib": hwm / 1024, "training_rss_increase_mib": (hwm - rss_before) / 1024}
    else:  # no /proc: the lifetime peak, which includes start-up
        result = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        result["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["cuda_peak_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    print("MEMORY " + json.dumps(result))


def measure_memory(name: str, argv: list[str]) -> dict:
    command = [sys.executable, os.path.abspath(__file__), *argv, "--memory-worker", name]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in output.splitlines() if line.startswith("MEMORY "))[7:])


MEMORY_KEYS = {"cuda_peak_allocated_mib": "CUDA peak allocated", "peak_rss_mib": "peak RSS",
               "training_rss_increase_mib": "RSS increase while training"}


def add_ratios(results: dict, stock: str) -> None:
    """Adds memory ratios to stock and target verdicts ('ok' / 'over' / '' without a target) to every result."""
    for r in results.values():
        for key in MEMORY_KEYS:
            if key in r:
                r[key.replace("_mib", "_ratio")] = r[key] / results[stock][key]
        target = TIME_TARGETS.get(r["strategy"]) if results[stock]["strategy"] == "stock nnU-Net" else None
        r["time_target"] = target
        r["time_verdict"] = "" if target is None else ("ok" if r["time_ratio"] <= target else "over")
        main_memory = "cuda_peak_allocated_ratio" if "cuda_peak_allocated_ratio" in r else "peak_rss_ratio"
        if main_memory in r and r is not results[stock]:
            r["memory_verdict"] = "ok" if r[main_memory] <= MEMORY_TARGET else "over"


def markdown_table(results: dict) -> str:
    memory_keys = [k for k in MEMORY_KEYS if all(k in r for r in results.values())]
    header = ["trainer", "strategy", "s/iteration (median)", "× stock", "target"]
    for key in memory_keys:
        header += [f"{MEMORY_KEYS[key]} (MiB)", "× stock"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in results.items():
        target = "" if r["time_target"] is None else f"≤ {r['time_target']:.2f} {r['time_verdict']}"
        row = [name, r["strategy"], f"{r['median_s']:.4f}", f"{r['time_ratio']:.2f}", target]
        for key in memory_keys:
            row += [f"{r[key]:.0f}", f"{r[key.replace('_mib', '_ratio')]:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--dataset", help="dataset name or id in nnUNet_preprocessed (plans + dataset.json)")
    parser.add_argument("-p", "--plans", default="nnUNetPlans")
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("--tiny", action="store_true", help="use the unit tests' tiny plans instead of a dataset")
    parser.add_argument("--tiny-patch", type=int, nargs=2, default=[32, 32], help="patch size of the tiny plans")
    parser.add_argument("--tiny-batch", type=int, default=2, help="batch size of the tiny plans")
    parser.add_argument("--trainers", nargs="+", default=DEFAULT_TRAINERS, help="the first one is the reference")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("-o", "--output", default=os.path.join(REPO, "docs", "results", "train_step_speed.json"))
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.tiny and not args.dataset:
        parser.error("give -d DATASET (a preprocessed dataset's plans) or --tiny")
    if args.tiny:
        args.configuration = "2d"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_worker:
        memory_worker(args)
        return

    device = torch.device(args.device)
    plans, dataset_json, plans_source = load_plans(args)
    stock = args.trainers[0]
    times = time_trainers(args.trainers, plans, args.configuration, dataset_json, device, args.warmup, args.rounds)
    worker_argv = sys.argv[1:]
    results = {}
    for name in args.trainers:
        median = statistics.median(times[name])
        results[name] = {"strategy": getattr(find_trainer(name), "diffusion_strategy", "stock nnU-Net"),
                         "median_s": median, "time_ratio": median / statistics.median(times[stock]),
                         "all_s": times[name]}
        if not args.no_memory:
            results[name].update(measure_memory(name, worker_argv))
    add_ratios(results, stock)
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    configuration = PlansManager(plans).get_configuration(args.configuration)
    report = {
        "plans": plans_source, "configuration": args.configuration,
        "patch_size": list(configuration.patch_size), "batch_size": configuration.batch_size,
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "warmup": args.warmup, "rounds": args.rounds,
        "command": " ".join(["python benchmarks/train_step_speed.py", *sys.argv[1:]]),
        "time_targets": TIME_TARGETS, "memory_target": MEMORY_TARGET, "results": results,
    }
    table = markdown_table(results)
    print(f"\nplans: {plans_source}, configuration {args.configuration}, patch {report['patch_size']}, batch "
          f"{report['batch_size']}, device {report['device']} ({report['device_name']}), {args.rounds} rounds\n")
    print(table)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\nwritten: {args.output}")


if __name__ == "__main__":
    main()

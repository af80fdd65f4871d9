"""BbH at modern scale: training step and peak memory of the scalable layouts against MAP, measured in one run.

    python benchmarks/scale_step.py [--model resnet18] [--batch 32] [--layouts auto,chunked] [--rounds 3]
                                    [--repeats 5] [--no-memory]

A CIFAR ResNet-18 (11.2 M weights, :class:`bbh.models.ResNet18`) or ResNet-20 on synthetic 32x32 images:
MAP and BbH in each requested layout (``auto`` is what ``bbh.create("bbh", model)`` builds: ``rank1`` here)
run the Trainer's step (``benchmarks/train_step.py``) alternately; each round gives a median over
``--repeats`` steps and the printed ratio range is over the rounds. BbH: S = 5 samples per step, one in the
likelihood, its layout's default KL, Adam at its default lr. Peak memory: each method in a fresh process (its
peak resident set size after the steps, ``VmHWM``), so the ratio includes the interpreter and torch (~0.3 GB)
in both. Prints the CPU (``/proc/cpuinfo``), the threads and torch's version: absolute times
depend on the machine, the ratios are the numbers to compare, and they too move between CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import interleaved_medians, make_step  # noqa: E402

import bbh  # noqa: E402

MODELS = {"resnet18": {"name": "resnet18"}, "resnet20": {"name": "resnet20"}}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def build(model: str, method: str) -> bbh.Method:
    """MAP or ``bbh:<layout>`` on a fresh network."""
    net = bbh.models.build_model(MODELS[model], num_classes=10)
    if method == "map":
        return bbh.create("map", net)
    return bbh.create("bbh", net, layout=method.split(":", 1)[1])


def peak_memory(model: str, method: str, batch: int, steps: int, device: str) -> float:
    """Peak RSS in GB of a fresh process that builds ``method`` and runs ``steps`` training steps."""
    # The child reports VmHWM (its own peak RSS): Linux keeps ru_maxrss across fork + exec, so a child's
    # ru_maxrss would start at this (parent) process's peak.
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"import scale_step as s; step = s.make_step(s.build({model!r}, {method!r}), 'adam', {device!r}, "
            f"input_shape=(3, 32, 32), batch={batch}, num_data=50_000); [step() for _ in range({steps})]; "
            f"print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1]) * 1024 / 1e9  # VmHWM is in kB


def main() -> None:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18", choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--layouts", default="auto,chunked")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    args = parser.parse_args()
    torch.manual_seed(0)
    names = ["map", *[f"bbh:{layout.strip()}" for layout in args.layouts.split(",")]]
    methods, build_s = {}, {}
    for name in names:
        start = time.perf_counter()
        methods[name] = build(args.model, name)
        build_s[name] = time.perf_counter() - start
    main_params = sum(p.numel() for p in methods["map"].model.parameters())
    print(f"{args.model}, batch {args.batch}, device {args.device}, {cpu_name()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; main network {main_params:,} parameters")
    for name in names[1:]:
        method = methods[name]
        hyper = sum(p.numel() for p in method.parameters() if p.requires_grad) - sum(
            p.numel() for p in method.model.parameters() if p.requires_grad)
        print(f"  {name}: built in {build_s[name]:.1f} s as {method.size}; hypernet parameters {hyper:,} "
              f"({hyper / main_params:.2f}x the main network's)")
    steps = {name: make_step(m, "adam", args.device, input_shape=(3, 32, 32), batch=args.batch, num_data=50_000)
             for name, m in methods.items()}
    rounds = [interleaved_medians(steps, args.repeats, warmup=2 if r == 0 else 0) for r in range(args.rounds)]
    print(f"{'method':16s} {'step (median per round)':>36s} {'/ MAP (range over rounds)':>28s}")
    for name in names:
        ts = [r[name] for r in rounds]
        ratios = [r[name] / r["map"] for r in rounds]
        print(f"{name:16s} {', '.join(f'{t:.3f}' for t in ts):>34s} s {min(ratios):10.2f}x - {max(ratios):.2f}x")
    if not args.no_memory:
        peaks = {name: peak_memory(args.model, name, args.batch, 3, args.device) for name in names}
        print("peak resident memory (fresh process each, 3 steps): " + ", ".join(
            f"{name} {gb:.2f} GB ({gb / peaks['map']:.2f}x)" for name, gb in peaks.items()))
    print(json.dumps({"rounds": rounds}))


if __name__ == "__main__":
    main()

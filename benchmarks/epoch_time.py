"""Seconds per training epoch of every method on the paper's tasks, measured on a fraction of an epoch.

    python benchmarks/epoch_time.py --data-dir ../shared/data [--task mnist|cifar5|all] [--steps 10]

For each task (MNIST / LeNet-5, 550 steps per epoch; CIFAR-5 / ResNet-32, 250 steps per epoch; batch 100)
and each method with its shipped configuration (``bbh/experiments/configs``), times ``--steps`` training steps on real
minibatches (preprocessing included) after ``--warmup`` steps, with the methods interleaved step by step,
and extrapolates the median step to a full epoch. The ratio to MAP is measured in the same run. The
extrapolation is labelled as such: nothing here trains a whole epoch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import bbh
from bbh.core.elbo import schedule_from_spec
from bbh.data import load_task
from bbh.experiments.config import load_config
from bbh.experiments.run import build_model

METHODS = ("map", "mc-dropout", "ensemble", "bbb", "mnf", "bbh")
PAPER = {"map": 1.0, "mc-dropout": 1.7, "ensemble": 3.8, "bbb": 4.1, "mnf": 30.7, "bbh": 16.2}


def make_step(task, name: str, device: torch.device):
    config = load_config(f"{task.name}-{name}")
    torch.manual_seed(0)
    method = bbh.create(name, build_model(config["model"], task.num_classes), **config["method"])
    train = config["train"]
    trainer = bbh.Trainer(method, optimizer=train["optimizer"], lr=train["lr"], eps=train["eps"],
                          kl_anneal=schedule_from_spec(train["kl_anneal"]), device=device, progress=False)
    n = task.train_x.shape[0]
    steps_per_epoch = n // train["batch_size"]
    g = torch.Generator().manual_seed(0)

    def step() -> float:
        idx = torch.randint(0, n, (train["batch_size"],), generator=g)
        start = time.perf_counter()
        x = task.train_transform(task.train_x[idx].to(device))
        trainer.loss_step(x, task.train_y[idx].to(device), num_data=n, steps_per_epoch=steps_per_epoch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step, steps_per_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--task", default="all", choices=["mnist", "cifar5", "all"])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    methods = [m.strip() for m in args.methods.split(",")]
    methods = ["map", *[m for m in methods if m != "map"]]
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__}")
    for task_name in (["mnist", "cifar5"] if args.task == "all" else [args.task]):
        task = load_task(task_name, args.data_dir, download=False)
        steps = {}
        for m in methods:
            steps[m], per_epoch = make_step(task, m, device)
        for _ in range(args.warmup):
            for f in steps.values():
                f()
        times: dict[str, list[float]] = {m: [] for m in steps}
        for _ in range(args.steps):
            for m, f in steps.items():
                times[m].append(f())
        med = {m: statistics.median(t) for m, t in times.items()}
        print(f"\n{task_name}: {per_epoch} steps per epoch; median of {args.steps} steps, extrapolated to an epoch")
        print(f"{'method':12s} {'s/step':>8s} {'s/epoch (extrap.)':>18s} {'/ MAP':>7s} {'paper':>7s}")
        for m, t in med.items():
            print(f"{m:12s} {t:8.3f} {t * per_epoch:18.0f} {t / med['map']:6.1f}x {PAPER[m]:6.1f}x")


if __name__ == "__main__":
    main()

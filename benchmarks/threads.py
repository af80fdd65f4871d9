"""Threads = cores against 1 thread for the small networks of ``bbh toy`` and ``bbh uci``, idle and with one busy
competing process (issue 25, item 1; ``docs/threads.md``).

    python benchmarks/threads.py [--steps 150] [--cap 3.0] [--repeats 2]

Workloads, each a fixed number of training steps (``Trainer.loss_step``: the Trainer's step) after 5 untimed
warm-up steps, on a fresh method:

* ``toy bbh`` / ``toy mnf``: the default ``bbh toy`` settings of BbH and MNF (``toy_settings()``) on the toy's
  20 points and 1-100-1 network (full batch, as ``bbh toy``);
* ``uci bbh`` / ``uci map``: one ``bbh uci`` cell's step: the tuned BbH / MAP setting (``uci_settings()``) on a
  concrete-sized synthetic data set (927 training rows, 8 inputs, 50 hidden units), batch 32.

Each runs with ``torch.set_num_threads(cores)`` (torch's default: "before") and with 1 thread ("after"), first on
the machine as it is ("idle": other people's jobs are not stopped, the load average is printed) and then with one
process that this script starts spinning on a core ("busy"). A run stops after ``--steps`` steps or ``--cap``
seconds, whichever comes first, and reports milliseconds per step; the table gives the range over ``--repeats``
alternating repeats and the ratio cores / 1 thread (> 1: one thread is faster). About 2 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from bbh.core.threads import available_cores
from bbh.data.toy import make_toy_data
from bbh.experiments.costs import cpu_name
from bbh.experiments.toy import toy_settings
from bbh.experiments.uci import build_method, uci_settings
from bbh.models import MLP
from bbh.posteriors import create
from bbh.training.trainer import Trainer

Step = Callable[[], None]


def toy_step(name: str) -> Step:
    """One ``bbh toy`` training step of ``name`` (default settings, full batch of the 20 points)."""
    setting = toy_settings()[name]
    x, y = make_toy_data(seed=1)
    torch.manual_seed(0)
    method = create(setting.method, MLP(1, 1, hidden=(100,)), **setting.options)
    trainer = Trainer(method, optimizer=setting.optimizer, lr=setting.lr, eps=setting.eps,
                      kl_anneal=setting.kl_anneal, device="cpu", progress=False, handle_signals=False)

    def step() -> None:
        trainer.loss_step(x, y, setting.num_data, 1)

    return step


def uci_step(name: str, rows: int = 927, features: int = 8, hidden: int = 50, batch: int = 32) -> Step:
    """One step of a ``bbh uci`` cell of ``name`` on a concrete-sized synthetic data set (random minibatches)."""
    setting = uci_settings()[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, features, generator=g)
    y = (x[:, :1] * 0.7 + 0.3 * torch.randn(rows, 1, generator=g)).float()
    torch.manual_seed(0)
    method = build_method(setting, features, hidden)
    trainer = Trainer(method, optimizer="adam", lr=setting.lr, kl_anneal=setting.kl_weight, device="cpu",
                      progress=False, handle_signals=False)

    def step() -> None:
        idx = torch.randint(0, rows, (batch,), generator=g)
        trainer.loss_step(x[idx], y[idx], rows, rows // batch)

    return step


WORKLOADS: dict[str, Callable[[], Step]] = {
    "toy bbh": lambda: toy_step("bbh"), "toy mnf": lambda: toy_step("mnf"),
    "uci bbh": lambda: uci_step("bbh"), "uci map": lambda: uci_step("map")}


def ms_per_step(make: Callable[[], Step], threads: int, steps: int, cap: float) -> float:
    """Milliseconds per step of a fresh workload on ``threads`` threads (``steps`` steps or ``cap`` seconds)."""
    torch.set_num_threads(threads)
    step = make()
    for _ in range(5):
        step()
    done, start = 0, time.perf_counter()
    while done < steps and time.perf_counter() - start < cap:
        step()
        done += 1
    return 1000 * (time.perf_counter() - start) / done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--cap", type=float, default=3.0, help="seconds per measurement at most")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cores = available_cores()
    print(f"{cpu_name()}, {cores} cores for this process, torch {torch.__version__}; {args.steps} steps or "
          f"{args.cap:g} s per measurement, {args.repeats} repeats")
    began = time.perf_counter()
    times: dict[tuple[str, str, int], list[float]] = {}
    for load in ("idle", "busy"):
        competitor = (subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None)
        try:
            time.sleep(0.5)
            print(f"{load}: load average {os.getloadavg()[0]:.2f} at the start", flush=True)
            for _ in range(args.repeats):
                for threads in (cores, 1):
                    for name, make in WORKLOADS.items():
                        times.setdefault((load, name, threads), []).append(
                            ms_per_step(make, threads, args.steps, args.cap))
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
    print(f"\n{'load':5s} {'workload':9s} {f'{cores} threads ms/step':>20s} {'1 thread ms/step':>18s} "
          f"{'ratio':>11s}")
    for (load, name, threads), many in times.items():
        if threads != 1 or cores == 1:
            continue
        mine = times[load, name, cores]
        ratios = sorted(a / b for a, b in zip(mine, many))
        print(f"{load:5s} {name:9s} {min(mine):9.1f} - {max(mine):8.1f} {min(many):7.1f} - {max(many):8.1f} "
              f"{ratios[0]:5.2f}-{ratios[-1]:5.2f}")
    print(f"\n{time.perf_counter() - began:.0f} s in all; ratio = ms/step with {cores} threads / with 1 thread "
          f"(> 1: one thread is faster), per repeat")


if __name__ == "__main__":
    main()

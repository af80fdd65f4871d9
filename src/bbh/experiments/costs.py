"""What a training step of each ``bbh reproduce`` run costs: measured once at full size, stored, and read by
``bbh reproduce ... --plan`` to estimate the runs' time in seconds instead of minutes.

Why stored measurements and not a fresh measurement at every plan: the runs' step time is set by their full
size. A layer-wise hypernet on LeNet-5 or ResNet-32 has a 512 x ~450,000 output layer per network (~0.9 GB, with
its gradient and Adam's state ~3.5 GB) and takes 4-8 s to build on an idle 2-core Xeon, 10-40 s on a busy one
(its initialisation draws samples until their spread is right). Its step is not dominated by that layer nor by
the batch: on LeNet-5 (2-core Xeon) a step took 3.5 s with a 16-wide last hidden layer and 3.7 s with the
paper's 512 (busy), 0.52 s with a batch of 25 and 0.54 s with 100 (idle): the rest of the step, which neither
changes, dominates. So neither a narrower hypernet nor a smaller batch is a small probe that scales to it, and a
main network of reduced width is another network. Measuring every run at full size takes minutes and GBs: that
is ``--plan --measure``, done once per machine; a plan reads the result.

The measurement (:func:`measure`): the run's resolved configuration is built at full size and trained through
the one Trainer on synthetic images of the task's shape (no data set is read), at the run's batch size B and at
B / 4; a step's time is the median over ``steps`` timed steps after a warm-up step. The time of a step is taken
as affine in the batch size (:meth:`StepCost.seconds_per_step`): the parameter-side work of a step (drawing
weights, the KL estimate, the optimizer update) does not depend on the batch, the passes over the batch grow
linearly with it, so two batch sizes fix the line and other budgets' batch sizes (the smoke budget's 64) are read
off it. A deep ensemble's members are independent networks trained on the same batch, so its step time is
scaled by the number of members (the ``cpu`` budget's 5 against the paper's 10). The build and the first step
are the run's ``startup_seconds`` (AVB pre-trains its discriminator there).

Where the numbers come from (:func:`load_basis`), first that applies:

1. measurements of this machine (same device, CPU or GPU model, and thread count) in the user's file
   ``<cache>/step-costs.json`` (:func:`bbh.io.cache_dir`), written by ``--measure``;
2. the same for the file shipped with bbh (``bbh/experiments/step_costs.json``, measured on the CI machine);
3. on a CPU, the shipped CPU measurements scaled by this machine's speed: the cheapest run (:data:`PROBE_RUN`,
   MAP on LeNet-5) is timed here in about a second with the same protocol, and every stored time is multiplied
   by its time here over its stored time. One ratio for every run is a first-order correction (a run that is
   bound by memory bandwidth may scale differently from one bound by arithmetic), so the plan says so.

A configuration whose cost-relevant settings (:func:`cost_digest`: task, method, model, method options, data
preprocessing, optimizer and numerics; not the epochs, learning rates or seeds) differ from the stored one's is
not estimated from it: the plan says "changed" for that run (and "not measured" for a run with no measurement).
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.io import cache_dir, read_json_object, write_json

STORED_FILE = Path(__file__).with_name("step_costs.json")
"""The measurements shipped with bbh (made with ``bbh reproduce all --budget paper --plan --measure``)."""
USER_FILE = "step-costs.json"
"""The user's own measurements, in :func:`bbh.io.cache_dir`."""
PROBE_RUN = "mnist-map"
"""The run timed by every plan to compare this machine with the stored one (MAP on LeNet-5: ~0.1 s a step)."""

MAX_STEPS = 40
"""At most this many more steps are timed when a step is cheap (:func:`measure`'s ``min_seconds``)."""

_TASK_SHAPES = {"mnist": (10, (1, 28, 28)), "cifar5": (5, (3, 32, 32)), "cifar10": (10, (3, 32, 32))}
"""Classes and stored image shape ([C, H, W] uint8, before the pipeline) of each task (bbh.data.tasks)."""
_COST_KEYS = {"experiment": ("task", "method"), "data": ("preprocessing",),
              "train": ("optimizer", "factored_grads", "amp", "deterministic", "model_dtype", "clip_grad_norm")}
"""The settings besides ``[model]`` and ``[method]`` that change what a step costs."""


# ---------------------------------------------------------------------------------------------- the machine
@dataclass(frozen=True)
class Machine:
    """Where steps are timed: ``device`` (``cpu`` / ``cuda``), its model name, and torch's intra-op threads."""

    device: str
    name: str
    threads: int

    def same(self, other: Mapping[str, Any]) -> bool:
        return (other.get("device"), other.get("name"), other.get("threads")) == (self.device, self.name,
                                                                                  self.threads)

    def describe(self) -> str:
        return describe_machine({"device": self.device, "name": self.name, "threads": self.threads})


def describe_machine(m: Mapping[str, Any]) -> str:
    """``Intel(R) Xeon(R) Processor (cpu, 2 threads)``."""
    threads = m.get("threads")
    return f"{m.get('name')} ({m.get('device')}, {threads} thread{'' if threads == 1 else 's'})"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what :mod:`platform` knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def this_machine(device: torch.device | str) -> Machine:
    device = torch.device(device)
    if device.type == "cuda":
        return Machine("cuda", torch.cuda.get_device_name(device), torch.get_num_threads())
    return Machine(device.type, cpu_name() if device.type == "cpu" else device.type, torch.get_num_threads())


# ---------------------------------------------------------------------------------------------- one cost
def cost_digest(config: Mapping[str, Any]) -> str:
    """A short hash of the settings of a resolved configuration that change what its step costs (module
    docstring); the ensemble's ``members`` are left out (its cost is scaled by them)."""
    key: dict[str, Any] = {"model": dict(config["model"]),
                           "method": {k: v for k, v in config["method"].items() if k != "members"}}
    for table, names in _COST_KEYS.items():
        key[table] = {n: config.get(table, {}).get(n) for n in names}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StepCost:
    """Measured seconds of one training step at full size, at the batch sizes ``batches`` (ascending).

    Attributes:
        batches: the batch sizes timed.
        seconds: the median time of a step at each.
        startup_seconds: building the method and its first step, beyond a regular step.
        members: the ensemble's members when measured (None for other methods).
        digest: :func:`cost_digest` of the configuration measured.
        params: its parameter count (information).
    """

    batches: tuple[int, ...]
    seconds: tuple[float, ...]
    startup_seconds: float
    digest: str
    members: int | None = None
    params: int | None = None

    def seconds_per_step(self, batch: int, members: int | None = None) -> float:
        """The time of a step at ``batch`` (affine in the batch through the two measured points, never below the
        batch-independent part; one point: proportional) and ``members`` (proportional)."""
        if len(self.batches) == 1:
            t = self.seconds[0] * batch / self.batches[0]
        else:
            (b1, t1), (b2, t2) = (self.batches[0], self.seconds[0]), (self.batches[-1], self.seconds[-1])
            slope = max((t2 - t1) / (b2 - b1), 0.0)
            fixed = max(t1 - slope * b1, 0.0)
            t = fixed + slope * batch
        if members is not None and self.members:
            t *= members / self.members
        return t

    def record(self) -> dict[str, Any]:
        return {"batches": list(self.batches), "seconds": [round(s, 5) for s in self.seconds],
                "startup_seconds": round(self.startup_seconds, 3), "digest": self.digest, "members": self.members,
                "params": self.params}

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> StepCost:
        return cls(tuple(int(b) for b in r["batches"]), tuple(float(s) for s in r["seconds"]),
                   float(r.get("startup_seconds", 0.0)), str(r["digest"]), r.get("members"), r.get("params"))


def synthetic_task(config: Mapping[str, Any], n: int, seed: int = 0) -> Any:
    """A :class:`bbh.data.Task` of ``n`` random images and labels with the shapes and preprocessing of the
    configuration's task: what a step costs does not depend on the pixels, and no data set is read."""
    from ..data.tasks import Task

    name, preprocessing = config["experiment"]["task"], config.get("data", {}).get("preprocessing", "paper")
    classes, shape = _TASK_SHAPES[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    if name == "mnist":
        pipeline, input_shape = "mnist", shape
    else:
        size = 24 if preprocessing == "paper" else 32
        pipeline, input_shape = f"cifar-{preprocessing}", (3, size, size)
    return Task(name, classes, input_shape, x, y, x[:1], y[:1], preprocessing=preprocessing, pipeline=pipeline)


def _quiet() -> Any:
    """No progress lines from the Trainers of a measurement (the command line asks for them without a
    terminal)."""
    try:
        from ..training.progress import quiet
    except ImportError:  # pragma: no cover - older trees without plain progress lines
        import contextlib

        return contextlib.nullcontext()
    return quiet()


def _stamper(stamps: list[float]) -> Callable[[Mapping[str, Any]], None]:
    """A Trainer callback appending the time of every step's end to ``stamps``."""
    def stamp(record: Mapping[str, Any]) -> None:
        if record.get("event") == "step":
            stamps.append(time.perf_counter())
    return stamp


def measure(config: Mapping[str, Any], device: torch.device | str = "cpu", *, steps: int = 3,
            batches: tuple[int, ...] | None = None, min_seconds: float = 1.0) -> StepCost:
    """Time training steps of ``config`` built at full size on ``device`` (module docstring): at its batch size
    B and at B / 4, ``steps`` timed steps after one warm-up step each, on synthetic images; a cheap step is timed
    more often, until ``min_seconds`` are timed (at most :data:`MAX_STEPS`), so that its median is not one
    scheduler hiccup.

    Peak memory is the run's own: several GB for a layer-wise hypernet."""
    from ..models.registry import build_model
    from .run import config_trainer
    from .settings import MethodSetting

    device = torch.device(device)
    batch = int(config["train"]["batch_size"])
    batches = tuple(sorted(set(batches or (max(1, batch // 4), batch))))
    task = synthetic_task(config, max(batches) * (max(steps, MAX_STEPS) + 1))
    method_name = config["experiment"]["method"]
    with torch.random.fork_rng(devices=[]), _quiet():
        torch.manual_seed(0)
        start = time.perf_counter()
        method = MethodSetting.from_config(config).build(build_model(config["model"], task.num_classes))
        build = time.perf_counter() - start
        params = sum(p.numel() for p in method.parameters())

        def gaps(method: Any, b: int, n: int) -> list[float]:
            """Seconds from the start of fit to the first step's end, then of each further step."""
            trainer = config_trainer(dict(config), method, device, steps=n + 1, progress=False, handle_signals=False)
            stamps = [time.perf_counter()]
            trainer.callbacks.append(_stamper(stamps))
            m = b * (n + 1)
            trainer.fit((task.train_x[:m], task.train_y[:m]), batch_size=b, transform=task.train_transform)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return [t1 - t0 for t0, t1 in zip(stamps, stamps[1:])]

        seconds: dict[int, float] = {}
        first = 0.0
        for b in sorted(batches, reverse=True):  # the run's own batch first: its first step is the startup
            timed = gaps(method, b, steps)
            if b == max(batches):
                first = timed[0]
            timed = timed[1:]
            if sum(timed) < min_seconds:
                more = min(MAX_STEPS, math.ceil(min_seconds / max(statistics.median(timed), 1e-4)))
                timed += gaps(method, b, more)[1:]
            seconds[b] = statistics.median(timed)
        members = config["method"].get("members") if method_name == "ensemble" else None
        del method
        gc.collect()
    return StepCost(batches, tuple(seconds[b] for b in batches), build + max(first - seconds[max(batches)], 0.0),
                    cost_digest(config), members, params)


# ---------------------------------------------------------------------------------------------- stored
def _machines(path: Path) -> list[dict[str, Any]]:
    data = read_json_object(path) if path.is_file() else None
    machines = (data or {}).get("machines")
    return [m for m in machines if isinstance(m, dict) and isinstance(m.get("runs"), dict)] \
        if isinstance(machines, list) else []


def user_file() -> Path:
    return cache_dir(USER_FILE)


def store(path: Path, machine: Machine, runs: Mapping[str, StepCost], note: Mapping[str, Any] | None = None) -> Path:
    """Merge ``runs`` measured on ``machine`` into the file ``path`` (other machines' entries are kept)."""
    data = read_json_object(path) if path.is_file() else None
    machines = _machines(path) if data else []
    entry = next((m for m in machines if machine.same(m.get("machine", {}))), None)
    if entry is None:
        entry = {"machine": {"device": machine.device, "name": machine.name, "threads": machine.threads},
                 "runs": {}}
        machines.append(entry)
    entry["machine"].update({"torch": torch.__version__, "measured": time.strftime("%Y-%m-%d"), **(note or {})})
    entry["runs"].update({k: v.record() for k, v in runs.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"about": "seconds per training step of bbh reproduce's runs at full size, per machine "
                               "(bbh.experiments.costs; bbh reproduce NAME --budget paper --plan --measure)",
                      "machines": machines})
    return path


@dataclass
class Basis:
    """What a plan's estimates rest on: stored measurements (``runs``, from ``source``) of ``measured_on``,
    multiplied by ``ratio`` (this machine's probe time over the stored one; 1 on the machine measured), or
    nothing (``runs`` empty). ``lines`` say it in words; ``measured`` gathers what ``--measure`` adds."""

    machine: Machine
    runs: dict[str, StepCost] = field(default_factory=dict)
    source: Path | None = None
    measured_on: dict[str, Any] | None = None
    ratio: float = 1.0
    lines: list[str] = field(default_factory=list)
    measured: dict[str, StepCost] = field(default_factory=dict)

    def cost(self, run: str, config: Mapping[str, Any]) -> tuple[StepCost | None, float, str]:
        """``(cost, factor, basis)`` of ``run``: the stored cost if it was measured with this configuration, the
        factor to multiply its times by, and a word for the plan's column (``measured``, ``stored``,
        ``scaled``; ``not measured`` / ``changed`` with no cost)."""
        if run in self.measured:
            stored, factor, how = self.measured[run], 1.0, "measured"
        elif run in self.runs:
            stored, factor, how = self.runs[run], self.ratio, "stored" if self.ratio == 1.0 else "scaled"
        else:
            return None, 1.0, "not measured"
        if stored.digest != cost_digest(config):
            return None, 1.0, "changed"
        return stored, factor, how


def load_basis(device: torch.device | str, probe_config: Callable[[], Mapping[str, Any]] | None = None, *,
               files: tuple[Path, ...] | None = None) -> Basis:
    """The stored measurements that fit this machine (module docstring). ``probe_config()`` gives the resolved
    configuration of :data:`PROBE_RUN`, timed here when only another CPU's measurements exist."""
    machine = this_machine(device)
    files = files if files is not None else (user_file(), STORED_FILE)
    basis = Basis(machine)
    entries = [(path, m) for path in files for m in _machines(path)]
    exact = next(((p, m) for p, m in entries if machine.same(m.get("machine", {}))), None)
    if exact is not None:
        path, entry = exact
        basis.runs = {k: StepCost.from_record(v) for k, v in entry["runs"].items()}
        basis.source, basis.measured_on = path, dict(entry["machine"])
        basis.lines.append(f"estimates: training steps of each run measured at full size on this machine, "
                           f"{machine.describe()}, on {entry['machine'].get('measured', '?')} ({_where(path)})"
                           f"{_load(entry['machine'])}")
        return basis
    other = next(((p, m) for p, m in entries if m["machine"].get("device") == machine.device == "cpu"), None)
    if other is None:
        basis.lines.append(f"estimates: none: no stored measurements for {machine.describe()}; "
                           f"--measure times every run's steps at full size here (minutes per run, GBs of memory) "
                           f"and keeps them in {user_file()}")
        return basis
    path, entry = other
    runs = {k: StepCost.from_record(v) for k, v in entry["runs"].items()}
    basis.source, basis.measured_on = path, dict(entry["machine"])
    stored_probe = runs.get(PROBE_RUN)
    if stored_probe is None or probe_config is None:
        basis.lines.append(f"estimates: measured on {describe_machine(entry['machine'])} ({_where(path)}), not "
                           f"on this machine, {machine.describe()}, and used as they are")
        basis.runs = runs
        return basis
    config = probe_config()
    here = _probe(config, device, machine)
    there = stored_probe.seconds_per_step(int(config["train"]["batch_size"]))
    basis.ratio = here / there if there > 0 else 1.0
    basis.runs = runs
    basis.lines.append(f"estimates: training steps measured at full size on {describe_machine(entry['machine'])} "
                       f"on {entry['machine'].get('measured', '?')} ({_where(path)}){_load(entry['machine'])}, "
                       f"times {basis.ratio:.2f}: this machine, {machine.describe()}, took {here:.3f} s "
                       f"for a step of {PROBE_RUN} against {there:.3f} s there (one ratio for every run: a rough "
                       f"transfer; --measure times every run here)")
    return basis


_PROBES: dict[tuple[Machine, str], float] = {}
"""Probe times of this process, by machine and configuration: one probe per process."""


def _probe(config: Mapping[str, Any], device: torch.device | str, machine: Machine) -> float:
    """Seconds of a step of the probe configuration at its batch size here (timed once per process)."""
    key = (machine, cost_digest(config))
    if key not in _PROBES:
        _PROBES[key] = measure(config, device, steps=3, batches=(int(config["train"]["batch_size"]),),
                               min_seconds=0.5).seconds[0]
    return _PROBES[key]


def _where(path: Path) -> str:
    return "shipped with bbh" if path == STORED_FILE else str(path)


def _load(m: Mapping[str, Any]) -> str:
    load = m.get("load_average")
    return f", load average {load:.1f} while measuring" if isinstance(load, (int, float)) else ""


BUSY_SLOWDOWN = "6-40"
"""How much longer steps took on the CI machine (2-core Xeon) with other jobs on its cores (load average 4-5) than
idle, by run (the hypernets least, MAP on ResNet-32 most): torch's threads wait for cores others hold."""


def busy_note(machine: Machine) -> str | None:
    """A line when other work competes for this machine's cores now (load average above the cores this process
    may use), which the estimates do not foresee; None otherwise."""
    load = load_average()
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not on every platform
        cores = os.cpu_count() or 1
    if machine.device != "cpu" or load is None or load <= cores:
        return None
    return (f"note: this machine is busy now (load average {load:.1f} on {cores} cores); with other jobs on its "
            f"cores, steps took {BUSY_SLOWDOWN} times as long as on the idle machine in bbh's measurements")


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # pragma: no cover - not on every platform
        return None


__all__ = ["BUSY_SLOWDOWN", "Basis", "Machine", "PROBE_RUN", "STORED_FILE", "StepCost", "busy_note", "cost_digest",
           "load_basis", "measure", "store", "synthetic_task", "this_machine", "user_file"]

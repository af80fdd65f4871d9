"""Experiment configurations: TOML files, ``--set key=value`` overrides, validation and writing back.

A configuration has five tables (every key optional except ``experiment.task`` and ``experiment.method``)::

    [experiment]  name, task ("mnist" | "cifar5" | "cifar10"), method (a bbh.create name), seed
    [model]       name (a registry name: "lenet5", "resnet32", "resnet20", "resnet18", "wrn28-10", "mlp") + options
    [method]      options passed to bbh.create(method, model, **options)
    [train]       optimizer, lr, lr_schedule, eps, epochs, batch_size, kl_anneal, factored_grads, amp, deterministic,
                  device, keep_checkpoint, model_dtype
    [data]        validation, preprocessing
    [eval]        samples

``kl_anneal`` is ``"none"``, a number (a constant weight) or a table ``{kind = "linear", start = 5,
length = 15, unit = "epoch"}`` (paper Sec. 3: MNF and BbH anneal the KL). ``keep_checkpoint`` (default
true) keeps ``checkpoint.pt`` (the full training state, with the optimizer's moments) once the run has
finished; false deletes it then (the run can no longer be continued, ``model.pt`` is enough to evaluate it).
``lr_schedule`` is ``"constant"`` (default) or ``"cosine"`` (:class:`bbh.options.LRSchedule`: the learning rate
decays to zero over the run's steps). ``model_dtype`` (``"float32"`` default, or ``"bfloat16"``) is the dtype of
the floating tensors stored in ``model.pt`` (bfloat16: half the size; loading converts back). When a run is
resumed only :data:`RESUMABLE_KEYS` may change. The experiments shipped with bbh live in
``bbh/experiments/configs/*.toml`` (one per task x method, the paper's settings; :func:`available_experiments`).
"""

from __future__ import annotations

import copy
import math
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.elbo import schedule_from_spec
from ..core.options import LRSchedule

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULTS: dict[str, dict[str, Any]] = {
    "experiment": {"name": "", "task": "", "method": "", "seed": 0},
    "model": {"name": ""},
    "method": {},
    "train": {"optimizer": "adam", "lr": None, "lr_schedule": "constant",
              "eps": None, "epochs": 1, "batch_size": 100, "kl_anneal": "none",
              "factored_grads": True, "amp": False, "deterministic": False, "device": "auto",
              "keep_checkpoint": True, "model_dtype": "float32", "clip_grad_norm": None},
    "data": {"validation": True, "preprocessing": "paper"},
    "eval": {"samples": 100},
}
"""Every key a configuration may set outside the free-form ``[model]`` options and ``[method]`` table."""

FREE_TABLES = ("model", "method")

LR_SCHEDULES = tuple(s.value for s in LRSchedule)
"""The values of ``train.lr_schedule`` (:class:`bbh.options.LRSchedule`)."""

MODEL_DTYPES = ("float32", "bfloat16")
"""The values of ``train.model_dtype``."""

RESUMABLE_KEYS = ("train.epochs", "eval.samples", "train.keep_checkpoint", "train.model_dtype")
"""The keys a resumed run may change: how long it trains, and how it is evaluated and stored at the end.
Every other key would make the continued run another run than the one checkpointed."""


def available_experiments() -> list[str]:
    """Names of the configurations shipped with bbh (``mnist-bbh``, ``cifar5-map``, ...)."""
    folder = resources.files("bbh.experiments") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _read(source: str | Path) -> tuple[dict[str, Any], str]:
    path = Path(source)
    if not path.suffix and not path.exists():
        names = available_experiments()
        if str(source) not in names:
            raise ValueError(f"unknown experiment {str(source)!r}; shipped experiments: {', '.join(names)} "
                             f"(or pass a path to a .toml file)")
        text = (resources.files("bbh.experiments") / "configs" / f"{source}.toml").read_text()
        return tomllib.loads(text), f"bbh/experiments/configs/{source}.toml"
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text()), str(path)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config file {path} is not valid TOML: {err}") from err


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax (``1e-4``, ``true``, ``"adam"``, ``[16, 32]``), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(config: dict[str, Any], assignment: str) -> None:
    """Apply ``table.key=value`` (``train.epochs=1``, ``method.noise_dim=4``) to ``config`` in place."""
    if "=" not in assignment:
        raise ValueError(f"--set expects table.key=value, got {assignment!r}")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"--set key must be table.key (e.g. train.epochs), got {key.strip()!r}")
    table, name = parts
    if table not in DEFAULTS:
        raise ValueError(f"unknown config table {table!r}; expected one of {', '.join(DEFAULTS)}")
    config.setdefault(table, {})[name] = parse_value(value.strip())


def validate(config: dict[str, Any], origin: str = "config") -> dict[str, Any]:
    """Fill defaults and check names and types; returns the resolved configuration (a new dict)."""
    unknown_tables = [t for t in config if t not in DEFAULTS]
    if unknown_tables:
        raise ValueError(f"{origin}: unknown table(s) {', '.join(map(repr, unknown_tables))}; "
                         f"expected {', '.join(DEFAULTS)}")
    resolved = copy.deepcopy(DEFAULTS)
    for table, values in config.items():
        if not isinstance(values, dict):
            raise ValueError(f"{origin}: [{table}] must be a table, got {values!r}")
        if table not in FREE_TABLES:
            unknown = [k for k in values if k not in DEFAULTS[table]]
            if unknown:
                raise ValueError(f"{origin}: unknown key(s) {', '.join(map(repr, unknown))} in [{table}]; "
                                 f"expected {', '.join(DEFAULTS[table])}")
        resolved[table].update(values)
    exp, train = resolved["experiment"], resolved["train"]
    for key in ("task", "method"):
        if not exp[key]:
            raise ValueError(f"{origin}: experiment.{key} is required")
    if not exp["name"]:
        exp["name"] = f"{exp['task']}-{exp['method']}"
    for key in ("epochs", "batch_size"):
        if not isinstance(train[key], int) or isinstance(train[key], bool) or train[key] < 1:
            raise ValueError(f"{origin}: train.{key} must be a positive integer, got {train[key]!r}")
    lr = train["lr"]
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"{origin}: train.lr must be a positive number, got {lr!r}")
    if train["lr_schedule"] not in LR_SCHEDULES:
        raise ValueError(f"{origin}: train.lr_schedule must be one of {', '.join(map(repr, LR_SCHEDULES))}, "
                         f"got {train['lr_schedule']!r}")
    try:
        schedule_from_spec(train["kl_anneal"])
    except ValueError as error:
        raise ValueError(f"{origin}: train.kl_anneal: {error}") from None
    clip = train["clip_grad_norm"]
    if clip is not None and not (isinstance(clip, (int, float)) and not isinstance(clip, bool)
                                 and math.isfinite(clip) and clip > 0):
        raise ValueError(f"{origin}: train.clip_grad_norm must be a positive number (the largest gradient 2-norm), "
                         f"got {clip!r}")
    samples = resolved["eval"]["samples"]
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"{origin}: eval.samples must be a positive integer, got {samples!r}")
    if not isinstance(train["keep_checkpoint"], bool):
        raise ValueError(f"{origin}: train.keep_checkpoint must be true or false, got {train['keep_checkpoint']!r}")
    if train["model_dtype"] not in MODEL_DTYPES:
        raise ValueError(f"{origin}: train.model_dtype must be one of {', '.join(map(repr, MODEL_DTYPES))}, "
                         f"got {train['model_dtype']!r}")
    return resolved


def load_config(source: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a shipped experiment (by name) or a TOML file, apply ``overrides``, validate."""
    config, origin = _read(source)
    for assignment in overrides or []:
        apply_override(config, assignment)
    return validate(config, origin)


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The ``table.key`` names whose values differ between two configurations (a key missing on one side
    counts as changed)."""
    out = []
    for table in dict.fromkeys([*old, *new]):
        a, b = old.get(table, {}), new.get(table, {})
        out += [f"{table}.{k}" for k in dict.fromkeys([*a, *b]) if k not in a or k not in b or a[k] != b[k]]
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} to TOML")


def dumps(config: dict[str, Any]) -> str:
    """The configuration as TOML (None values are left out: they mean "the default")."""
    lines = []
    for table, values in config.items():
        lines.append(f"[{table}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None)
        lines.append("")
    return "\n".join(lines)


__all__ = ["DEFAULTS", "MODEL_DTYPES", "RESUMABLE_KEYS", "apply_override", "available_experiments", "changed_keys",
           "dumps", "load_config", "parse_value", "validate"]

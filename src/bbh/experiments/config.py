"""Experiment configurations: TOML files, ``--set key=value`` overrides, validation and writing back.

A configuration has five tables (every key optional except ``experiment.task`` and ``experiment.method``)::

    [experiment]  name, task ("mnist" | "cifar5"), method (a bbh.create name), seed
    [model]       name ("lenet5" | "resnet32") and its options (variant, norm, final_norm, dropout_sites)
    [method]      options passed to bbh.create(method, model, **options)
    [train]       optimizer, lr, eps, epochs, batch_size, kl_anneal, factored_grads, amp, deterministic, device
    [data]        validation, preprocessing
    [eval]        samples

``kl_anneal`` is ``"none"``, a number (a constant weight) or a table ``{kind = "linear", start = 5,
length = 15, unit = "epoch"}`` (paper Sec. 3: MNF and BbH anneal the KL). The experiments shipped with bbh
live in ``bbh/configs/*.toml`` (one per task x method, the paper's settings; :func:`available_experiments`).
"""

from __future__ import annotations

import copy
import math
import sys
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULTS: dict[str, dict[str, Any]] = {
    "experiment": {"name": "", "task": "", "method": "", "seed": 0},
    "model": {"name": ""},
    "method": {},
    "train": {"optimizer": "adam", "lr": None, "eps": None, "epochs": 1, "batch_size": 100, "kl_anneal": "none",
              "factored_grads": True, "amp": False, "deterministic": False, "device": "auto"},
    "data": {"validation": True, "preprocessing": "paper"},
    "eval": {"samples": 100},
}
"""Every key a configuration may set outside the free-form ``[model]`` options and ``[method]`` table."""

FREE_TABLES = ("model", "method")


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
        return tomllib.loads(text), f"bbh/configs/{source}.toml"
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
    if not isinstance(resolved["eval"]["samples"], int) or resolved["eval"]["samples"] < 1:
        raise ValueError(f"{origin}: eval.samples must be a positive integer")
    return resolved


def load_config(source: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a shipped experiment (by name) or a TOML file, apply ``overrides``, validate."""
    config, origin = _read(source)
    for assignment in overrides or []:
        apply_override(config, assignment)
    return validate(config, origin)


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


__all__ = ["DEFAULTS", "apply_override", "available_experiments", "dumps", "load_config", "parse_value", "validate"]

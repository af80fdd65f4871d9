"""Training progress as plain lines, for logs that no one watches live (``nohup``, a scheduler, CI).

Why: a progress bar redraws one line with carriage returns; in a log file it is either absent (bbh turns bars
off when stderr is not a terminal) or an unreadable smear, and a run cannot be told from a hang. Within
:func:`log_lines` (the command line enters it when stderr is not a terminal and no ``--progress`` /
``--no-progress`` was given) every :class:`~bbh.training.trainer.Trainer` without a bar prints:

* a plan line when :meth:`~bbh.training.trainer.Trainer.fit` starts: epochs, steps per epoch, steps in all,
  threads;
* a line at the end of an epoch with the epoch's mean loss terms, the time per epoch, the time so far and an
  ETA — at most one line every ``interval`` seconds (default 30), so thousands of tiny epochs do not flood the
  log, but always for the first and the last epoch;
* within an epoch longer than ``interval``, a line every ``interval`` seconds with the running means and the
  ETA, so a 10-minute epoch is not silent for 10 minutes.

Example::

    with bbh.training.progress.log_lines(interval=60):
        trainer.fit((x, y), batch_size=100)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TextIO

import torch

DEFAULT_INTERVAL = 30.0
"""Seconds between two lines, at most one line per this many seconds (first and last epoch excepted)."""


@dataclass(frozen=True)
class LineSettings:
    """Where the lines go (None: ``sys.stderr`` at the time of printing) and how often."""

    stream: TextIO | None = None
    interval: float = DEFAULT_INTERVAL


_settings: ContextVar[LineSettings | None] = ContextVar("bbh_progress_lines", default=None)


@contextmanager
def log_lines(stream: TextIO | None = None, interval: float = DEFAULT_INTERVAL) -> Iterator[None]:
    """Within the block, Trainers without a progress bar print plain progress lines (module docstring) to
    ``stream`` (default: stderr); ``interval`` 0 prints every epoch and nothing within epochs."""
    if not interval >= 0:
        raise ValueError(f"interval must be >= 0 seconds, got {interval!r}")
    token = _settings.set(LineSettings(stream, float(interval)))
    try:
        yield
    finally:
        _settings.reset(token)


@contextmanager
def quiet() -> Iterator[None]:
    """Within the block no progress lines: for a runner that prints its own (``bbh uci``: one per cell)."""
    token = _settings.set(None)
    try:
        yield
    finally:
        _settings.reset(token)


def lines_enabled() -> bool:
    """Whether progress lines are wanted here (inside :func:`log_lines`, not inside :func:`quiet`)."""
    return _settings.get() is not None


def emit(text: str) -> None:
    """Print one progress line where :func:`log_lines` sends them (nothing outside it)."""
    settings = _settings.get()
    if settings is not None:
        write_line(settings.stream or sys.stderr, text)


def write_line(stream: TextIO, text: str) -> None:
    """``text`` and its newline in one write, then flushed: a Ctrl-C cannot split the line from its end (``print``
    writes them separately, and the next line would continue this one)."""
    stream.write(text + "\n")
    stream.flush()


def duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"``, ``"2 h 07 min"``: short and readable in a log."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _terms(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in values.items()
                    if k not in ("epoch", "step", "seconds") and isinstance(v, (int, float)))


class LineProgress:
    """The lines of one :meth:`~bbh.training.trainer.Trainer.fit` call (the module docstring says which).

    Args:
        name: what is trained (``"train bbh"``).
        total_steps: the steps training will have taken when it ends (None: unknown).
        steps_per_epoch: batches per epoch (None: unknown).
        epochs: the epochs asked for (None: training is limited by steps only).
        start_step: the global step training starts (or resumes) at.
        settings: where and how often (default: those of :func:`log_lines`).
        clock: the time source (tests pass a fake one).
    """

    def __init__(self, name: str, *, total_steps: int | None, steps_per_epoch: int | None, epochs: int | None,
                 start_step: int = 0, settings: LineSettings | None = None,
                 clock: Any = time.perf_counter) -> None:
        self.name = name
        self.total = total_steps
        self.per_epoch = steps_per_epoch
        self.epochs = epochs
        self.start_step = start_step
        self.settings = settings or _settings.get() or LineSettings()
        self.clock = clock
        self.started = clock()
        self.last_line = self.started
        self.epoch_lines = 0

    def _print(self, text: str) -> None:
        write_line(self.settings.stream or sys.stderr, f"{self.name}: {text}")
        self.last_line = self.clock()

    def plan(self) -> None:
        """The plan line: epochs, steps per epoch, steps in all, threads."""
        per = f"{self.per_epoch:,}" if self.per_epoch is not None else "?"
        if self.epochs is not None:
            parts = [f"{self.epochs} epoch{'' if self.epochs == 1 else 's'} x {per} steps"]
            if self.total is not None:
                parts.append(f"{self.total:,} steps in all")
        else:  # limited by steps: epochs are only the data's passes
            parts = [f"{self.total:,} steps" if self.total is not None else "? steps", f"{per} per epoch"]
        if self.start_step:
            parts.append(f"resuming at step {self.start_step:,}")
        threads = torch.get_num_threads()
        parts.append(f"{threads} thread{'' if threads == 1 else 's'}")
        every = self.settings.interval
        self._print("plan " + ", ".join(parts) + (f"; a line per epoch, at most every {duration(every)}"
                                                  if every > 0 else "; a line per epoch"))

    def _where(self, epoch: int, step: int) -> str:
        of_steps = f"step {step:,}" + (f"/{self.total:,}" if self.total is not None else "")
        if self.epochs is None:
            return of_steps if self.per_epoch == 1 else f"epoch {epoch + 1} {of_steps}"
        return f"epoch {epoch + 1}/{self.epochs} {of_steps}"

    def _eta(self, step: int) -> str:
        elapsed = self.clock() - self.started
        done = step - self.start_step
        if self.total is None or done <= 0:
            return f"{duration(elapsed)} elapsed, ETA unknown"
        if step >= self.total:
            return f"{duration(elapsed)} elapsed, done"
        return f"{duration(elapsed)} elapsed, ETA {duration(elapsed / done * (self.total - step))}"

    def step(self, epoch: int, step: int, step_in_epoch: int, sums: Mapping[str, float]) -> None:
        """After a step: a line when the epoch is still running and ``interval`` has passed since the last one;
        ``sums`` are the epoch's summed terms so far (with ``"_count"``)."""
        if self.settings.interval <= 0 or (self.per_epoch is not None and step_in_epoch >= self.per_epoch):
            return  # interval 0: a line per epoch only; or the epoch ends now: its own line follows
        if self.clock() - self.last_line < self.settings.interval:
            return
        count = max(sums.get("_count", 1.0), 1.0)
        means = {k: v / count for k, v in sums.items() if not k.startswith("_")}
        per = f"/{self.per_epoch:,}" if self.per_epoch is not None else ""
        self._print(f"{self._where(epoch, step)} ({step_in_epoch:,}{per} of the epoch): {_terms(means)}; "
                    f"{self._eta(step)}")

    def epoch(self, record: Mapping[str, Any], last: bool) -> None:
        """After an epoch (``record``: its history record): a line when it is the first or the ``last``, or
        ``interval`` has passed since the last line."""
        if not (last or self.epoch_lines == 0 or self.clock() - self.last_line >= self.settings.interval):
            return
        self.epoch_lines += 1
        took = f" ({duration(float(record.get('seconds', 0.0)))} this epoch)" if self.per_epoch != 1 else ""
        self._print(f"{self._where(int(record['epoch']), int(record['step']))}: {_terms(record)}{took}; "
                    f"{self._eta(int(record['step']))}")


def start_lines(name: str, *, total_steps: int | None, steps_per_epoch: int | None, epochs: int | None,
                start_step: int = 0) -> LineProgress | None:
    """A :class:`LineProgress` that has printed its plan line, or None outside :func:`log_lines`."""
    settings = _settings.get()
    if settings is None:
        return None
    lines = LineProgress(name, total_steps=total_steps, steps_per_epoch=steps_per_epoch, epochs=epochs,
                         start_step=start_step, settings=settings)
    lines.plan()
    return lines


__all__ = ["DEFAULT_INTERVAL", "LineProgress", "LineSettings", "duration", "emit", "lines_enabled", "log_lines",
           "quiet", "start_lines", "write_line"]

"""Training progress: a rich bar on a terminal, plain periodic lines in log files.

Slurm writes stdout to a file, where a live bar would become pages of control
characters; there we print one line every ``interval_s`` seconds (and at the end
of each stage) with step, loss, tokens/s and ETA.
"""

from __future__ import annotations

import time
from typing import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from trajhpc.core.termout import make_console


def _eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class StageProgress:
    """Reports the optimizer steps of one stage; use as a context manager.

    ``update(step, n_steps, loss, tokens)`` matches :data:`trajhpc.job.train.StepHook`.
    """

    def __init__(
        self,
        label: str,
        total: int,
        console: Console | None = None,
        *,
        interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label, self.total = label, total
        self.console = console or make_console()
        self.interval_s = interval_s
        self.clock = clock
        self.tokens = 0
        self._bar: Progress | None = None
        self._task = None
        self._start = self._last_line = 0.0

    def __enter__(self) -> "StageProgress":
        self._start = self._last_line = self.clock()
        if self.console.is_terminal:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[tok_s]} tok/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, loss="-", tok_s="-")
        return self

    def update(self, step: int, n_steps: int, loss: float, tokens: int) -> None:
        self.tokens += tokens
        now = self.clock()
        elapsed = max(now - self._start, 1e-9)
        tok_s = self.tokens / elapsed
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}")
        elif now - self._last_line >= self.interval_s or step == n_steps:
            self._last_line = now
            eta = elapsed / step * (n_steps - step)
            self.console.print(
                f"{self.label}: step {step}/{n_steps} loss {loss:.4f} {tok_s:,.0f} tok/s ETA {_eta(eta)}",
                highlight=False,
                soft_wrap=True,
            )

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


def log(console: Console | None, message: str) -> None:
    """One plain status line (stage starts/ends, resume notes)."""
    (console or make_console()).print(message, highlight=False, soft_wrap=True)

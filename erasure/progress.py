"""Progress on stderr for the command-line layer: rich bars on a terminal, throttled lines in a log.

The library reports progress through callbacks (``progress(stage, done, total, metrics)`` for
methods, ``progress(done, total)`` for generation); these classes turn them into what the user
sees. Only what faces a person imports this module: the CLI layer (``erasure.cli``,
``erasure.canvas_cli``) and the benches.
"""

from __future__ import annotations

import sys
import time
from typing import Callable


#: Seconds between two progress lines of one stage when stderr is not a terminal (a log file):
#: often enough to show a long run is alive, rarely enough that hours of training log a few hundred lines.
PROGRESS_LINE_SECONDS = 15.0


class ProgressLines:
    """Line-based progress for a stderr that is not a terminal, where rich draws nothing.

    One line per update, per stage at most one every ``interval`` seconds, plus always the first
    update of a stage (so a slow first step shows the stage started) and its last (``done`` reaching
    ``total``, or whatever it reached when the command ends), e.g.
    ``training 3/1000 (0%) loss=0.0123 eta 2h05m``.
    """

    def __init__(self, interval: float = PROGRESS_LINE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._stages: dict[str, _StageLine] = {}

    def update(self, stage: str, done: float, total: float, metrics: dict) -> None:
        now = self._clock()
        line = self._stages.get(stage)
        if line is None:
            line = self._stages[stage] = _StageLine(start=now, start_done=done)
        line.latest, line.latest_at = (done, total, metrics), now
        finished = total > 0 and done >= total and line.printed_done != done
        if line.printed_at is None or finished or now - line.printed_at >= self._interval:
            self._write(stage, line, now)

    def close(self) -> None:
        """Print each stage's latest update if it was throttled away: the log ends where the run did."""
        now = self._clock()
        for stage, line in self._stages.items():
            if line.printed_done != line.latest[0]:
                self._write(stage, line, now)

    def _write(self, stage: str, line: "_StageLine", now: float) -> None:
        done, total, metrics = line.latest
        parts = [stage, f"{_amount(done)}/{_amount(total)}"]
        if total > 0:
            parts.append(f"({min(done / total, 1.0):.0%})")
        parts.extend(f"{k}={_metric(v)}" for k, v in metrics.items())
        parts.append(line.timing())
        # Flushed: a log file is block-buffered, and a line that appears minutes late helps no one.
        print(" ".join(p for p in parts if p), file=sys.stderr, flush=True)
        line.printed_at, line.printed_done = now, done


class _StageLine:
    """One stage's state in ``ProgressLines``: where it started, what was last printed and when."""

    def __init__(self, start: float, start_done: float) -> None:
        self.start, self.start_done = start, start_done
        self.latest: tuple[float, float, dict] = (start_done, 0, {})
        self.latest_at = start
        self.printed_at: float | None = None
        self.printed_done: float | None = None

    def timing(self) -> str:
        """"in 5m02s" for a finished stage, else the ETA as of the latest update (not as of printing:
        a line printed when the command ends must not count the time since)."""
        done, total, _ = self.latest
        elapsed = self.latest_at - self.start
        if total > 0 and done >= total:
            return f"in {_duration(elapsed)}"
        # The rate counts from the stage's first update, so a resumed run's earlier steps do not skew it.
        if done <= self.start_done or elapsed <= 0:
            return ""
        return f"eta {_duration(elapsed / (done - self.start_done) * (total - done))}"


def _amount(value: float) -> str:
    # Generation reports fractional images (steps within a batch); whole numbers print as such.
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _metric(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def stderr_is_live_terminal() -> bool:
    """Whether rich can draw live bars on stderr: a real terminal that rich also treats as one
    (not TERM=dumb, not TTY_COMPATIBLE=0). FORCE_COLOR alone does not count: it would make rich
    redraw its bars into a log file ten times a second."""
    from rich.console import Console

    isatty = getattr(sys.stderr, "isatty", None)
    if isatty is None or not isatty():
        return False
    console = Console(stderr=True)
    return console.is_terminal and not console.is_dumb_terminal


class StageBars:
    """Progress on stderr, fed by ``progress(stage, done, total, metrics)``: one rich bar per stage on a
    terminal, throttled lines (``ProgressLines``) otherwise, e.g. when stderr goes to a log file."""

    def __init__(self, label_width: int = 12) -> None:
        self._progress = None
        self._lines: ProgressLines | None = None
        if stderr_is_live_terminal():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn(f"{{task.description:>{label_width}}}"), BarColumn(), MofNCompleteColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=Console(stderr=True), transient=True,
            )
        else:
            self._lines = ProgressLines()
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> "StageBars":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
        else:
            self._lines.close()

    def __call__(self, stage: str, done: float, total: float, metrics: dict) -> None:
        if self._lines is not None:
            self._lines.update(stage, done, total, metrics)
            return
        info = " ".join(f"{k}={_metric(v)}" for k, v in metrics.items())
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(stage, total=total, info=info)
            self._progress.update(self._tasks[stage], completed=done)
            # Shown now, not at the next refresh tick: the stage's first step may hold the GIL for long.
            self._progress.refresh()
            return
        self._progress.update(self._tasks[stage], completed=done, info=info)


class ProgressBar:
    """One progress bar (or line) labelled ``label``, fed by the library's ``progress(done, total)``
    callback; ``StageBars`` with a single stage, so both share one way of drawing."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._bars = StageBars(label_width=0)

    def __enter__(self) -> Callable[[float, int], None]:
        self._bars.__enter__()
        return self._report

    def __exit__(self, *exc) -> None:
        self._bars.__exit__(*exc)

    def _report(self, done: float, total: int) -> None:
        self._bars(self._label, done, total, {})

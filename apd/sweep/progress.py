"""Live progress of a sweep: trials done, running and to run, each running trial's step and ETA.

The driver prints it between trial lines: on a terminal as one status line redrawn in place every
second; otherwise (a log file, CI) as a plain line every `APD_STATUS_EVERY` seconds (default 30)
while trials run, never with terminal control codes. `apd status` prints the same from OUT.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TextIO

TTY_EVERY_S = 1.0
LOG_EVERY_S = 30.0
SHOWN = 6
"""Running trials listed by name; more are counted."""
CLEAR = "\r\x1b[K"


def duration(seconds: float) -> str:
    """`45 s`, `3 min 05 s`, `2 h 10 min`."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def eta(step: int, total: int | None, elapsed: float) -> float | None:
    """Seconds left at the average pace so far (None before the first steps)."""
    if not total or step <= 0 or elapsed <= 0:
        return None
    return max(0.0, (total - step) * elapsed / step)


def trial_phrase(trial_id: str, step: int, total: int | None, elapsed: float, left: float | None) -> str:
    of = f"/{total}" if total else ""
    text = f"{trial_id} step {step}{of}, {duration(elapsed)}"
    return text + (f", ETA {duration(left)}" if left is not None else "")


def counts_phrase(done: int, total: int, statuses: Mapping[str, int], running: int) -> str:
    parts = ", ".join(f"{v} {k}" for k, v in sorted(statuses.items()) if v and k != "RUNNING")
    queued = max(0, total - done - running)
    return f"{done}/{total} done" + (f" ({parts})" if parts else "") + f", {running} running, {queued} to run"


@dataclass
class _Running:
    started: float
    total: int | None
    step: int = 0
    first: tuple[int, float] | None = None
    """(step, time) of the first record: the pace excludes start-up (imports, target loading)."""
    last_at: float = field(default_factory=time.monotonic)


class Progress:
    """The driver's view of its running trials; `echo` prints a line above the live status."""

    def __init__(self, total: int, *, stream: TextIO | None = None, every: float | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        env = os.environ.get("APD_STATUS_EVERY")
        self.every = every if every is not None else float(env) if env else TTY_EVERY_S if self.tty else LOG_EVERY_S
        self.running: dict[str, _Running] = {}
        self.statuses: dict[str, int] = {}
        self.done = 0
        self._lock = threading.RLock()
        self._shown = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- events

    def started(self, trial_id: str, total_steps: int | None) -> None:
        with self._lock:
            self.running[trial_id] = _Running(time.monotonic(), total_steps)

    def step(self, trial_id: str, step: int) -> None:
        with self._lock:
            r = self.running.get(trial_id)
            if r is not None:
                now = time.monotonic()
                r.step, r.last_at = step, now
                if r.first is None:
                    r.first = (step, now)

    def ended(self, trial_id: str, status: str) -> None:
        with self._lock:
            self.running.pop(trial_id, None)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.done += 1

    def preset(self, statuses: Mapping[str, int]) -> None:
        """Trials a resumed sweep had already finished."""
        with self._lock:
            self.statuses = {k: v for k, v in statuses.items() if k != "RUNNING"}
            self.done = sum(self.statuses.values())

    # -- output

    def line(self) -> str:
        with self._lock:
            now = time.monotonic()
            head = counts_phrase(self.done, self.total, self.statuses, len(self.running))
            items = sorted(self.running.items())
            shown = [self._phrase(tid, r, now) for tid, r in items[:SHOWN]]
            if len(items) > SHOWN:
                shown.append(f"+{len(items) - SHOWN} more")
            return f"[{time.strftime('%H:%M:%S')}] {head}" + (": " + "; ".join(shown) if shown else "")

    @staticmethod
    def _phrase(tid: str, r: _Running, now: float) -> str:
        left = None
        if r.first is not None and r.step > r.first[0]:
            pace = (r.last_at - r.first[1]) / (r.step - r.first[0])
            left = max(0.0, (r.total - r.step) * pace - (now - r.last_at)) if r.total else None
        return trial_phrase(tid, r.step, r.total, now - r.started, left)

    def echo(self, text: str, *, err: bool = False) -> None:
        """Print a line (a finished trial, a warning) without tearing the live status line."""
        with self._lock:
            self._clear()
            print(text, file=sys.stderr if err else self.stream, flush=True)
            if self.tty and self._thread is not None and self.running:
                self._draw()

    def _clear(self) -> None:
        if self._shown:
            self.stream.write(CLEAR)
            self.stream.flush()
            self._shown = False

    def _draw(self) -> None:
        text = self.line()
        if self.tty:
            try:
                width = os.get_terminal_size(self.stream.fileno()).columns or 120  # 0: size unknown
            except (AttributeError, OSError, ValueError):
                width = 120
            self.stream.write(CLEAR + text[: max(20, width - 1)])
            self._shown = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="apd-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            self._clear()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            with self._lock:
                if self.running:
                    try:
                        self._draw()
                    except (OSError, ValueError):
                        return  # the stream went away


Echo = Callable[[str], None]

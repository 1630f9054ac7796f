"""Metric logging: JSON lines, TensorBoard scalars (``tensorboardX``) and progress (``tqdm``).

Only process 0 writes; other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time

from tqdm import tqdm


class MetricWriter:
    """Writes scalars to ``workdir/metrics.jsonl`` and TensorBoard events under
    ``workdir/tensorboard/``.

    Both are flushed on every :meth:`write`. tensorboardX hands events to a background
    thread, so an event can reach the file up to a second after its write; :meth:`close`
    writes everything.
    """

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        # Imported here: tensorboardX imports torch when it is installed, which only the
        # writing process should pay for.
        from tensorboardX import SummaryWriter

        # NaN is a legitimate value here (e.g. the Dice of a class absent from a case).
        logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=1)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """One JSON line ``{"step": step, name: value, ...}`` (non-finite values as strings,
        e.g. ``"nan"``) and one TensorBoard scalar per name at ``step``."""
        if not self.enabled:
            return
        step, scalars = int(step), {k: float(v) for k, v in scalars.items()}
        row = {"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        now = time.time()
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, global_step=step, walltime=now)
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--:--"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}:{secs:02d}"


class Progress:
    """Training progress: step, steps/s, ETA and the latest metrics.

    On a terminal this is a ``tqdm`` bar with the metrics as its postfix; on any other stream
    (a log file) every :meth:`update` writes one plain line,
    ``step 20/300 | 1.23 steps/s | ETA 00:03:47 | loss=0.91 dice_mean=0.4``.
    The rate and ETA count from :meth:`restart` (the loop calls it once the step is compiled,
    so compilation does not dilute them). :meth:`rate` works when disabled too.
    """

    def __init__(self, total: int, start: int, *, enabled: bool = True, stream=sys.stderr):
        self.total, self.enabled, self.stream = int(total), enabled, stream
        self._tty = enabled and _isatty(stream)
        self._bar = None
        self.restart(start)

    def restart(self, step: int) -> None:
        """Count the rate from ``step`` now."""
        self.start, self.t0 = int(step), time.perf_counter()
        if self._tty:
            # A fresh bar: tqdm's rate and ETA count from its creation and initial step.
            self.close(leave=False)
            self._bar = tqdm(total=self.total, initial=self.start, file=self.stream,
                             unit="step", dynamic_ncols=True, smoothing=0)

    def rate(self, step: int) -> float:
        """Steps per second since the last restart (NaN before a step has been done)."""
        elapsed = time.perf_counter() - self.t0
        done = step - self.start
        return done / elapsed if elapsed > 0 and done > 0 else float("nan")

    def update(self, step: int, metrics: dict[str, float] | None = None) -> None:
        if not self.enabled:
            return
        shown = {k: f"{float(v):.4g}" for k, v in (metrics or {}).items()}
        if self._bar is not None:
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(step - self._bar.n)
            if step >= self.total:
                self.close()
            return
        rate = self.rate(step)
        eta = (self.total - step) / rate if rate > 0 else float("nan")  # NaN > 0 is False
        line = f"step {step}/{self.total} | {rate:.2f} steps/s | ETA {_clock(eta)}"
        if shown:
            line += " | " + " ".join(f"{k}={v}" for k, v in shown.items())
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self, leave: bool = True) -> None:
        """Finish the bar (kept on screen unless ``leave`` is false); safe to call twice."""
        if self._bar is not None:
            self._bar.leave = leave
            self._bar.close()
            self._bar = None

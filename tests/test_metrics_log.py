"""Metric logging: metrics.jsonl and TensorBoard scalars agree (read back with tensorboard's
own reader), and the progress display on log files and terminals."""

import io
import json
import math
import os
import time

import pytest

from jaxbrain.training.metrics_log import MetricWriter, Progress


def read_tensorboard_scalars(path):
    """(step, {tag: value}) in step order from a TensorBoard event file or directory, read
    with tensorboard's ``EventAccumulator``."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(path), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    by_step = {}
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            by_step.setdefault(event.step, {})[tag] = event.value
    return sorted(by_step.items())


def test_tensorboard_matches_jsonl(tmp_path):
    writer = MetricWriter(str(tmp_path))
    rows = [(1, {"train/loss": 0.9, "train/dice": 0.1}),
            (2, {"train/loss": 0.5, "train/dice": 0.25}),
            (2, {"val/dice": 0.3}),
            (5, {"train/loss": float("nan"), "train/dice": 0.125})]
    for step, scalars in rows:
        writer.write(step, scalars)
    # Readable while the writer is open (tensorboardX writes from a thread, within ~1 s).
    deadline = time.monotonic() + 10
    while len(read_tensorboard_scalars(tmp_path / "tensorboard")) < 3:
        assert time.monotonic() < deadline, "events not on disk 10 s after the writes"
        time.sleep(0.1)
    writer.close()

    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert lines[0] == {"step": 1, "train/loss": 0.9, "train/dice": 0.1}
    assert lines[3] == {"step": 5, "train/loss": "nan", "train/dice": 0.125}
    files = os.listdir(tmp_path / "tensorboard")
    assert len(files) == 1 and files[0].startswith("events.out.tfevents.")

    logged = read_tensorboard_scalars(tmp_path / "tensorboard" / files[0])
    expected = {}
    for line in lines:
        expected.setdefault(line["step"], {}).update(
            {k: float(v) for k, v in line.items() if k != "step"})
    assert [step for step, _ in logged] == sorted(expected) == [1, 2, 5]
    for step, scalars in logged:
        assert scalars.keys() == expected[step].keys()
        for tag, value in scalars.items():
            want = expected[step][tag]
            assert value == pytest.approx(want, rel=1e-6, nan_ok=True)


def test_disabled_writer_writes_nothing(tmp_path):
    writer = MetricWriter(str(tmp_path / "w"), enabled=False)
    writer.write(1, {"loss": 1.0})
    writer.close()
    assert not (tmp_path / "w").exists()


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_log_file_gets_one_plain_line_per_update():
    stream = io.StringIO()  # isatty() is False, as for a log file
    progress = Progress(300, 0, stream=stream)
    progress.restart(0)
    for step in (20, 40, 300):
        progress.update(step, {"loss": 0.91234, "dice_mean": 0.4})
    progress.close()
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("step 20/300 | ") and lines[-1].startswith("step 300/300 | ")
    assert " steps/s | ETA " in lines[0] and lines[0].endswith(" | loss=0.9123 dice_mean=0.4")
    assert "ETA 00:00:00" in lines[-1]


def test_rate_excludes_time_before_restart():
    stream = io.StringIO()
    progress = Progress(100, 10, stream=stream)
    assert math.isnan(progress.rate(10))
    time.sleep(0.5)  # "compilation"
    progress.restart(10)
    time.sleep(0.05)
    rate = progress.rate(20)
    assert rate > 10 / 0.4  # ~10 / 0.05 = 200; counting the 0.5 s sleep would give < 20
    assert math.isnan(progress.rate(10))
    progress.update(20, {"loss": 1.0})
    eta = stream.getvalue().split("ETA ")[1].split(" |")[0]
    hours, minutes, seconds = map(int, eta.split(":"))
    assert hours * 3600 + minutes * 60 + seconds < 80 / 20  # 80 steps left at > 25 steps/s


def test_disabled_progress_prints_nothing_but_keeps_the_rate():
    stream = _Tty()
    progress = Progress(10, 0, enabled=False, stream=stream)
    progress.restart(0)
    time.sleep(0.01)
    progress.update(5, {"loss": 1.0})
    progress.close()
    assert stream.getvalue() == "" and progress.rate(5) > 0


def test_terminal_gets_a_tqdm_bar():
    stream = _Tty()
    progress = Progress(50, 0, stream=stream)
    time.sleep(0.3)
    progress.restart(0)
    for step in range(10, 51, 10):
        progress.update(step, {"loss": 0.5})
    text = stream.getvalue()
    assert "50/50" in text and "loss=0.5" in text and "step/s" in text
    assert progress._bar is None  # closed at the last step
    progress.close()

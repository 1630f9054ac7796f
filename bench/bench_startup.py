r"""Launch-to-first-step time and steps/s of the README's main job (the BraTS demo), for this
checkout and, with ``--before REV``, for an earlier revision, measured in the same run.

    python bench/bench_startup.py                      # this checkout: cold, then rerun
    python bench/bench_startup.py --before 5af0887     # and an earlier revision beside it

Each side runs ``train.py --config configs/brats_swinunetr.py:demo`` in a fresh workdir
(synthetic data written, model initialised, train step compiled) with an empty compilation
cache ("cold"), then again in another fresh workdir with the cache the first run left
("rerun"). Launch-to-first-step is the wall time from starting the process until the first
line of metrics.jsonl (step 1) exists; steps/s is the loop's own figure over the run's steps
after compilation. An earlier revision is checked out with ``git worktree`` into a temporary
folder and run with this environment's Python.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_demo(repo: str, workdir: str, cache: str, steps: int) -> dict:
    env = dict(os.environ, JAXBRAIN_COMPILATION_CACHE=cache)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cmd = [sys.executable, os.path.join(repo, "train.py"), "--config",
           os.path.join(repo, "configs", "brats_swinunetr.py:demo"), "--workdir", workdir,
           f"--config.total_steps={steps}", "--config.log_every=1", "--config.eval_every=0",
           "--config.ckpt_every=100000"]
    metrics = os.path.join(workdir, "metrics.jsonl")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None:
        if first is None and os.path.exists(metrics) and os.path.getsize(metrics) > 0:
            first = time.perf_counter() - start
        time.sleep(0.1)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.read()[-3000:]}")
    rows = [json.loads(line) for line in open(metrics)]
    first = first if first is not None else total
    return {"first_step_s": first, "total_s": total,
            "steps_per_s": rows[-1].get("train/steps_per_s", float("nan"))}


def measure(label: str, repo: str, steps: int, scratch: str) -> list[dict]:
    cache = os.path.join(scratch, f"cache_{label}")
    out = []
    for attempt in ("cold", "rerun"):
        workdir = os.path.join(scratch, f"{label}_{attempt}")
        result = run_demo(repo, workdir, cache, steps)
        out.append({"code": label, "launch": attempt, **result})
        print(f"{label:8s} {attempt:6s} first step {result['first_step_s']:6.1f} s, "
              f"{result['steps_per_s']:.3f} steps/s, total {result['total_s']:.1f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=None, help="an earlier git revision to compare")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="jaxbrain_startup_")
    rows = []
    try:
        if args.before:
            old = os.path.join(scratch, "before")
            subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", old, args.before],
                           check=True, capture_output=True)
            try:
                rows += measure("before", old, args.steps, scratch)
            finally:
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", old],
                               capture_output=True)
        rows += measure("now", ROOT, args.steps, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n| code | launch | launch to first step | steps/s after compile |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['code']} | {r['launch']} | {r['first_step_s']:.1f} s | {r['steps_per_s']:.3f} |")


if __name__ == "__main__":
    main()

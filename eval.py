r"""Evaluate a training run, or segment NIfTI files with it.

  python eval.py --workdir runs/demo                       # validation cases of the run's config
  python eval.py --workdir runs/demo --output runs/demo/eval --config configs/brats_swinunetr.py:demo
  python eval.py --workdir runs/demo --output out --images flair.nii.gz t1ce.nii.gz t1.nii.gz t2.nii.gz
  python eval.py --workdir runs/ad --split test            # a whole-scan run's test split

Uses the run's best checkpoint (by its validation metric), else its latest; the run's saved
config unless --config is given. Segmentation writes <output>/<case>_seg.nii.gz in each input's
own space (in the run's label convention, e.g. BraTS 2023's enhancing tumour 3), the metrics of
exactly that label map to metrics.csv / metrics.json when labels are available, and
<case>_overlay.png (--overlay_channel: the contrast shown, T1c for BraTS by default).
Whole-scan runs (classification, regression) write predictions.csv (one row per scan),
metrics.json and roc.png (classification) or scatter.png (regression) for the validation or
(--split test) test scans. Shares train.py's persistent compilation cache (--compilation_cache).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # XLA's own log lines stay out

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "config file[:preset] (default: the run's saved config)")
flags.DEFINE_string("workdir", None, "training run directory")
flags.DEFINE_string("output", None, "output directory (default: <workdir>/eval)")
flags.DEFINE_integer("step", None, "checkpoint step (default: best, else latest)")
flags.DEFINE_enum("split", "val", ["val", "test"], "whole-scan runs: the scans to evaluate")
flags.DEFINE_string("compilation_cache", None, "persistent compilation cache folder ('' = off)")
flags.DEFINE_string("overlay_channel", None, "segmentation: the contrast the overlays show, a "
                    "channel name (t1ce / t1c, flair / t2f, ...) or index (default: T1c for "
                    "BraTS, else the first channel)")
flags.mark_flags_as_required(["workdir"])

IMAGES: list[str] = []


def _take_images(argv: list[str]) -> list[str]:
    """Removes ``--images A B C`` (space-separated, absl cannot parse it) from argv."""
    if "--images" not in argv:
        return argv
    i = argv.index("--images")
    j = i + 1
    while j < len(argv) and not argv[j].startswith("--"):
        IMAGES.append(argv[j])
        j += 1
    if not IMAGES:
        raise SystemExit("--images needs one NIfTI file per channel")
    return argv[:i] + argv[j:]


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # keep Orbax's INFO lines out unless asked for
        logging.set_verbosity(logging.WARNING)
    from jaxbrain import runs
    from jaxbrain.evaluation.evaluate import evaluate, evaluate_scans, makes_scan_predictions
    from jaxbrain.metrics import summarize
    from jaxbrain.parallel import enable_compilation_cache
    enable_compilation_cache(flags.FLAGS.compilation_cache)
    workdir = flags.FLAGS.workdir
    config = flags.FLAGS.config or runs.load_config(workdir)
    output = flags.FLAGS.output or os.path.join(workdir, "eval")
    if makes_scan_predictions(config):
        if IMAGES:
            raise SystemExit("--images: whole-scan runs evaluate the scans of their label table")
        summary = evaluate_scans(config, workdir, output, split=flags.FLAGS.split,
                                 step=flags.FLAGS.step)
        print(f"{summary['split']}: {summary['scans']} scans of {summary['subjects']} subjects, "
              f"step {summary['step']}: " + ", ".join(
                  f"{k}={v:.4f}" for k, v in summary["metrics"].items()))
        print(f"wrote {summary['predictions']}, {summary['figure']} and metrics.json to {output}")
        return
    if flags.FLAGS.split != "val":
        raise SystemExit("--split test: segmentation runs evaluate their validation cases")
    rows = evaluate(config, workdir, output, images=IMAGES or None, step=flags.FLAGS.step,
                    overlay_channel=flags.FLAGS.overlay_channel)
    for row in rows:
        print(", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if rows and len(rows[0]) > 2:
        means = {k: v["mean"] for k, v in summarize(rows).items() if k != "step"}
        print("mean: " + ", ".join(f"{k}={v:.4f}" for k, v in means.items()))
    print(f"wrote {len(rows)} case(s) to {output}")


if __name__ == "__main__":
    from jaxbrain.training.config import parse_flags
    app.run(main, argv=_take_images(sys.argv), flags_parser=parse_flags)

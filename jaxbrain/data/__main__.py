"""Data commands.

  python -m jaxbrain.data cache --layout brats --root BraTS2021 --out cache/brats \
      --preprocess "zscore" [--workers 4]
  python -m jaxbrain.data synth brats --out data/brats --n 8   (see jaxbrain.data.synthetic)
  python -m jaxbrain.data sequence-table --root BraTS2021 --out brats_sequences.csv
      (a label table of sequence type, one row per image: configs/braindino_probe.py:sequence)
  python -m jaxbrain.data check --config configs/brats_swinunetr.py \
      --config.data.root=/data/BraTS2023 [--voxels] [--workdir runs/x]
      (every case's headers and label values read once, every problem listed, one line each
      naming the file; exit status 1 if there is any: see jaxbrain.data.check)
"""

from __future__ import annotations

import argparse
import sys
import time

from jaxbrain.data import layouts, pipeline


def _cache(argv):
    p = argparse.ArgumentParser(prog="python -m jaxbrain.data cache",
                                description="Decode, reorient and preprocess a dataset once "
                                "into memory-mappable .npy files.")
    p.add_argument("--layout", required=True, choices=sorted(layouts.LAYOUTS))
    p.add_argument("--root", required=True,
                   help="dataset folder (brats, atlas), datalist JSON, or subject CSV/JSON/glob")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--preprocess", default="zscore",
                   help='transform specs, e.g. "crop_foreground, zscore" (default: zscore)')
    p.add_argument("--channels", default="t1,flair", help="subject-list channels")
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args(argv)
    kwargs = {"channels": args.channels.split(",")} if args.layout == "subjects" else {}
    cases = layouts.find_cases(args.layout, args.root, **kwargs)
    start = time.perf_counter()
    index = pipeline.build_cache(cases, args.preprocess, args.out, workers=args.workers)
    print(f"cached {len(cases)} cases in {time.perf_counter() - start:.1f} s -> {index}")


def _sequence_table(argv):
    from jaxbrain.data import tables
    p = argparse.ArgumentParser(prog="python -m jaxbrain.data sequence-table",
                                description="A label table of sequence type (T1, T1ce, T2, "
                                "FLAIR) from a BraTS 2021 / 2023 folder, one row per image.")
    p.add_argument("--root", required=True, help="the BraTS folder (one sub-folder per case)")
    p.add_argument("--out", required=True, help="the table to write (.csv)")
    p.add_argument("--unlabeled", action="store_true",
                   help="cases without segmentations (a validation release)")
    args = p.parse_args(argv)
    cases = layouts.brats(args.root, require_label=not args.unlabeled)
    rows = tables.write_sequence_table(cases, args.out)
    print(f"wrote {args.out}: {rows} images of {len(cases)} cases")


def _check(argv):
    from absl import flags
    from ml_collections import config_flags

    from jaxbrain.data.nifti import DataError
    from jaxbrain.training import data as data_lib
    values = flags.FlagValues()
    argv = ["python -m jaxbrain.data check", *argv]
    config_flags.DEFINE_config_file("config", None, "config file, optionally file.py:preset",
                                    flag_values=values, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "run directory: where a config's synthetic data are "
                        "written (data.root unset)", flag_values=values)
    flags.DEFINE_bool("voxels", False, "also read every floating-point image's voxels (NaN, "
                      "Inf)", flag_values=values)
    try:
        values(argv)
    except flags.Error as e:
        raise SystemExit(f"python -m jaxbrain.data check: {e}\n\nusage: python -m jaxbrain.data "
                         "check --config configs/X.py[:preset] [--config.a.b=value ...] "
                         "[--voxels] [--workdir DIR]") from None
    if values.config is None:
        raise SystemExit("python -m jaxbrain.data check: --config is required")
    cfg = values.config.data
    if cfg.get("root") is None and not values.workdir:
        raise SystemExit("python -m jaxbrain.data check: config.data.root is not set; pass "
                         "--config.data.root=/path/to/data (or --workdir for the config's "
                         "synthetic data)")
    try:
        report = data_lib.check(cfg, values.workdir or ".", voxels=values.voxels)
    except DataError as e:
        raise SystemExit(f"data error: {e}") from None
    print(report.text(), flush=True)
    if not report.ok:
        raise SystemExit(1)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in ("cache", "synth", "sequence-table", "check"):
        print(__doc__.strip())
        raise SystemExit(2)
    if argv[0] == "cache":
        _cache(argv[1:])
    elif argv[0] == "check":
        _check(argv[1:])
    elif argv[0] == "sequence-table":
        _sequence_table(argv[1:])
    else:
        from jaxbrain.data import synthetic
        synthetic.main(argv[1:])


if __name__ == "__main__":
    main()

"""Data commands.

  python -m jaxbrain.data cache --layout brats --root BraTS2021 --out cache/brats \
      --preprocess "zscore" [--workers 4]
  python -m jaxbrain.data synth brats --out data/brats --n 8   (see jaxbrain.data.synthetic)
  python -m jaxbrain.data sequence-table --root BraTS2021 --out brats_sequences.csv
      (a label table of sequence type, one row per image: configs/braindino_probe.py:sequence)
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in ("cache", "synth", "sequence-table"):
        print(__doc__.strip())
        raise SystemExit(2)
    if argv[0] == "cache":
        _cache(argv[1:])
    elif argv[0] == "sequence-table":
        _sequence_table(argv[1:])
    else:
        from jaxbrain.data import synthetic
        synthetic.main(argv[1:])


if __name__ == "__main__":
    main()

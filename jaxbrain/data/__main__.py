"""Data commands.

  python -m jaxbrain.data cache --layout brats --root BraTS2021 --out cache/brats \
      --preprocess "zscore" [--workers 4]
  python -m jaxbrain.data synth brats --out data/brats --n 8   (see jaxbrain.data.synthetic)
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in ("cache", "synth"):
        print(__doc__.strip())
        raise SystemExit(2)
    if argv[0] == "cache":
        _cache(argv[1:])
    else:
        from jaxbrain.data import synthetic
        synthetic.main(argv[1:])


if __name__ == "__main__":
    main()

r"""Ahead-of-time compilation of a config's train step for a TPU slice, on any machine.

    python -m jaxbrain.aot --config configs/brats_swinunetr.py:bf16 --topology v5e:2x2 \
        [--per_chip_batch 1] [--config.a.b=...] [--json out.json]
    python -m jaxbrain.aot --table aot_table.md [--rows bf_s_bf16_v5e,...]

The train step is the one train.py runs (:func:`jaxbrain.training.loop.setup_training`:
model, objective with its state, optimizer, shardings, donation), lowered on abstract values
(the batch's shapes from the config, :func:`jaxbrain.training.data.batch_spec`; no data read,
no weight materialised) over a mesh of the slice's devices (the config's ``mesh`` axes over
all its chips) and compiled by libtpu (``pip install -e '.[tpu]'``; no TPU needed). Printed:
per-chip HBM (arguments, temporaries, outputs, aliased, total against the chip's capacity),
FLOPs per step and per sample, XLA's cost-model step time where it gives a valid one and the
samples/s and model FLOPs utilisation (MFU, against the chip's peak bfloat16 rate) it
implies, the collectives of the compiled program (count and bytes of their outputs) and the
compile time. A program over the chip's memory is reported as "does not fit: needs X GiB,
chip has Y GiB". Only one process at a time may load libtpu.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

GIB = 2**30
# Per chip: HBM (GiB) and peak bfloat16 FLOP/s.
CHIPS = {"v4": (32, 275e12), "v5e": (16, 197e12), "v5p": (95, 459e12), "v6e": (32, 918e12)}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_OP = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_SHAPE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")


def chip_of(topology: str) -> str:
    """The chip generation of a topology name ("v5e:2x2" -> "v5e")."""
    kind = topology.split(":")[0].lower().replace("litepod", "e").replace("lite", "e")
    if kind not in CHIPS:
        raise ValueError(f"--topology {topology!r}: expected one of {sorted(CHIPS)} followed by "
                         "':' and the slice shape, e.g. v5e:2x2 or v5p:4x4x4")
    return kind


def topology_devices(topology: str) -> list:
    """The devices of a TPU slice (libtpu compiles for them without the hardware)."""
    chip_of(topology)
    try:
        from jax.experimental import topologies
        return list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)
    except Exception as e:
        raise RuntimeError(f"cannot describe TPU topology {topology!r} ({e}); ahead-of-time "
                           "compilation needs libtpu: pip install -e '.[tpu]'") from e


def _shape_bytes(text: str) -> int:
    return sum(_BYTES.get(dtype, 4) * _prod(dims) for dtype, dims in _SHAPE.findall(text))


def _prod(dims: str) -> int:
    out = 1
    for d in filter(None, dims.split(",")):
        out *= int(d)
    return out


def collectives(hlo: str) -> dict:
    """{kind: {"count", "bytes"}} of the collectives in compiled HLO text; bytes are those of
    each op's output (an asynchronous start's tuple holds its operands first, then outputs;
    the second half is counted)."""
    out = {k: {"count": 0, "bytes": 0} for k in COLLECTIVES}
    for line in hlo.splitlines():
        m = _OP.search(line)
        if not m:
            continue
        result, kind, start = m.groups()
        shapes = [(d, s) for d, s in _SHAPE.findall(result)]
        if start and kind in ("all-gather", "collective-permute", "all-to-all") and len(shapes) > 1:
            shapes = [x for x in shapes if x[1]]  # drop scalar context (u32[])
            shapes = shapes[len(shapes) // 2:]
        out[kind]["count"] += 1
        out[kind]["bytes"] += sum(_BYTES.get(d, 4) * _prod(s) for d, s in shapes)
    return out


def _size(value: float, unit: str) -> float:
    return value * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[unit.upper()]


def parse_oom(message: str) -> tuple[float, float] | None:
    """(needed, available) bytes from XLA's RESOURCE_EXHAUSTED message, or None."""
    num = r"([\d.]+)\s*([KMGT]?)i?B?"
    for pattern in (rf"required for .*?\({num}\) exceeds available HBM \({num}\)",
                    rf"Used {num} of {num} hbm"):
        m = re.search(pattern, message, re.S)
        if m:
            return _size(float(m[1]), m[2]), _size(float(m[3]), m[4])
    return None


def build_config(argv: list[str], per_chip_batch: int | None, chips: int):
    """The config of a train.py command line with the global batch set for ``chips`` chips."""
    from jaxbrain import runs
    from jaxbrain.training.config import command_line_config
    config = runs.migrate(command_line_config(argv))
    if per_chip_batch is not None:
        config.batch_size = int(per_chip_batch) * chips
    if config.batch_size % chips:
        raise ValueError(f"batch_size {config.batch_size} does not split over {chips} chips: "
                         "pass --per_chip_batch")
    return config


def analyse(config, topology: str, hlo_path: str | None = None) -> dict:
    """Compiles ``config``'s train step for ``topology``; returns the figures (``fits`` False
    with ``needs_bytes`` / ``hbm_bytes`` when XLA runs out of HBM)."""
    import jax
    from jaxbrain import parallel
    from jaxbrain.training.data import batch_spec
    from jaxbrain.training.loop import setup_training

    # A program compiled for a topology has no client to load it from JAX's persistent cache.
    jax.config.update("jax_enable_compilation_cache", False)
    chip = chip_of(topology)
    hbm, peak = CHIPS[chip][0] * GIB, CHIPS[chip][1]
    devices = topology_devices(topology)
    chips = len(devices)
    spec = batch_spec(config)
    setup = setup_training(config, spec, devices=devices)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                     sharding=parallel.batch_sharding(setup.mesh, len(v.shape)))
             for k, v in spec.items()}
    params = sum(int(x.size) for x in jax.tree_util.tree_leaves(setup.abstract_state["params"]))
    out = {"topology": topology, "chips": chips, "chip": chip, "hbm_bytes": hbm,
           "mesh": dict(setup.mesh.shape), "global_batch": int(config.batch_size),
           "per_chip_batch": config.batch_size / chips, "parameters": params,
           "compute_dtype": config.get("compute_dtype", "float32")}
    t0 = time.perf_counter()
    try:
        compiled = setup.step_fn.lower(setup.abstract_state, batch).compile()
    except Exception as e:  # XLA's RESOURCE_EXHAUSTED: the program does not fit in HBM
        sizes = parse_oom(str(e)) if "RESOURCE_EXHAUSTED" in str(e) else None
        if sizes is None:
            raise
        out.update(fits=False, needs_bytes=sizes[0], available_bytes=sizes[1],
                   compile_s=time.perf_counter() - t0,
                   error=str(e).strip().splitlines()[0][:300])
        return out
    out["compile_s"] = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    args, temp = mem.argument_size_in_bytes, mem.temp_size_in_bytes
    outputs, alias = mem.output_size_in_bytes, mem.alias_size_in_bytes
    total = args + temp + outputs - alias + mem.generated_code_size_in_bytes
    out.update(argument_bytes=args, temp_bytes=temp, output_bytes=outputs, alias_bytes=alias,
               code_bytes=mem.generated_code_size_in_bytes, total_bytes=total,
               fits=total <= hbm)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0))  # per chip: the program of one device
    out.update(flops_per_chip=flops, flops_per_step=flops * chips,
               flops_per_sample=flops * chips / config.batch_size)
    seconds = cost.get("optimal_seconds")
    if seconds is not None and seconds > 0:
        out.update(step_s=float(seconds), samples_per_s=config.batch_size / seconds,
                   mfu=flops / seconds / peak)
    else:
        out["step_s"] = None
        out["step_note"] = ("XLA's cost model gives no valid step time "
                            f"(optimal_seconds={seconds})")
    hlo = compiled.as_text()
    if hlo_path:
        with open(hlo_path, "w") as f:
            f.write(hlo)
    out["collectives"] = collectives(hlo)
    return out


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def report(r: dict) -> str:
    """The figures of :func:`analyse` as text."""
    lines = [f"{r['topology']}: {r['chips']} chips ({r['chip']}, {r['hbm_bytes'] // GIB} GiB "
             f"HBM each), mesh {r['mesh']}, global batch {r['global_batch']} "
             f"({r['per_chip_batch']:g} per chip), {r['parameters']:,} parameters, "
             f"compute {r['compute_dtype']}"]
    if not r["fits"] and "needs_bytes" in r:
        lines.append(f"does not fit: needs {_gib(r['needs_bytes'])}, chip has "
                     f"{_gib(r['available_bytes'])} (XLA: {r['error']})")
        lines.append(f"compile time: {r['compile_s']:.1f} s")
        return "\n".join(lines)
    verdict = (f"fits ({_gib(r['hbm_bytes'] - r['total_bytes'])} free)" if r["fits"] else
               f"does not fit: needs {_gib(r['total_bytes'])}, chip has {_gib(r['hbm_bytes'])} "
               f"({_gib(r['total_bytes'] - r['hbm_bytes'])} over)")
    lines += [
        f"per-chip HBM: arguments {_gib(r['argument_bytes'])}, temporaries "
        f"{_gib(r['temp_bytes'])}, outputs {_gib(r['output_bytes'])} (aliased "
        f"{_gib(r['alias_bytes'])}), total {_gib(r['total_bytes'])} of "
        f"{_gib(r['hbm_bytes'])}: {verdict}",
        f"FLOPs: {r['flops_per_step']:.4g} per step, {r['flops_per_sample']:.4g} per sample",
    ]
    if r.get("step_s"):
        lines.append(f"cost-model step time {r['step_s'] * 1e3:.2f} ms: "
                     f"{r['samples_per_s']:.4g} samples/s, MFU {100 * r['mfu']:.1f}% of peak bf16")
    else:
        lines.append(r["step_note"])
    c = r["collectives"]
    lines.append("collectives: " + (", ".join(
        f"{k} {v['count']} ({v['bytes'] / 2**20:.1f} MiB)" for k, v in c.items() if v["count"])
        or "none"))
    lines.append(f"compile time: {r['compile_s']:.1f} s")
    return "\n".join(lines)


# --table: (name, config command line, topology, per-chip batch) of the published recipes.
TABLE = [
    ("BF-S BraTS fine-tuning f32", "configs/brats_swinunetr.py", "v5e:2x2", 1),
    ("BF-S BraTS fine-tuning bf16", "configs/brats_swinunetr.py:bf16", "v5e:2x2", 1),
    ("BF-S BraTS fine-tuning f32", "configs/brats_swinunetr.py", "v5p:2x2x1", 1),
    ("BF-S SSL stage 1 bf16", "configs/brainsegfounder_stage1.py:bf16", "v5e:2x2", 1),
    ("BF-S SSL stage 1", "configs/brainsegfounder_stage1.py", "v5p:2x2x1", 1),
    ("Volume Fusion PCT-Net bf16", "configs/misfm_vf_pctnet.py:bf16", "v5e:2x2", 1),
    ("Volume Fusion PCT-Net", "configs/misfm_vf_pctnet.py", "v5p:2x2x1", 1),
    ("whole-scan ViT-B age bf16", "configs/brain_age.py:vit,bf16", "v5e:2x2", 2),
    ("whole-scan ViT-B age", "configs/brain_age.py:vit", "v5p:2x2x1", 2),
    ("whole-scan DenseNet-121 age bf16", "configs/brain_age.py:densenet121,bf16", "v5e:2x2", 2),
    ("whole-scan DenseNet-121 age", "configs/brain_age.py:densenet121", "v5p:2x2x1", 2),
    ("MAE ViT-B bf16", "configs/brain_pretrain.py:mae,bf16", "v5e:2x2", 4),
    ("MAE ViT-B", "configs/brain_pretrain.py:mae", "v5p:2x2x1", 4),
    ("DINO ViT-B bf16", "configs/braindino_pretrain.py:bf16", "v5e:2x2", 32),
    ("DINO ViT-B", "configs/braindino_pretrain.py", "v5p:2x2x1", 32),
    ("DINO ViT-L bf16", "configs/braindino_pretrain.py:bf16 --config.model.hidden_size=1024 "
     "--config.model.depth=24 --config.model.num_heads=16 --config.model.mlp_dim=4096",
     "v5p:2x2x1", 32),
    ("slice segmentation bf16", "configs/braindino_seg_brats.py:bf16", "v5e:2x2", 8),
    ("slice segmentation", "configs/braindino_seg_brats.py", "v5p:2x2x1", 8),
]
HEADER = ("| recipe | config | topology | batch/chip | params | HBM/chip (args+temp+out-alias) "
          "| fits | GFLOPs/sample | cost-model samples/s | MFU | all-gather | all-reduce | "
          "reduce-scatter | coll.-permute | all-to-all | compile s |")


def table_row(name: str, command: str, r: dict) -> str:
    c = r.get("collectives", {})
    count = [str(c[k]["count"]) if c else "-" for k in COLLECTIVES]
    if "needs_bytes" in r:
        hbm = f"needs {r['needs_bytes'] / GIB:.2f} of {r['available_bytes'] / GIB:.2f} GiB"
        fits, flops, rate, mfu = "no", "-", "-", "-"
    else:
        hbm = (f"{r['total_bytes'] / GIB:.2f} GiB ({r['argument_bytes'] / GIB:.2f}+"
               f"{r['temp_bytes'] / GIB:.2f}+{r['output_bytes'] / GIB:.2f}-"
               f"{r['alias_bytes'] / GIB:.2f})")
        fits = "yes" if r["fits"] else f"no (+{(r['total_bytes'] - r['hbm_bytes']) / GIB:.2f} GiB)"
        flops = f"{r['flops_per_sample'] / 1e9:.1f}"
        rate = f"{r['samples_per_s']:.1f}" if r.get("step_s") else "invalid"
        mfu = f"{100 * r['mfu']:.0f}%" if r.get("step_s") else "-"
    return (f"| {name} | `{command}` | {r['topology']} | {r['per_chip_batch']:g} | "
            f"{r['parameters'] / 1e6:.1f}M | {hbm} | {fits} | {flops} | {rate} | {mfu} | "
            + " | ".join(count) + f" | {r['compile_s']:.0f} |")


def run_table(path: str, only: list[str] | None = None) -> None:
    """Appends the rows of :data:`TABLE` missing from ``path`` (resumable), one at a time."""
    done = set()
    if os.path.exists(path):
        for line in open(path):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) > 4:
                done.add((cells[1].strip("`"), cells[2], cells[3]))
    else:
        with open(path, "w") as f:
            f.write(HEADER + "\n" + "|---" * HEADER.count(" | ") + "|---|\n")
    for name, command, topology, per_chip in TABLE:
        if (command, topology, f"{per_chip:g}") in done or (only and name not in only):
            continue
        argv = ["--config", *command.split()]
        config = build_config(argv, per_chip, len(topology_devices(topology)))
        print(f"{name}: {command} on {topology} ...", flush=True)
        r = analyse(config, topology)
        print(report(r), flush=True)
        with open(path, "a") as f:
            f.write(table_row(name, command, r) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m jaxbrain.aot", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="config file, optionally file.py:presets; "
                        "--config.a.b=value overrides as in train.py")
    parser.add_argument("--topology", default="v5e:2x2", help="TPU slice, e.g. v5e:16x16")
    parser.add_argument("--per_chip_batch", type=int, default=None,
                        help="batch per chip (default: the config's batch_size over the chips)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--hlo", default=None, help="also write the compiled HLO text here")
    parser.add_argument("--table", default=None, metavar="OUT.md",
                        help="compile the published recipes' rows missing from OUT.md")
    parser.add_argument("--rows", default=None, help="--table: only these recipe names "
                        "(comma-separated)")
    known, rest = parser.parse_known_args(argv)
    if known.table:
        run_table(known.table, known.rows.split(",") if known.rows else None)
        return 0
    if not known.config:
        parser.error("--config is required (or --table)")
    chips = len(topology_devices(known.topology))
    config = build_config(["--config", known.config, *rest], known.per_chip_batch, chips)
    r = analyse(config, known.topology, known.hlo)
    print(report(r))
    if known.json:
        with open(known.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0 if r["fits"] else 2


if __name__ == "__main__":
    sys.exit(main())

r"""GPU measurements of every benchmark in one run: jaxbrain against PyTorch / MONAI, one table.

    python bench/gpu.py                                 # one GPU; budgeted to end within 10 min
    python bench/gpu.py --dry-run --out /tmp/r.md       # tiny sizes on the CPU: checks the script
    python bench/gpu.py --only swin,loop --repeats 10   # a subset; more timed repetitions
    python bench/gpu.py --set "swin.depths=(2,2,6,2)"   # change a size (BENCH.FIELD=VALUE)

Benchmarks (each: jaxbrain and the PyTorch side, in the same run, on the same device):

* ``swin``: SwinUNETR (BrainSegFounder size: feature 48, depths 2,2,2,2, i.e. the "62m"
  preset; the configs' default "64m" has depths 2,2,6,2; 4 -> 3 channels) training step
  (forward, sigmoid BCE, backward, AdamW) at 128^3, batch 2; jaxbrain in bf16 against MONAI's
  SwinUNETR under torch autocast (bf16). bench/bench_swin_unetr.py's "brats128" setup and
  step (its ``bench_torch`` without the forward timing).
* ``ssl``: BrainSegFounder's SSL step (two rotated, cut-out views, rotation CE + NT-Xent +
  L1 reconstruction, AdamW) at 96^3, feature 48, batch 2, 2 channels, against the original
  recipe restated in bench/torch_ssl.py (augmentation loops over the samples, on the GPU
  tensors); as bench/bench_ssl.py. ``ssl views`` is the augmentation alone.
* ``pctnet``: PCT-Net Volume Fusion step (fusion, deep-supervised forward, (Dice + CE) / 2,
  backward, Adam) at 64x128x128, the published features 24,48,128,256,512, batch 2, against
  bench/torch_pctnet.py with PyMIC's NumPy fusion on the host; as bench/bench_pctnet.py.
  ``pctnet fusion`` is the Volume Fusion alone.
* ``loop``: bench/bench_train.py's training loop with data (``train.py``'s loop reading its
  cache of synthetic BraTS cases, against the MONAI loop with ``CacheDataset`` and a torch
  DataLoader), at bench_train's size (feature 12, 64^3 crops, batch 2), loader workers 4. In
  bf16 the config's ``model.dtype`` is set with ``compute_dtype`` (which alone only casts the
  input).
* ``vit``: the 3D ViT classifier training step (ViT-B/16: width 768, depth 12, 12 heads,
  MLP 3072, CLS token, learned positions, no qkv bias; 96^3, one channel, batch 2, 2 classes;
  softmax cross-entropy, AdamW) against MONAI's ``ViT`` (classification, no post-activation);
  as bench/bench_vit.py.
* ``densenet``: DenseNet121 3D (BatchNorm in training mode, running statistics updated),
  the same step and sizes, against MONAI's ``DenseNet``; as bench/bench_cnn3d.py.
* ``dino``: the BrainDINO self-distillation step (ViT-B/16 student + DINO and iBOT heads of
  65536 prototypes, EMA teacher on 2 global 224 crops, 8 local 96 crops, batch 16 images;
  DINO loss with centring, iBOT on the masked patches, KoLeo, AdamW, clipping per module,
  teacher EMA): jaxbrain's loop step of objective "dino" (its multi-crop on device inside
  the step) against the same step assembled from the dinov2 package's
  DinoVisionTransformer, DINOHead, DINOLoss, iBOTPatchLoss and KoLeoLoss (crops and masks
  made once, outside the timing, as its data loader would); as bench/bench_dino.py.
* ``lora``: the LoRA whole-scan probe step (model ``slice_scan``, configs/braindino_probe.py
  preset ``lora``: ViT-B/16 on every slice of 4 scans x 128 slices of 224, LoRA rank 8 on q
  and v, the rest of the encoder frozen, normalised CLS mean-pooled, LayerNorm-Linear-GELU-
  Linear head, cross-entropy, Adam 1e-4; remat on the jaxbrain side): jaxbrain's loop step
  against BrainDINO's construction (the dinov2 package's DinoVisionTransformer with its
  blocks' qkv wrapped by SliceStudent's LoRA module, ``requires_grad`` off but for the
  adapters, the same head, ``torch.optim.Adam``); as bench/bench_lora.py. The two sides'
  trainable and total parameter counts must agree (dinov2's learned position table aside;
  RoPE has none), else the row has an error.

jaxbrain's parameters are drawn on the host with the shapes of the model's init (a step's
speed does not depend on their values, and the init program is not compiled: PCT-Net's takes
minutes on a CPU); the loop initialises as train.py does.

Reported per benchmark: samples/s of both sides (median step time of ``--repeats`` timed
runs after ``--warmup`` runs, compilation excluded, each run ended by
``jax.block_until_ready`` / ``torch.cuda.synchronize``; the loop: its steps/s times the
batch), ratio = jaxbrain samples/s / PyTorch samples/s (above 1: jaxbrain faster), peak
device memory (JAX ``memory_stats()["peak_bytes_in_use"]``, ``torch.cuda.max_memory_allocated``)
and model FLOPs utilisation: the FLOPs of jaxbrain's compiled step (XLA cost analysis; for
the loop, of the lowered step) / step time / the device's dense bf16 peak (H100 SXM and
H200 989 TFLOP/s, A100 312; other devices: n/a). The same model FLOPs are used for the
PyTorch side. Compute is bf16 (torch: autocast bf16) on a GPU, float32 on a CPU
(``--precision`` to choose).

Every side of every benchmark runs in its own Python process (fresh peak-memory counters,
no memory contention between JAX and torch, crashes contained), the PyTorch side first. A
failure or a timeout becomes a row with the error; the rest still run. Time budget: each
benchmark has its own (seconds: swin 110, ssl 80, pctnet 80, loop 70, vit 50, densenet 50,
dino 70, lora 70, 580 in all;
``--budget`` sets all), and what a benchmark leaves unused goes to the next; the PyTorch side
may take 60% of it, the jaxbrain side the rest; a side stops taking timed repetitions
(keeping at least one) when its time would run out.

``--dry-run``: tiny sizes (SwinUNETR and SSL feature 12, depths 1,1,1,1, 64x32x32, batch 1;
PCT-Net features 4..64, depths 1,1,1, 16x32x32, batch 2; the loop 64^3, batch 1, 2 cases;
ViT width 32, depth 1, and DenseNet blocks 1,1,1,1, growth 4, at 32^3, batch 2; the DINO
ViT width 32, depth 1 on 32 px crops; the LoRA probe width 32, depth 1, 2 scans x 4 slices
of 32 px, rank 4), on
the CPU (``--device auto`` to use a GPU), float32, 1 timed run and no warm-up (the loop keeps
bench_train's one warm-up step); XLA compiles with its backend optimisation off and keeps
the programs in a persistent cache ($JAX_COMPILATION_CACHE_DIR, default
<tmp>/jaxbrain_gpu_dry_run_xla). Peak memory and MFU are n/a on a CPU.

The table (machine: device kind, jax / torch / MONAI versions) goes to stdout and to
``--out`` (default gpu_results.md), the raw numbers to the same name with .json. The exit
status is 1 when a row has an error.

Offline GPU machines. A GPU machine without network access whose Python has jax (with its
CUDA plugin), flax, optax, orbax-checkpoint, chex and torch, but not monai, einops, grain,
nibabel or ml-collections: build a wheel folder on a networked machine (any OS; the wheels
are chosen for the target, CPython ``--python-version``, manylinux x86_64 up to glibc 2.28)
and copy it over with the repository:

    python bench/gpu.py --prepare-wheels wheels/ --python-version 3.11

which runs ``pip download --dest wheels/ --only-binary=:all: --implementation cp
--python-version 3.11 --platform manylinux_2_28_x86_64 ... --platform manylinux2014_x86_64``,
once for ``monai`` with ``--no-deps`` (its dependencies are numpy and torch, on the target
already) and once for ``einops grain nibabel ml-collections`` with their dependencies
(small pure-Python or manylinux wheels: absl-py, array-record, etils, protobuf, ...). Then
on the GPU machine:

    python bench/gpu.py --wheels wheels/

which first runs ``python -m pip install --no-index --find-links wheels/ monai einops grain
nibabel ml-collections`` (plus any dependency of pyproject.toml that is not installed; a
no-op when everything is there) and then the benchmarks. ``--install-only`` stops after the
installation. jaxbrain itself is not installed: the repository root is put on sys.path.
"""

from __future__ import annotations

import argparse
import ast
import collections
import copy
import importlib.metadata
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")

# What a GPU machine that has jax, flax, optax, orbax-checkpoint, chex and torch lacks.
WHEEL_PACKAGES = ["monai", "einops", "grain", "nibabel", "ml-collections"]
NO_DEPS = {"monai"}  # its dependencies (numpy, torch) are on the target; pip would fetch torch
GLIBC_MAX = 28

# Dense bf16 FLOP/s of one device, by a substring of jax's device_kind. An H100 PCIe (756e12)
# or NVL (835e12) is not an H100 SXM: unknown here.
PEAK_BF16 = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12))


def peak_flops(device_kind: str) -> float | None:
    kind = device_kind.upper()
    if "H100" in kind and ("PCIE" in kind or "NVL" in kind):
        return None
    return next((v for k, v in PEAK_BF16 if k in kind), None)


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------

FULL = {
    "swin": dict(feature=48, depths=(2, 2, 2, 2), roi=128, batch=2, in_channels=4, out_channels=3),
    "ssl": dict(feature=48, depths=(2, 2, 2, 2), roi=96, batch=2, channels=2),
    "pctnet": dict(size=(64, 128, 128), features=(24, 48, 128, 256, 512), depths=(2, 2, 2),
                   batch=2),
    "loop": dict(feature=12, depths=(2, 2, 2, 2), roi=64, batch=2, cases=8, shape=(96, 96, 64),
                 steps=40, workers=4),
    "vit": dict(hidden=768, depth=12, heads=12, mlp=3072, patch=16, roi=96, batch=2, classes=2),
    "dino": dict(hidden=768, depth=12, heads=12, mlp=3072, patch=16, global_size=224,
                 local_size=96, local_crops=8, batch=16, prototypes=65536, head_hidden=2048,
                 bottleneck=256),
    "densenet": dict(init_features=64, growth_rate=32, block_config=(6, 12, 24, 16), roi=96,
                     batch=2, classes=2),
    "lora": dict(hidden=768, depth=12, heads=12, mlp=3072, patch=16, slice_size=224, slices=128,
                 batch=4, classes=2, rank=8, remat=True),
}
DRY = {
    # MONAI's SwinUNETR needs > 1 voxel in its deepest map, the SSL heads 2 tokens: 64 on an axis.
    "swin": dict(feature=12, depths=(1, 1, 1, 1), roi=(64, 32, 32), batch=1, in_channels=4,
                 out_channels=3),
    "ssl": dict(feature=12, depths=(1, 1, 1, 1), roi=(64, 32, 32), batch=1, channels=2),
    "pctnet": dict(size=(16, 32, 32), features=(4, 8, 16, 32, 64), depths=(1, 1, 1), batch=2),
    "loop": dict(feature=12, depths=(1, 1, 1, 1), roi=64, batch=1, cases=2, shape=(64, 64, 64),
                 steps=1, workers=1),  # bench_train's crops are cubic
    "vit": dict(hidden=32, depth=1, heads=2, mlp=64, patch=16, roi=32, batch=2, classes=2),
    "dino": dict(hidden=32, depth=1, heads=2, mlp=64, patch=8, global_size=32, local_size=16,
                 local_crops=2, batch=4, prototypes=64, head_hidden=32, bottleneck=16),
    "densenet": dict(init_features=8, growth_rate=4, block_config=(1, 1, 1, 1), roi=32, batch=2,
                     classes=2),
    "lora": dict(hidden=32, depth=1, heads=2, mlp=64, patch=8, slice_size=32, slices=4, batch=2,
                 classes=2, rank=4, remat=False),
}
BUDGET_S = {"swin": 110, "ssl": 80, "pctnet": 80, "loop": 70, "vit": 50, "densenet": 50,
            "dino": 70, "lora": 70}
# (row key, benchmark, label); a benchmark's worker may report several rows.
ROWS = [("swin", "swin", "SwinUNETR train step"),
        ("ssl", "ssl", "BrainSegFounder SSL step"),
        ("ssl_views", "ssl", "SSL augmentation (2 views)"),
        ("pctnet", "pctnet", "PCT-Net Volume Fusion step"),
        ("pctnet_fusion", "pctnet", "Volume Fusion alone"),
        ("loop", "loop", "training loop with data (cache)"),
        ("vit", "vit", "3D ViT classifier train step"),
        ("densenet", "densenet", "3D DenseNet classifier train step"),
        ("dino", "dino", "BrainDINO self-distillation step"),
        ("lora", "lora", "BrainDINO LoRA whole-scan probe step")]
# Rows with their own compiled step: FLOPs, peak memory and MFU are theirs.
OWN_STEP = ("swin", "ssl", "pctnet", "loop", "vit", "densenet", "dino", "lora")
BENCHMARKS = list(BUDGET_S)


def _spatial(roi) -> tuple:
    return (roi,) * 3 if isinstance(roi, int) else tuple(roi)


def _roi_label(roi) -> str:
    return f"{roi}^3" if isinstance(roi, int) else "x".join(map(str, roi))


def size_label(name: str, s: dict, precision: str) -> str:
    if name == "swin":
        return (f"feature {s['feature']}, depths {','.join(map(str, s['depths']))}, {_roi_label(s['roi'])}, "
                f"batch {s['batch']}, {s['in_channels']}->{s['out_channels']}, {precision}")
    if name == "ssl":
        return (f"feature {s['feature']}, depths {','.join(map(str, s['depths']))}, {_roi_label(s['roi'])}, "
                f"batch {s['batch']} x 2 views, {s['channels']} ch, {precision}")
    if name == "pctnet":
        return (f"features {','.join(map(str, s['features']))}, depths "
                f"{','.join(map(str, s['depths']))}, {'x'.join(map(str, s['size']))}, "
                f"batch {s['batch']}, {precision}")
    if name == "vit":
        return (f"width {s['hidden']}, depth {s['depth']}, heads {s['heads']}, patch "
                f"{s['patch']}, {_roi_label(s['roi'])}, 1 ch, batch {s['batch']}, "
                f"{s['classes']} classes, {precision}")
    if name == "dino":
        return (f"ViT width {s['hidden']}, depth {s['depth']}, patch {s['patch']}, 2 x "
                f"{s['global_size']} + {s['local_crops']} x {s['local_size']} crops, batch "
                f"{s['batch']}, {s['prototypes']} prototypes, {precision}")
    if name == "lora":
        return (f"ViT width {s['hidden']}, depth {s['depth']}, patch {s['patch']}, LoRA rank "
                f"{s['rank']} on q, v, batch {s['batch']} x {s['slices']} slices of "
                f"{s['slice_size']}, {s['classes']} classes{', remat' if s['remat'] else ''}, "
                f"{precision}")
    if name == "densenet":
        return (f"blocks {','.join(map(str, s['block_config']))}, growth {s['growth_rate']}, "
                f"stem {s['init_features']}, {_roi_label(s['roi'])}, 1 ch, batch {s['batch']}, "
                f"{s['classes']} classes, {precision}")
    return (f"feature {s['feature']}, depths {','.join(map(str, s['depths']))}, {s['roi']}^3, "
            f"batch {s['batch']}, {s['cases']} cases {'x'.join(map(str, s['shape']))}, "
            f"{s['workers']} workers, {precision}")


# ---------------------------------------------------------------------------------------------
# Wheels
# ---------------------------------------------------------------------------------------------


def pyproject_dependencies() -> list[str]:
    path = os.path.join(ROOT, "pyproject.toml")
    try:
        import tomllib
        with open(path, "rb") as f:
            return list(tomllib.load(f)["project"]["dependencies"])
    except ImportError:  # Python 3.10
        with open(path) as f:
            block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", f.read(), re.S | re.M).group(1)
        return re.findall(r'"([^"]+)"', block)


def _dist_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0)


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def install_requirements() -> list[str]:
    """The five packages, then each pyproject.toml dependency that is not installed."""
    names = {_dist_name(r).lower().replace("_", "-") for r in WHEEL_PACKAGES}
    extra = [r for r in pyproject_dependencies()
             if _dist_name(r).lower().replace("_", "-") not in names and not _installed(_dist_name(r))]
    return WHEEL_PACKAGES + extra


def install_wheels(folder: str) -> None:
    if not os.path.isdir(folder):
        raise SystemExit(f"--wheels {folder}: no such folder")
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links",
           os.path.abspath(folder), *install_requirements()]
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    if subprocess.run(cmd, stdout=sys.stderr).returncode:
        raise SystemExit(f"installing from {folder} failed (see pip's message above); build the "
                         f"folder with: python bench/gpu.py --prepare-wheels {folder}")
    importlib.invalidate_caches()


def download_commands(folder: str, python_version: str, platforms: list[str]) -> list[list[str]]:
    base = [sys.executable, "-m", "pip", "download", "--dest", os.path.abspath(folder),
            "--only-binary=:all:", "--implementation", "cp", "--python-version", python_version]
    for p in platforms:
        base += ["--platform", p]
    deps = [p for p in WHEEL_PACKAGES if p not in NO_DEPS]
    return [base + ["--no-deps", *sorted(NO_DEPS)], base + deps]


def default_platforms() -> list[str]:
    return ([f"manylinux_2_{v}_x86_64" for v in range(GLIBC_MAX, 16, -1)]
            + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"])


def prepare_wheels(folder: str, python_version: str, platforms: list[str]) -> None:
    os.makedirs(folder, exist_ok=True)
    for cmd in download_commands(folder, python_version, platforms):
        print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
    print(f"{folder}: {len(os.listdir(folder))} files; on the GPU machine: "
          f"python bench/gpu.py --wheels {folder}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Worker side: one benchmark, one framework, in this process
# ---------------------------------------------------------------------------------------------


def _paths():
    for p in (BENCH, ROOT):
        if p not in sys.path:
            sys.path.insert(0, p)


class Clock:
    """Timed repetitions within a deadline: at least one, at most ``repeats``."""

    def __init__(self, repeats: int, warmup: int, deadline: float):
        self.repeats, self.warmup, self.deadline = repeats, warmup, deadline

    def median(self, fn) -> dict:
        for _ in range(self.warmup):
            fn()
        times = []
        while len(times) < self.repeats:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            if time.time() + max(times) > self.deadline:
                break
        return {"step_s": statistics.median(times), "times": times}


def _jax_info(out: dict) -> dict:
    import jax
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform == "gpu" else None
    out.update(device_kind=dev.device_kind, platform=dev.platform,
               peak_bytes=(stats or {}).get("peak_bytes_in_use"))
    return out


def _flops(stage) -> float | None:
    cost = stage.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def host_init(model, x, seed: int = 0) -> dict:
    """The model's variables, of its init's shapes, drawn on the host (kernels normal with
    1/sqrt(fan-in), norm scales and variances 1, biases and means 0, others 0.02 normal): no
    init program to compile (PCT-Net's takes minutes on a CPU); a step's speed does not depend
    on the values."""
    import jax
    import numpy as np
    import flax.linen as nn
    from flax import traverse_util
    abstract = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(seed), x)))
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in traverse_util.flatten_dict(abstract).items():
        name, shape = path[-1], tuple(leaf.shape)
        if name == "kernel":
            a = rng.normal(0, 1 / np.sqrt(max(1, int(np.prod(shape[:-1])))), shape)
        elif name in ("scale", "var"):
            a = np.ones(shape)
        elif name in ("bias", "mean"):
            a = np.zeros(shape)
        else:
            a = 0.02 * rng.normal(size=shape)
        out[path] = jax.numpy.asarray(a.astype(leaf.dtype))
    return traverse_util.unflatten_dict(out)


def _jax_time_step(step, state, batch, clock: Clock) -> dict:
    """Compiles ``step(state, batch) -> (state, metrics)`` (state donated), times it."""
    import jax
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0,)).lower(state, batch).compile()
    out = {"compile_s": time.perf_counter() - t0, "flops": _flops(compiled)}
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready(metrics)

    out.update(clock.median(run))
    return out


def _jax_dtype(precision: str):
    import jax.numpy as jnp
    return jnp.bfloat16 if precision == "bf16" else jnp.float32


def _torch_setup():
    import torch
    cuda = torch.cuda.is_available()
    if cuda:
        torch.backends.cudnn.benchmark = True  # as the original training scripts set it
    return torch, torch.device("cuda" if cuda else "cpu"), cuda


def _torch_info(out: dict, cuda: bool) -> dict:
    import torch
    out.update(device_kind=torch.cuda.get_device_name() if cuda else "cpu",
               platform="gpu" if cuda else "cpu",
               peak_bytes=torch.cuda.max_memory_allocated() if cuda else None)
    return out


def _sync(cuda):
    if cuda:
        import torch
        torch.cuda.synchronize()


def jax_swin(s, precision, clock):
    """bench_swin_unetr.bench_jax's step (sigmoid BCE, AdamW), with the batch an argument."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jaxbrain.models import SwinUNETR

    spatial, batch = _spatial(s["roi"]), s["batch"]
    model = SwinUNETR(s["in_channels"], s["out_channels"], feature_size=s["feature"],
                      depths=tuple(s["depths"]), dtype=_jax_dtype(precision))
    rng = np.random.default_rng(0)
    data = {"x": jnp.asarray(rng.normal(size=(batch, *spatial, s["in_channels"])).astype(np.float32)),
            "y": jnp.asarray((rng.random((batch, *spatial, s["out_channels"])) > 0.5).astype(np.float32))}
    params = host_init(model, data["x"][:1])["params"]
    tx = optax.adamw(1e-4, weight_decay=1e-5)

    def step(state, b):
        def loss_fn(p):
            logits = model.apply({"params": p}, b["x"], train=True)
            return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), b["y"]).mean()
        loss, g = jax.value_and_grad(loss_fn)(state["p"])
        u, o = tx.update(g, state["o"], state["p"])
        return {"p": optax.apply_updates(state["p"], u), "o": o}, loss

    out = _jax_time_step(step, {"p": params, "o": tx.init(params)}, data, clock)
    return {"swin": _jax_info(dict(out, samples=batch))}


def torch_swin(s, precision, clock):
    """bench_swin_unetr.bench_torch's step alone (its forward timing and fixed warm-up left
    out): MONAI SwinUNETR, BCE with logits, AdamW; autocast bf16 on a GPU."""
    import numpy as np
    from monai.networks.nets import SwinUNETR as MonaiSwinUNETR
    torch, device, cuda = _torch_setup()
    amp = precision == "bf16" and cuda
    spatial, batch, cin, cout = _spatial(s["roi"]), s["batch"], s["in_channels"], s["out_channels"]
    torch.manual_seed(0)
    net = MonaiSwinUNETR(in_channels=cin, out_channels=cout, feature_size=s["feature"],
                         depths=tuple(s["depths"])).to(device)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(batch, cin, *spatial)).astype(np.float32)).to(device)
    y = torch.from_numpy((rng.random((batch, cout, *spatial)) > 0.5).astype(np.float32)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-5)
    bce = torch.nn.BCEWithLogitsLoss()

    def step():
        net.train()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = bce(net(x).float(), y)
        loss.backward()
        opt.step()
        _sync(cuda)

    return {"swin": _torch_info(dict(clock.median(step), samples=batch), cuda)}


def _ssl_crops(s):
    """bench_ssl._crops; a non-cubic ``roi`` (the dry run's: SSL needs 64 voxels on an axis)
    is drawn the same way."""
    import numpy as np
    from bench_ssl import _crops
    if isinstance(s["roi"], int):
        return _crops(SimpleNamespace(batch=s["batch"], roi=s["roi"], channels=s["channels"]))
    rng = np.random.default_rng(0)
    return rng.random((s["batch"], *s["roi"], s["channels"])).astype(np.float32)


def jax_ssl(s, precision, clock):
    """bench_ssl.bench_jax's step (SSLHead, merging_legacy, AdamW 4e-4 / 0.1) in ``precision``."""
    import jax
    import jax.numpy as jnp
    from ml_collections import ConfigDict
    from jaxbrain.models import SSLHead
    from jaxbrain.objectives.ssl import SSL
    from jaxbrain.training import loop
    from jaxbrain.training.optim import make_optimizer

    dtype = _jax_dtype(precision)
    model = SSLHead(s["channels"], feature_size=s["feature"], depths=tuple(s["depths"]),
                    downsample="merging_legacy", dtype=dtype)
    objective = SSL()
    tx, lr_fn = make_optimizer(ConfigDict(dict(name="adamw", lr=4e-4, weight_decay=0.1,
                                               schedule="constant")), 100)
    batch = {"image": jnp.asarray(_ssl_crops(s))}
    params = host_init(model, batch["image"][:1])["params"]
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(1))}
    out = _jax_time_step(loop.make_train_step(model, objective, tx, lr_fn, dtype), state, batch,
                         clock)
    rows = {"ssl": dict(out, samples=s["batch"])}

    views = jax.jit(objective.views)
    jax.block_until_ready(views(batch["image"], jax.random.key(0)))  # compile
    i = [0]

    def run_views():
        i[0] += 1
        jax.block_until_ready(views(batch["image"], jax.random.key(i[0])))

    rows["ssl_views"] = dict(clock.median(run_views), samples=s["batch"])
    for r in rows.values():
        _jax_info(r)
    return rows


def torch_ssl(s, precision, clock):
    """bench_ssl.bench_torch on the device: SSLReplica, the original's per-sample
    augmentation loops (on the device's tensors) and losses, AdamW; autocast bf16 on a GPU."""
    import numpy as np
    from torch_ssl import SSLReplica, cutout_batch, rotate_batch, ssl_loss
    torch, device, cuda = _torch_setup()
    amp = precision == "bf16" and cuda
    torch.manual_seed(0)
    np.random.seed(0)
    net = SSLReplica(s["channels"], s["feature"], depths=tuple(s["depths"])).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=4e-4, weight_decay=0.1)
    x = torch.from_numpy(np.ascontiguousarray(_ssl_crops(s).transpose(0, 4, 1, 2, 3))).to(device)

    def run_step():
        net.train()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = ssl_loss(net, x)
        loss.backward()
        opt.step()
        _sync(cuda)

    def run_views():
        x1, _ = rotate_batch(x)
        x2, _ = rotate_batch(x)
        cutout_batch(x1), cutout_batch(x2)
        _sync(cuda)

    rows = {"ssl": dict(clock.median(run_step), samples=s["batch"])}
    rows["ssl"] = _torch_info(rows["ssl"], cuda)
    rows["ssl_views"] = _torch_info(dict(clock.median(run_views), samples=s["batch"]), cuda)
    return rows


def _pct_args(s):
    return SimpleNamespace(batch=s["batch"], size=tuple(s["size"]))


def jax_pctnet(s, precision, clock):
    """bench_pctnet.bench_jax's step (PCTNet, deep supervision, VF objective, Adam)."""
    import jax
    import jax.numpy as jnp
    from ml_collections import ConfigDict
    from bench_pctnet import _crops
    from jaxbrain.models import PCTNet
    from jaxbrain.objectives.volume_fusion import VolumeFusion
    from jaxbrain.training import loop
    from jaxbrain.training.optim import make_optimizer

    dtype = _jax_dtype(precision)
    model = PCTNet(1, 5, input_size=tuple(s["size"]), features=tuple(s["features"]),
                   depths=tuple(s["depths"]), multiscale_pred=True, dtype=dtype)
    objective = VolumeFusion()
    tx, lr_fn = make_optimizer(ConfigDict(dict(name="adam", lr=1e-3, weight_decay=1e-5,
                                               schedule="constant")), 100)
    batch = {"image": jnp.asarray(_crops(_pct_args(s)))}
    variables = host_init(model, batch["image"][:1])
    params = variables.pop("params")
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(1)), "model_state": variables}
    out = _jax_time_step(loop.make_train_step(model, objective, tx, lr_fn, dtype), state, batch,
                         clock)
    rows = {"pctnet": dict(out, samples=s["batch"])}

    fuse = jax.jit(objective.fuse_batch)
    jax.block_until_ready(fuse(jax.random.key(0), batch["image"]))  # compile
    i = [0]

    def run_fuse():
        i[0] += 1
        jax.block_until_ready(fuse(jax.random.key(i[0]), batch["image"]))

    rows["pctnet_fusion"] = dict(clock.median(run_fuse), samples=s["batch"])
    for r in rows.values():
        _jax_info(r)
    return rows


def torch_pctnet(s, precision, clock):
    """bench_pctnet.bench_torch on the device: the replica, PyMIC's NumPy fusion on the host,
    then the batch to the device; the same loss; Adam; autocast bf16 on a GPU."""
    import random
    import numpy as np
    import torch.nn.functional as F
    from bench_pctnet import _crops, vf_numpy
    from torch_pctnet import PCTNet as TorchPCTNet
    torch, device, cuda = _torch_setup()
    amp = precision == "bf16" and cuda
    torch.manual_seed(0)
    random.seed(0)
    net = TorchPCTNet({"in_chns": 1, "class_num": 5, "input_size": list(s["size"]),
                       "feature_chns": list(s["features"]), "depths": list(s["depths"]),
                       "multiscale_pred": True}).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-5)
    images = np.ascontiguousarray(_crops(_pct_args(s)).transpose(0, 4, 1, 2, 3))

    def loss_fn(outputs, labels):  # bench_pctnet.bench_torch's loss
        y = F.one_hot(labels.long(), 5).permute(0, 4, 1, 2, 3).float()
        total, weights = 0.0, [1.0, 0.5, 0.25, 0.125]
        for w, o in zip(weights, outputs):
            p = torch.softmax(F.interpolate(o.float(), size=labels.shape[1:], mode="trilinear"), 1)
            dims = (0, 2, 3, 4)
            dice = (2 * (p * y).sum(dims) + 1e-5) / (p.sum(dims) + y.sum(dims) + 1e-5)
            ce = -(y * torch.log(p)).sum(1).mean()
            total = total + w * (0.5 * (1 - dice.mean()) + 0.5 * ce)
        return total / sum(weights)

    def run_step():
        net.train()
        fused, labels = vf_numpy(images)
        fused, labels = torch.from_numpy(fused).to(device), torch.from_numpy(labels).to(device)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(net(fused), labels)
        loss.backward()
        opt.step()
        _sync(cuda)

    rows = {"pctnet": _torch_info(dict(clock.median(run_step), samples=s["batch"]), cuda)}
    rows["pctnet_fusion"] = _torch_info(dict(clock.median(lambda: vf_numpy(images)),
                                             samples=s["batch"]), cuda)
    return rows


def _loop_args(s):
    return SimpleNamespace(feature=s["feature"], roi=s["roi"], batch=s["batch"],
                           steps=s["steps"], workers=s["workers"])


def _loop_files(s, data):
    """The synthetic BraTS 2021 cases (written once per run into ``data``)."""
    from jaxbrain.data import layouts, synthetic
    marker = os.path.join(data, ".complete")
    if not os.path.exists(marker):
        synthetic.write_brats(data, s["cases"], version=2021, shape=tuple(s["shape"]), seed=0)
        open(marker, "w").close()
    return [{"image": list(c.images), "label": c.label}
            for c in layouts.find_cases("brats", data)]


def jax_loop(s, precision, clock, data):
    """bench_train.jax_loop (train.py's loop on its cache), model and input in ``precision``;
    the FLOPs are those of the same step, lowered apart (not compiled again)."""
    import jax
    import jax.numpy as jnp
    import flax.linen as nn
    import bench_train
    from jaxbrain import models, objectives
    from jaxbrain.training import loop
    from jaxbrain.training.optim import make_optimizer

    _loop_files(s, data)
    args = _loop_args(s)
    out = {"warmup": 1, "repeats": 1}
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as workdir:
        c = bench_train._config(args, data, args.steps + 1, cache)
        c.model.depths = tuple(s["depths"])
        c.compute_dtype = "bfloat16" if precision == "bf16" else "float32"
        c.model.dtype = c.compute_dtype  # compute_dtype alone only casts the input
        t0 = time.perf_counter()
        last = loop.train_and_evaluate(c, workdir)
        out.update(steps_per_s=last["steps_per_s"], step_s=1 / last["steps_per_s"],
                   wall_s=time.perf_counter() - t0, samples=s["batch"])
    _jax_info(out)
    model = models.from_config(c.model)
    tx, lr_fn = make_optimizer(c.optim, c.total_steps)
    roi = (s["batch"], *(s["roi"],) * 3)
    batch = {"image": jax.ShapeDtypeStruct((*roi, 4), jnp.float32),
             "label": jax.ShapeDtypeStruct((*roi, 3), jnp.float32)}
    params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0),
                                                        jnp.zeros((1, *roi[1:], 4))))["params"])
    state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params,
             "opt_state": jax.eval_shape(tx.init, params),
             "rng": jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))}
    step = loop.make_train_step(model, objectives.create(**c.objective), tx, lr_fn,
                                models.DTYPES[c.compute_dtype])
    out["flops"] = _flops(jax.jit(step).lower(state, batch))
    return {"loop": out}


def torch_loop(s, precision, clock, data):
    """bench_train.torch_loop (MONAI transforms, CacheDataset, DataLoader workers), its model
    on the device (MONAI SwinUNETR, DiceLoss(sigmoid), AdamW; autocast bf16 on a GPU)."""
    files = _loop_files(s, data)
    import bench_train
    from monai.losses import DiceLoss
    from monai.networks.nets import SwinUNETR
    holder = {}

    def device_model(args):  # stands in for bench_train._torch_model: the same, on the device
        torch, device, cuda = _torch_setup()  # after the DataLoader has forked its workers
        amp = precision == "bf16" and cuda
        torch.manual_seed(0)
        net = SwinUNETR(in_channels=4, out_channels=3, feature_size=args.feature,
                        depths=tuple(s["depths"]), num_heads=(3, 6, 12, 24)).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-5)
        loss_fn = DiceLoss(to_onehot_y=False, sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5)
        holder["cuda"] = cuda

        def step(x, y):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            net.train()
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(net(x).float(), y)
            loss.backward()
            opt.step()
            _sync(cuda)
            return loss.detach()

        return step

    original = bench_train._torch_model
    bench_train._torch_model = device_model
    try:
        rate = bench_train.torch_loop(_loop_args(s), files, cached=True)
    finally:
        bench_train._torch_model = original
    out = {"steps_per_s": rate, "step_s": 1 / rate, "samples": s["batch"], "warmup": 1,
           "repeats": 1}
    return {"loop": _torch_info(out, holder.get("cuda", False))}


def _classifier_data(s):
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.normal(size=(s["batch"], *_spatial(s["roi"]), 1)).astype(np.float32)
    return x, rng.integers(0, s["classes"], s["batch"])


def _jax_classifier(model, s, clock) -> dict:
    """bench_vit.bench_jax's / bench_cnn3d.bench_jax's step: softmax cross-entropy on fixed
    labels, AdamW, the model's other collections (BatchNorm running statistics) updated by
    the training forward pass; the batch an argument."""
    import jax
    import jax.numpy as jnp
    import optax
    x, y = _classifier_data(s)
    batch = {"x": jnp.asarray(x), "y": jnp.asarray(y, jnp.int32)}
    variables = host_init(model, batch["x"][:1])
    params = variables.pop("params")
    tx = optax.adamw(1e-4, weight_decay=1e-5)

    def step(state, b):
        def loss_fn(p):
            logits, new = model.apply({"params": p, **state["v"]}, b["x"], train=True,
                                      mutable=list(state["v"]))
            ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), b["y"])
            return ce.mean(), new
        (loss, new), g = jax.value_and_grad(loss_fn, has_aux=True)(state["p"])
        u, o = tx.update(g, state["o"], state["p"])
        return {"p": optax.apply_updates(state["p"], u), "o": o, "v": dict(new)}, loss

    out = _jax_time_step(step, {"p": params, "o": tx.init(params), "v": variables}, batch, clock)
    return _jax_info(dict(out, samples=s["batch"]))


def _torch_classifier(net, s, precision, clock, logits_of=lambda out: out) -> dict:
    """The PyTorch side of :func:`_jax_classifier`: cross-entropy, AdamW, training mode;
    autocast bf16 on a GPU."""
    import numpy as np
    torch, device, cuda = _torch_setup()
    amp = precision == "bf16" and cuda
    x, y = _classifier_data(s)
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).to(device)
    y = torch.from_numpy(y).to(device)
    net = net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-5)
    ce = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = logits_of(net(x))
        ce(logits.float(), y).backward()
        opt.step()
        _sync(cuda)

    return _torch_info(dict(clock.median(step), samples=s["batch"]), cuda)


def jax_vit(s, precision, clock):
    """The 3D ViT (CLS token, linear head; MONAI's layout) as bench/bench_vit.py."""
    from jaxbrain.models import ViT
    model = ViT(1, _spatial(s["roi"]), s["patch"], hidden_size=s["hidden"], depth=s["depth"],
                num_heads=s["heads"], mlp_dim=s["mlp"], num_classes=s["classes"],
                dtype=_jax_dtype(precision))
    return {"vit": _jax_classifier(model, s, clock)}


def torch_vit(s, precision, clock):
    """MONAI's ViT (classification, no post-activation; it returns (logits, hidden states))."""
    import torch
    from monai.networks.nets import ViT as MonaiViT
    torch.manual_seed(0)
    net = MonaiViT(1, _spatial(s["roi"]), s["patch"], hidden_size=s["hidden"], mlp_dim=s["mlp"],
                   num_layers=s["depth"], num_heads=s["heads"], classification=True,
                   num_classes=s["classes"], post_activation=None)
    return {"vit": _torch_classifier(net, s, precision, clock, logits_of=lambda out: out[0])}


def jax_densenet(s, precision, clock):
    """The 3D DenseNet (BatchNorm in training mode) as bench/bench_cnn3d.py."""
    from jaxbrain.models.cnn3d import DenseNet
    model = DenseNet(1, s["classes"], init_features=s["init_features"],
                     growth_rate=s["growth_rate"], block_config=tuple(s["block_config"]),
                     dtype=_jax_dtype(precision))
    return {"densenet": _jax_classifier(model, s, clock)}


def torch_densenet(s, precision, clock):
    import torch
    from monai.networks.nets import DenseNet as MonaiDenseNet
    torch.manual_seed(0)
    net = MonaiDenseNet(3, 1, s["classes"], init_features=s["init_features"],
                        growth_rate=s["growth_rate"], block_config=tuple(s["block_config"]))
    return {"densenet": _torch_classifier(net, s, precision, clock)}


def jax_dino(s, precision, clock):
    """The loop's train step of objective "dino" on a DinoStudent (RoPE, no storage tokens,
    as the dinov2 package's ViT has none), centring, AdamW with the config's DINO options."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from ml_collections import ConfigDict
    from jaxbrain.models.dino import dino_preset
    from jaxbrain.models.dino_heads import DinoStudent
    from jaxbrain.objectives.dino import Dino
    from jaxbrain.training.loop import make_train_step
    from jaxbrain.training.optim import make_optimizer
    model = DinoStudent(**dino_preset(
        "braindino_vitb16", hidden_size=s["hidden"], depth=s["depth"], num_heads=s["heads"],
        mlp_dim=s["mlp"], patch_size=s["patch"], img_size=s["global_size"], num_registers=0,
        drop_path=0.0), head_prototypes=s["prototypes"], head_hidden=s["head_hidden"],
        head_bottleneck=s["bottleneck"], dtype=_jax_dtype(precision))
    objective = Dino(total_steps=1000, global_size=s["global_size"], local_size=s["local_size"],
                     local_crops=s["local_crops"], centering="centering")
    cfg = ConfigDict(dict(name="adamw", lr=1e-4, schedule="dino_cosine", warmup_steps=10,
                          weight_decay=0.04, weight_decay_end=0.4, decay_mask="dino",
                          grad_clip=3.0, clip_per_subtree=True, layer_decay=0.9,
                          lr_scale={"encoder/patch_embedding": 0.2}))
    tx, lr_fn = make_optimizer(cfg, 1000)
    x = jnp.zeros((1, s["global_size"], s["global_size"], 3))
    params = host_init(model, x)["params"]
    rng = np.random.default_rng(0)
    size = s["global_size"] + s["global_size"] // 8
    batch = {"image": jnp.asarray(rng.normal(size=(s["batch"], size, size, 3)), jnp.float32)}
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(0)),
             "objective": jax.jit(objective.init_state)(params)}  # own buffers (donated)
    step = make_train_step(model, objective, tx, lr_fn, _jax_dtype(precision))
    out = _jax_time_step(step, state, batch, clock)
    return {"dino": _jax_info(dict(out, samples=s["batch"]))}


def torch_dino(s, precision, clock):
    """The same step from the dinov2 package's modules (ssl_meta_arch's forward_backward with
    centring, restated): teacher (no gradient) on the global crops, student on global
    (masked) and local crops, DINO + iBOT + KoLeo, per-module clipping 3.0, AdamW, EMA."""
    import numpy as np
    torch, device, cuda = _torch_setup()
    from dinov2.layers import DINOHead
    from dinov2.loss import DINOLoss, iBOTPatchLoss, KoLeoLoss
    from dinov2.models.vision_transformer import DinoVisionTransformer
    amp = precision == "bf16" and cuda
    torch.manual_seed(0)
    d, k, b, nl = s["hidden"], s["prototypes"], s["batch"], s["local_crops"]

    def build():
        return torch.nn.ModuleDict(dict(
            backbone=DinoVisionTransformer(img_size=s["global_size"], patch_size=s["patch"],
                                           embed_dim=d, depth=s["depth"], num_heads=s["heads"],
                                           mlp_ratio=s["mlp"] / d, qkv_bias=False,
                                           init_values=1e-5, block_chunks=0),
            dino_head=DINOHead(d, k, hidden_dim=s["head_hidden"], bottleneck_dim=s["bottleneck"]),
            ibot_head=DINOHead(d, k, hidden_dim=s["head_hidden"], bottleneck_dim=s["bottleneck"]))).to(device)

    student, teacher = build(), build()  # weight-normalised heads cannot be deep-copied
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    dino_loss, ibot_loss, koleo = DINOLoss(k).to(device), iBOTPatchLoss(k).to(device), KoLeoLoss()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=0.04)
    rng = np.random.default_rng(0)
    g = torch.from_numpy(rng.normal(size=(2 * b, 3, s["global_size"], s["global_size"])).astype(np.float32)).to(device)
    loc = torch.from_numpy(rng.normal(size=(nl * b, 3, s["local_size"], s["local_size"])).astype(np.float32)).to(device)
    n = (s["global_size"] // s["patch"]) ** 2
    masks = np.zeros((2 * b, n), bool)
    edges = np.linspace(0.1, 0.5, b + 1)
    for i in range(b):  # int(0.5 * 2b) crops masked, stratified ratios (dinov2's collate)
        masks[i, rng.permutation(n)[:int(n * rng.uniform(edges[i], edges[i + 1]))]] = True
    masks = torch.from_numpy(rng.permutation(masks)).to(device)
    index = masks.flatten().nonzero().flatten()
    weight = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    temp, m = 0.04, 0.992

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            with torch.no_grad():
                t = teacher.backbone.forward_features(g)
                t_cls = teacher.dino_head(t["x_norm_clstoken"])
                t_patch = teacher.ibot_head(t["x_norm_patchtokens"].flatten(0, 1)[index])
                t_cls_p = dino_loss.softmax_center_teacher(t_cls, temp).chunk(2)
                t_patch_p = ibot_loss.softmax_center_teacher(t_patch[None], temp)[0]
                dino_loss.update_center(t_cls)
                ibot_loss.update_center(t_patch[None])
            sg = student.backbone.forward_features(g, masks=masks)
            sl = student.backbone.forward_features(loc)
            cls = student.dino_head(torch.cat([sg["x_norm_clstoken"], sl["x_norm_clstoken"]]))
            s_patch = student.ibot_head(sg["x_norm_patchtokens"].flatten(0, 1)[index])
            s_g, s_l = cls[:2 * b].chunk(2), cls[2 * b:].chunk(nl)
            local = dino_loss(list(s_l), list(t_cls_p)) / (2 * nl)
            glob = (dino_loss([s_g[0]], [t_cls_p[1]]) + dino_loss([s_g[1]], [t_cls_p[0]])) / 2
            share = 2 * nl / (2 + 2 * nl)
            loss = (share * local + (1 - share) * glob
                    + ibot_loss.forward_masked(s_patch, t_patch_p, masks, masks_weight=weight)
                    + 0.1 * sum(koleo(c) for c in sg["x_norm_clstoken"].chunk(2)))
        loss.float().backward()
        for module in student.values():
            torch.nn.utils.clip_grad_norm_(module.parameters(), 3.0)
        opt.step()
        with torch.no_grad():
            sp, tp = list(student.parameters()), list(teacher.parameters())
            torch._foreach_mul_(tp, m)
            torch._foreach_add_(tp, sp, alpha=1 - m)
        _sync(cuda)

    return {"dino": _torch_info(dict(clock.median(step), samples=b), cuda)}


def _lora_data(s):
    """Slice stacks (batch, S, H, W) of normal noise and class targets 0, 1, ... (float32)."""
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.normal(size=(s["batch"], s["slices"], s["slice_size"], s["slice_size"]))
    return x.astype(np.float32), (np.arange(s["batch"]) % s["classes"]).astype(np.float32)


def jax_lora(s, precision, clock):
    """The loop's train step of configs/braindino_probe.py:lora (model slice_scan, LoRA on q
    and v, optim.freeze="encoder" but "*/lora_*", Adam with its L2 weight decay, cross-entropy)
    at the sizes of ``s``, without storage tokens (the dinov2 package's ViT has none); the
    frozen weights are not differentiated. The parameter counts are those of the optimizer's
    own freeze labels."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jaxbrain import models, objectives
    from jaxbrain.training.config import load_config_file
    from jaxbrain.training.loop import make_train_step
    from jaxbrain.training.optim import freeze_rule, make_optimizer
    c = load_config_file(os.path.join(ROOT, "configs", "braindino_probe.py"), "lora")
    c.model.update(hidden_size=s["hidden"], depth=s["depth"], num_heads=s["heads"],
                   mlp_dim=s["mlp"], patch_size=s["patch"], img_size=s["slice_size"],
                   num_registers=0, lora_rank=s["rank"], num_classes=s["classes"],
                   remat=bool(s["remat"]))
    c.objective.num_classes = s["classes"]
    model = models.from_config(c.model, "bfloat16" if precision == "bf16" else "float32")
    encoder = models.encoder_name(model)
    tx, lr_fn = make_optimizer(c.optim, c.total_steps, encoder_name=encoder)
    x, y = _lora_data(s)
    batch = {"image": jnp.asarray(x), "target": jnp.asarray(y)}
    params = host_init(model, batch["image"][:1])["params"]
    rule = freeze_rule(c.optim, encoder)
    labels = jax.tree_util.tree_leaves(rule(params))
    sizes = [int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params)]
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(0))}
    step = make_train_step(model, objectives.create(**c.objective), tx, lr_fn,
                           _jax_dtype(precision), rule)
    out = _jax_time_step(step, state, batch, clock)
    return {"lora": _jax_info(dict(
        out, samples=s["batch"], slices=s["batch"] * s["slices"], params_total=sum(sizes),
        params_trainable=sum(n for n, l in zip(sizes, labels) if l == "train"),
        params_positions=0))}  # RoPE: no position parameters


def torch_lora(s, precision, clock):
    """BrainDINO's LoRA probe (networks/SliceStudent.py's add_lora_to_vit and mean-pooling
    forward, restated) on the dinov2 package's DinoVisionTransformer: every block's fused
    attn.qkv wrapped by a LoRA module (qkv(x), then q += b_q(a_q(x)) and v += b_v(a_v(x)) in
    place; a kaiming-uniform with a = sqrt(5), b zero), ``requires_grad`` off on the backbone
    but for the adapters, the LayerNorm-Linear-GELU-Linear head, cross-entropy, Adam 1e-4
    (weight decay 1e-5) over the trainable parameters."""
    import math
    import numpy as np
    os.environ.setdefault("XFORMERS_DISABLED", "1")  # dinov2's plain attention, no xformers
    torch, device, cuda = _torch_setup()
    from dinov2.models.vision_transformer import DinoVisionTransformer
    nn = torch.nn
    amp = precision == "bf16" and cuda

    class LoRA(nn.Module):
        def __init__(self, qkv, rank):
            super().__init__()
            self.qkv, self.dim = qkv, qkv.in_features
            for name in ("q", "v"):
                a = nn.Linear(self.dim, rank, bias=False)
                b = nn.Linear(rank, self.dim, bias=False)
                nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
                nn.init.zeros_(b.weight)
                setattr(self, f"linear_a_{name}", a)
                setattr(self, f"linear_b_{name}", b)

        def forward(self, x):
            qkv = self.qkv(x)
            qkv[..., :self.dim] += self.linear_b_q(self.linear_a_q(x))
            qkv[..., -self.dim:] += self.linear_b_v(self.linear_a_v(x))
            return qkv

    torch.manual_seed(0)
    d, b, n = s["hidden"], s["batch"], s["slices"]
    backbone = DinoVisionTransformer(img_size=s["slice_size"], patch_size=s["patch"], embed_dim=d,
                                     depth=s["depth"], num_heads=s["heads"], mlp_ratio=s["mlp"] / d,
                                     qkv_bias=False, init_values=1e-5, block_chunks=0)
    backbone.requires_grad_(False)
    for blk in backbone.blocks:
        blk.attn.qkv = LoRA(blk.attn.qkv, s["rank"])  # new modules: trainable
    head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, s["classes"]))
    net = nn.ModuleDict(dict(student=backbone, cls_head=head)).to(device).train()
    trainable = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=1e-4, weight_decay=1e-5)
    ce = nn.CrossEntropyLoss()
    x, y = _lora_data(s)
    x = torch.from_numpy(x).to(device)
    y = torch.from_numpy(y.astype(np.int64)).to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            slices = x.reshape(b * n, 1, *x.shape[2:]).repeat(1, 3, 1, 1)  # as SliceStudent
            cls = backbone.forward_features(slices)["x_norm_clstoken"]
            logits = head(cls.reshape(b, n, -1).mean(dim=1))
        ce(logits.float(), y).backward()
        opt.step()
        _sync(cuda)

    out = dict(clock.median(step), samples=b, slices=b * n,
               params_total=sum(p.numel() for p in net.parameters()),
               params_trainable=sum(p.numel() for p in trainable),
               params_positions=backbone.pos_embed.numel())
    return {"lora": _torch_info(out, cuda)}


def check_lora_params(ours: dict, theirs: dict) -> None:
    """Both sides of the LoRA probe must train the same number of parameters and hold the
    same number once their position tables are set aside (the dinov2 ViT's learned
    ``pos_embed``; RoPE has none): a ValueError naming the counts otherwise."""
    keys = ("params_trainable", "params_total", "params_positions")
    missing = [f"{side}.{k}" for side, row in (("jaxbrain", ours), ("dinov2", theirs))
               for k in keys if k not in row]
    if missing:
        raise ValueError(f"LoRA probe rows lack the parameter counts {missing}")
    rest = [row["params_total"] - row["params_positions"] for row in (ours, theirs)]
    if ours["params_trainable"] != theirs["params_trainable"] or rest[0] != rest[1]:
        raise ValueError(
            f"LoRA probe parameter counts differ: trainable jaxbrain {ours['params_trainable']:,}"
            f" vs dinov2 {theirs['params_trainable']:,}; total without position tables "
            f"jaxbrain {rest[0]:,} vs dinov2 {rest[1]:,}")


WORKERS = {("swin", "jax"): jax_swin, ("swin", "torch"): torch_swin,
           ("ssl", "jax"): jax_ssl, ("ssl", "torch"): torch_ssl,
           ("pctnet", "jax"): jax_pctnet, ("pctnet", "torch"): torch_pctnet,
           ("loop", "jax"): jax_loop, ("loop", "torch"): torch_loop,
           ("vit", "jax"): jax_vit, ("vit", "torch"): torch_vit,
           ("densenet", "jax"): jax_densenet, ("densenet", "torch"): torch_densenet,
           ("dino", "jax"): jax_dino, ("dino", "torch"): torch_dino,
           ("lora", "jax"): jax_lora, ("lora", "torch"): torch_lora}


def worker_main(task: str, spec_json: str, result: str) -> int:
    _paths()
    spec = json.loads(spec_json)
    name, side = task.split(":")
    clock = Clock(spec["repeats"], spec["warmup"], spec["deadline"])
    extra = (spec["data"],) if name == "loop" else ()
    try:
        rows = WORKERS[name, side](spec["sizes"], spec["precision"], clock, *extra)
        for r in rows.values():
            r.setdefault("warmup", clock.warmup)
            r.setdefault("repeats", len(r.get("times", [])) or clock.repeats)
        payload = {"rows": rows}
        code = 0
    except BaseException as e:  # noqa: BLE001 -- reported as the row's error
        traceback.print_exc()
        payload = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"}
        code = 1
    with open(result, "w") as f:
        json.dump(payload, f)
    return code


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def run_worker(task: str, spec: dict, timeout: float, env: dict, tmp: str) -> dict:
    """Runs one side in a child process (its own session, killed as a group on timeout);
    its output is echoed to stderr. Returns the worker's payload, or {"error": ...}."""
    result = os.path.join(tmp, task.replace(":", "_") + ".json")
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", task, "--_spec",
           json.dumps(spec), "--_result", result]
    tail = collections.deque(maxlen=40)
    print(f"--- {task} (limit {timeout:.0f} s)", file=sys.stderr, flush=True)
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            cwd=ROOT, start_new_session=True, text=True, errors="replace")

    def pump():
        for line in proc.stdout:
            tail.append(line.rstrip())
            sys.stderr.write(f"[{task}] {line}")
        sys.stderr.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False

    def kill():
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    try:
        proc.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        timed_out = True
        kill()
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): the child's group goes too
        kill()
        raise
    reader.join(timeout=10)
    elapsed = time.time() - t0
    if timed_out:
        return {"error": f"timed out after {elapsed:.0f} s (budget)", "elapsed_s": elapsed}
    try:
        with open(result) as f:
            payload = json.load(f)
    except (OSError, ValueError):
        last = next((l for l in reversed(tail) if l.strip()), "")
        payload = {"error": f"exit status {proc.returncode}: {last[:200]}"}
    payload["elapsed_s"] = elapsed
    return payload


def _fmt_rate(v):
    return f"{v:.3g}" if v >= 100 else f"{v:.3f}" if v < 1 else f"{v:.2f}"


def _fmt_mem(b):
    return "n/a" if b is None else f"{b / 2 ** 30:.2f} GiB"


def _fmt_mfu(m):
    return "n/a" if m is None else f"{100 * m:.1f}%"


def _versions() -> str:
    parts = []
    for name in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "torch",
                 "monai"):
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(parts)


def make_table(results: dict, specs: dict, args) -> tuple[str, list[dict]]:
    """Markdown: the machine, then one row per measurement."""
    kinds = {}
    for side in ("jax", "torch"):
        for res in results.values():
            for r in res.get(side, {}).get("rows", {}).values():
                kinds.setdefault(side, f"{r.get('device_kind')} ({r.get('platform')})")
    peak = None
    jax_kind = next((r.get("device_kind") for res in results.values()
                     for r in res.get("jax", {}).get("rows", {}).values()
                     if r.get("platform") == "gpu"), None)
    if jax_kind:
        peak = peak_flops(jax_kind)
    reps = ("1 timed run, no warm-up beyond compilation" if args.repeats == 1 and args.warmup == 0
            else f"median of {args.repeats} timed runs after {args.warmup} warm-up")
    lines = [
        "# jaxbrain vs PyTorch / MONAI, GPU benchmarks" + (" (dry run)" if args.dry_run else ""),
        "",
        f"machine: jax device {kinds.get('jax', 'n/a')}, torch device {kinds.get('torch', 'n/a')}; "
        f"{_versions()}; Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Compute {args.precision}" + (" (torch: autocast bf16)" if args.precision == "bf16" else "")
        + f"; {reps} (loop: steps/s of the loop after compilation / warm-up, times the batch); "
        "ratio = jaxbrain samples/s / PyTorch samples/s (above 1: jaxbrain faster); MFU = FLOPs "
        "of jaxbrain's compiled step (XLA cost analysis; loop: lowered step) / step time / "
        f"device peak bf16 ({'n/a' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}), the same "
        "FLOPs for both sides.",
        "",
        "| benchmark | size | jaxbrain samples/s | PyTorch samples/s | ratio | jaxbrain peak mem "
        "| PyTorch peak mem | jaxbrain MFU | PyTorch MFU | TFLOP/step | jaxbrain compile | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    records = []
    for key, bench, label in ROWS:
        if bench not in results:
            continue
        res, sizes = results[bench], specs[bench]
        sides, errors = {}, []
        for side, who in (("jax", "jaxbrain"), ("torch", "PyTorch")):
            payload = res.get(side, {})
            row = payload.get("rows", {}).get(key)
            if row is None:
                errors.append(f"{who}: {payload.get('error', 'no result')}")
            sides[side] = row or {}
        j, t = sides["jax"], sides["torch"]
        if key == "lora" and j and t:  # both sides must be the same model
            try:
                check_lora_params(j, t)
            except ValueError as e:
                errors.append(str(e))
        rate = {k: (v["samples"] / v["step_s"] if v.get("step_s") else None) for k, v in sides.items()}
        flops = j.get("flops") if key in OWN_STEP else None
        mfu = {}
        for side, v in sides.items():
            on_gpu = v.get("platform") == "gpu"
            mfu[side] = (flops / v["step_s"] / peak if flops and peak and on_gpu and v.get("step_s")
                         else None)
        shared = key not in OWN_STEP  # sub-measurements: no own peak
        ratio = (f"{rate['jax'] / rate['torch']:.2f}x" if rate["jax"] and rate["torch"] else "-")
        cells = [
            label, size_label(bench, sizes, args.precision),
            _fmt_rate(rate["jax"]) if rate["jax"] else "-",
            _fmt_rate(rate["torch"]) if rate["torch"] else "-", ratio,
            "-" if shared else (_fmt_mem(j.get("peak_bytes")) if j else "-"),
            "-" if shared else (_fmt_mem(t.get("peak_bytes")) if t else "-"),
            "-" if shared else (_fmt_mfu(mfu["jax"]) if j else "-"),
            "-" if shared else (_fmt_mfu(mfu["torch"]) if t else "-"),
            f"{flops / 1e12:.3g}" if flops else "-",
            f"{j['compile_s']:.0f} s" if j.get("compile_s") else "-",
            "; ".join(errors).replace("|", "/") or "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
        records.append(dict(key=key, benchmark=bench, label=label, sizes=sizes, jax=j, torch=t,
                            ratio=(rate["jax"] / rate["torch"] if rate["jax"] and rate["torch"]
                                   else None), mfu=mfu, errors=errors))
    return "\n".join(lines) + "\n", records


def _parse_set(items, specs):
    for item in items:
        k, _, v = item.partition("=")
        bench, _, field = k.partition(".")
        if bench not in specs or field not in specs[bench]:
            raise SystemExit(f"--set {item}: expected BENCH.FIELD=VALUE with BENCH.FIELD one of "
                             + ", ".join(f"{b}.{f}" for b in specs for f in specs[b]))
        try:
            value = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            value = v
        specs[bench][field] = value


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true",
                   help="tiny sizes on the CPU, 1 timed run, no warm-up: checks the script")
    p.add_argument("--device", choices=["auto", "cpu"], default=None,
                   help="cpu: hide GPUs from both sides (default for --dry-run); auto: what is there")
    p.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma list of {BENCHMARKS}")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 5; dry run 1)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs (default 1; dry run 0)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None,
                   help="default: bf16, or fp32 when on the CPU")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds per benchmark (default: " + ", ".join(f"{k} {v}" for k, v in BUDGET_S.items())
                   + "; dry run 600 each); unused time goes to the next")
    p.add_argument("--set", action="append", default=[], metavar="BENCH.FIELD=VALUE",
                   help="change a size, e.g. swin.roi=96, pctnet.features=(8,16,32,64,128)")
    p.add_argument("--out", default="gpu_results.md", help="Markdown table (and .json next to it)")
    p.add_argument("--wheels", metavar="DIR", help="first pip install the missing packages from DIR")
    p.add_argument("--install-only", action="store_true", help="with --wheels: stop after installing")
    p.add_argument("--prepare-wheels", metavar="DIR", help="pip download the wheels into DIR, then stop")
    p.add_argument("--python-version", default="3.11", help="--prepare-wheels: target Python")
    p.add_argument("--platform", action="append", default=None,
                   help="--prepare-wheels: target platform tags (default manylinux x86_64, glibc <= 2.28)")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    p.add_argument("--_spec", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._worker:
        return worker_main(args._worker, args._spec, args._result)
    if args.prepare_wheels:
        prepare_wheels(args.prepare_wheels, args.python_version, args.platform or default_platforms())
        return 0
    if args.wheels:
        install_wheels(args.wheels)
        if args.install_only:
            print("installed; nothing else to do (--install-only)", file=sys.stderr)
            return 0
    elif args.install_only:
        raise SystemExit("--install-only needs --wheels DIR")

    device = args.device or ("cpu" if args.dry_run else "auto")
    specs = copy.deepcopy(DRY if args.dry_run else FULL)
    _parse_set(args.set, specs)
    args.repeats = args.repeats or (1 if args.dry_run else 5)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.dry_run else 1)
    if args.precision is None:
        args.precision = "fp32" if device == "cpu" else "bf16"
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        raise SystemExit(f"--only: unknown {sorted(unknown)}; choose from {BENCHMARKS}")

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([BENCH, ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    if device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
    if args.dry_run:
        # The same programs, compiled with less optimisation (quicker on a CPU), and kept: a
        # second dry run does not compile them again.
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                            " --xla_llvm_disable_expensive_passes=true").strip()
        env.setdefault("JAX_COMPILATION_CACHE_DIR",
                       os.path.join(tempfile.gettempdir(), "jaxbrain_gpu_dry_run_xla"))
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    results, carry, t_start = {}, 0.0, time.time()
    with tempfile.TemporaryDirectory(prefix="jaxbrain_gpu_") as tmp:
        data = os.path.join(tmp, "brats")
        for name in BENCHMARKS:
            if name not in names:
                continue
            budget = (args.budget or (600 if args.dry_run else BUDGET_S[name])) + carry
            t0 = time.time()
            deadline = t0 + budget
            results[name] = {}
            # torch first, with at most 60% of the budget: the jax side (compilation) gets the rest.
            for side, share in (("torch", 0.6), ("jax", 1.0)):
                limit = share * (deadline - time.time())
                if limit < 5:
                    results[name][side] = {"error": "no time left in the budget"}
                    continue
                spec = dict(sizes=specs[name], precision=args.precision, repeats=args.repeats,
                            warmup=args.warmup, deadline=time.time() + 0.85 * limit, data=data)
                # JAX in a torch process (jaxbrain.data, imported for the loop's files) stays
                # off the GPU: it would take most of its memory.
                side_env = dict(env, JAX_PLATFORMS="cpu") if side == "torch" else env
                results[name][side] = run_worker(f"{name}:{side}", spec, limit, side_env, tmp)
            carry = max(0.0, deadline - time.time())
        total = time.time() - t_start

    table, records = make_table(results, specs, args)
    table += f"\nTotal wall time {total:.0f} s.\n"
    print(table)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(table)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump({"records": records, "raw": results, "specs": specs, "versions": _versions(),
                   "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
                   "total_s": total}, f, indent=1, default=str)
    print(f"written: {out}", file=sys.stderr)
    return 1 if any(r["errors"] for r in records) or len(records) == 0 else 0


if __name__ == "__main__":
    sys.exit(main())

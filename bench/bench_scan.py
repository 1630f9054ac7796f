"""Compile time of a whole-scan ViT training step against depth, blocks unrolled or under
``nn.scan`` (``model.scan_blocks=True``).

    python bench/bench_scan.py                           # ViT-B (12), ViT-L (24), 40 blocks; CPU
    python bench/bench_scan.py --depths b:12 --remat dots_with_no_batch_dims_saveable
    python bench/bench_scan.py --topology v5e:2x2    # a TPU slice, ahead of time (libtpu)
    python bench/bench_scan.py --layouts scan        # the scanned step only

The step is the whole-scan classifier's (``configs/brain_classification.py``'s ViT: MONAI
layout, 1 channel, 96^3, patch 16): forward in training mode, softmax cross-entropy, gradients
and an AdamW update of every parameter, jitted with the state donated, lowered on abstract
values (no weights materialised) and compiled for the local CPU or, with ``--topology``, for a
TPU slice (data parallel over its chips, ahead of time: ``pip install -e '.[tpu]'``). Printed
as a Markdown table: trace + lowering and compilation seconds per model and layout.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name -> (hidden, heads, MLP); the depth is given per row.
WIDTHS = {"b": (768, 12, 3072), "l": (1024, 16, 4096)}
DEFAULT_ROWS = ("b:12", "l:24", "b:40")


def _row(spec: str) -> tuple[str, int]:
    width, _, depth = spec.partition(":")
    if width not in WIDTHS or not depth.isdigit():
        raise SystemExit(f"--depths {spec!r}: expected <{'|'.join(WIDTHS)}>:<blocks>, e.g. b:12")
    return width, int(depth)


def step_times(width: str, depth: int, scan: bool, args, devices) -> tuple[float, float]:
    """(trace + lower seconds, compile seconds) of the train step."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jaxbrain.models import ViT

    hidden, heads, mlp = WIDTHS[width]
    model = ViT(in_channels=1, img_size=args.size, patch_size=16, hidden_size=hidden, depth=depth,
                num_heads=heads, mlp_dim=mlp, num_classes=2, dropout=0.0, drop_path=0.1,
                remat=args.remat is not None, remat_policy=args.remat, scan_blocks=scan,
                dtype=jnp.bfloat16 if args.bf16 else jnp.float32)
    mesh = jax.sharding.Mesh(devices, ("data",))
    replicated, batched = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    batch = args.per_chip_batch * len(devices)
    x = jax.ShapeDtypeStruct((batch, *(args.size,) * 3, 1), jnp.float32, sharding=batched)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=batched)
    tx = optax.adamw(1e-4, weight_decay=0.05)

    def init(key):
        params = model.init(key, jnp.zeros((1, *(args.size,) * 3, 1)))["params"]
        return {"params": params, "opt_state": tx.init(params)}

    abstract = jax.eval_shape(init, jax.random.key(0))
    abstract = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)

    def train_step(state, x, y, key):
        def loss_fn(params):
            logits = model.apply({"params": params}, x, train=True,
                                 rngs={"dropout": jax.random.wrap_key_data(key)})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, loss

    step = jax.jit(train_step, donate_argnums=(0,))
    t0 = time.perf_counter()
    lowered = step.lower(abstract, x, y, key)
    t1 = time.perf_counter()
    lowered.compile()
    return t1 - t0, time.perf_counter() - t1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", nargs="+", default=list(DEFAULT_ROWS),
                   help="rows as <width>:<blocks>, width b (ViT-B: 768/12/3072) or l (ViT-L)")
    p.add_argument("--size", type=int, default=96, help="input edge (voxels)")
    p.add_argument("--per_chip_batch", type=int, default=2)
    p.add_argument("--remat", default=None, help="remat_policy (jax.checkpoint_policies name)")
    p.add_argument("--bf16", action="store_true", help="compute in bfloat16")
    p.add_argument("--topology", default=None, help="a TPU slice, e.g. v5e:2x2 (libtpu, no TPU)")
    p.add_argument("--layouts", nargs="+", choices=("unrolled", "scan"), default=["unrolled", "scan"],
                   help="which layouts to compile (cells of the other are left empty)")
    args = p.parse_args(argv)
    rows = [_row(r) for r in args.depths]

    import jax
    import numpy as np
    if args.topology:
        from jax.experimental import topologies
        devices = list(topologies.get_topology_desc(topology_name=args.topology, platform="tpu").devices)
        target = f"TPU {args.topology} ({len(devices)} chips, deviceless)"
    else:
        devices = jax.devices()[:1]
        target = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    devices = np.asarray(devices)
    print(f"jax {jax.__version__}, compiled for {target}; {args.size}^3, per-chip batch "
          f"{args.per_chip_batch}, remat {args.remat or 'off'}, {'bf16' if args.bf16 else 'float32'}\n")
    print("| model | blocks | unrolled: lower s | unrolled: compile s | scan: lower s | scan: compile s |")
    print("|---|---|---|---|---|---|")
    for width, depth in rows:
        cells = []
        for scan in (False, True):
            if ("scan" if scan else "unrolled") in args.layouts:
                cells.extend(f"{t:.1f}" for t in step_times(width, depth, scan, args, devices))
            else:
                cells.extend(("-", "-"))
        print(f"| ViT-{width.upper()} | {depth} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

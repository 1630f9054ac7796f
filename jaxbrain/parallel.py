"""Device meshes and parameter placement by logical axis names.

Models annotate every parameter with logical axis names (``jaxbrain.models.blocks``). A rule
table maps logical names to mesh axes; ``"replicate"`` keeps every parameter whole on every
device, ``"fsdp"`` shards the largest weight axes over the ``fsdp`` mesh axis. An axis whose size
the mesh axis does not divide stays unsharded, so any model size fits any mesh.

    mesh = make_mesh({"data": -1, "fsdp": 1})
    shardings = param_shardings(abstract_variables["params"], mesh, RULES["replicate"])
    batch = jax.device_put(batch, batch_sharding(mesh))
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import jax
import flax.linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

RULES: dict[str, Rules] = {
    "replicate": (),
    "fsdp": (
        ("conv_out", "fsdp"),
        ("embed", "fsdp"),
        ("mlp", "fsdp"),
        ("qkv", "fsdp"),
        ("merge", "fsdp"),
    ),
}

BATCH_AXES = ("data", "fsdp")


def make_mesh(axes: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh with the named axes; one size may be -1 to take all remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    names, sizes = list(axes), list(axes.values())
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {dict(axes)}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh {dict(axes)}: {len(devices)} devices not divisible by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, "
                         f"have {len(devices)}")
    return Mesh(np.asarray(devices).reshape(sizes), tuple(names))


def _mesh_axes_for(logical: str | None, rules: Rules) -> tuple[str, ...]:
    for name, target in rules:
        if name == logical:
            if target is None:
                return ()
            return (target,) if isinstance(target, str) else tuple(target)
    return ()


def spec_for(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
             rules: Rules) -> P:
    """PartitionSpec for one array: each logical axis mapped by the rules, a mesh axis used at
    most once, and only where it divides the dimension."""
    used: set[str] = set()
    out = []
    for logical, dim in zip(logical_axes, shape):
        axes = tuple(a for a in _mesh_axes_for(logical, rules) if a in mesh.shape and a not in used)
        size = math.prod(mesh.shape[a] for a in axes)
        if axes and size > 1 and dim % size == 0:
            used.update(axes)
            out.append(axes[0] if len(axes) == 1 else axes)
        else:
            out.append(None)
    return P(*out)


def param_shardings(boxed_params: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree of ``nn.Partitioned`` (or ``jax.ShapeDtypeStruct`` inside
    them) parameters, as returned by ``jax.eval_shape(model.init, ...)``; the result has the
    structure of the unboxed tree."""
    def one(leaf):
        if isinstance(leaf, nn.Partitioned):
            value = leaf.value
            return NamedSharding(mesh, spec_for(leaf.names, value.shape, mesh, rules))
        return NamedSharding(mesh, P())
    return jax.tree_util.tree_map(one, boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def batch_sharding(mesh: Mesh, ndim: int = 5) -> NamedSharding:
    """Leading (batch) axis over every data-parallel mesh axis present, the rest replicated."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.shape)
    return NamedSharding(mesh, P(axes, *([None] * (ndim - 1))))


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """Starts JAX's multi-process runtime when the environment calls for it.

    Explicit ``coordinator`` ("host:port") with ``num_processes`` and ``process_id``; or a
    SLURM job with more than one task; or a multi-host TPU slice (``TPU_WORKER_HOSTNAMES``
    naming more than one host), where JAX finds everything itself. Single-process runs need
    nothing and get ``False``.
    """
    import os
    if jax.distributed.is_initialized():
        return True
    if coordinator:
        if num_processes is None or process_id is None:
            raise ValueError("distributed: a coordinator needs num_processes and process_id")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
        return True
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
    tpu_pod = len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
    if slurm or tpu_pod:
        jax.distributed.initialize()
        return True
    return False


def barrier(name: str, timeout_s: int = 1800) -> None:
    """Waits until every process reaches ``name`` (through the coordination service, so it
    does not start a collective whose set-up has a short deadline). No-op in one process."""
    if jax.process_count() > 1:
        import orbax.checkpoint as ocp
        ocp.multihost.sync_global_processes(name, timeout=timeout_s)

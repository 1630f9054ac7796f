"""Device meshes and parameter placement by logical axis names.

Models annotate every parameter with logical axis names (``jaxbrain.models.blocks``). A rule
table maps logical names to mesh axes; ``"replicate"`` keeps every parameter whole on every
device, ``"fsdp"`` shards the largest weight axes over the ``fsdp`` mesh axis. An axis whose size
the mesh axis does not divide stays unsharded, so any model size fits any mesh.

    mesh = make_mesh({"data": -1, "fsdp": 1})
    shardings = logical_shardings(jax.eval_shape(model.init, key, x), mesh, RULES["fsdp"])
    batch = jax.device_put(batch, batch_sharding(mesh))
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import jax
import flax.linen as nn
from jax.experimental import mesh_utils
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
        ("layers", None),  # the stacked axis of scanned blocks stays whole
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
    # Topology-aware on TPU (neighbouring chips along the last, most communicating axes);
    # elsewhere the devices in order.
    return Mesh(mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True),
                tuple(names))


def _fits(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
    """``spec`` with the mesh axes dropped wherever they do not divide the dimension (so any
    model size fits any mesh), and mesh axes the mesh lacks ignored."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        names = tuple(a for a in names if a in mesh.shape)
        size = math.prod(mesh.shape[a] for a in names)
        if names and size > 1 and dim % size == 0:
            out.append(names[0] if len(names) == 1 else names)
        else:
            out.append(None)
    return P(*out)


def spec_for(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
             rules: Rules) -> P:
    """The mesh PartitionSpec of one array: Flax's ``logical_to_mesh_axes`` (a mesh axis used
    at most once), then :func:`_fits`. A logical name repeated within one array (a conv
    kernel's spatial axes) is mapped at its first position only."""
    names = tuple(logical_axes)
    names = tuple(n if n not in names[:i] else None for i, n in enumerate(names))
    # A name whose mesh axes do not divide its dimension is left out before the mapping, so
    # that a later dimension may take the mesh axis instead.
    names = tuple(n if n is not None and _fits(nn.logical_to_mesh_axes((n,), rules), (d,), mesh)
                  != P(None) else None for n, d in zip(names, shape))
    mesh_spec = nn.logical_to_mesh_axes(names, rules) if names else P()
    return _fits(mesh_spec, shape, mesh)


def logical_shardings(boxed: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree whose leaves may be ``nn.Partitioned`` boxes with logical
    axis names (as ``jax.eval_shape(model.init, ...)`` returns, and optimizer or objective
    states built from such trees): Flax's ``logical_to_mesh_axes`` maps the names by the
    rules, then dimensions the mesh axes do not divide stay whole. Unboxed leaves (step
    counts, RNG keys) are replicated. The result has the structure of the unboxed tree."""
    specs = nn.get_partition_spec(boxed)
    shapes = nn.unbox(boxed)

    def one(spec, leaf):
        names = tuple(spec) if isinstance(spec, P) else ()
        return NamedSharding(mesh, spec_for(names, np.shape(leaf), mesh, rules))

    return jax.tree_util.tree_map(one, specs, shapes,
                                  is_leaf=lambda x: isinstance(x, P) or x is None)


def replicated_large(boxed: Any, shardings: Any, mesh: Mesh, rules: Rules,
                     min_size: int = 2**20) -> list[str]:
    """The parameters of at least ``min_size`` elements that the rules would shard (a logical
    name mapped to a mesh axis of more than one device) but that stay whole on every device
    because no such dimension divides; a warning names them all with their shapes."""
    flat_boxed = jax.tree_util.tree_flatten_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
    flat_shardings = jax.tree_util.tree_leaves(shardings)
    found = []
    for (path, leaf), sharding in zip(flat_boxed, flat_shardings):
        if not isinstance(leaf, nn.Partitioned) or math.prod(np.shape(leaf.value)) < min_size:
            continue
        mapped = nn.logical_to_mesh_axes(
            tuple(n if n not in leaf.names[:i] else None for i, n in enumerate(leaf.names)),
            rules)
        wanted = [a for axes in mapped if axes is not None
                  for a in ((axes,) if isinstance(axes, str) else axes)
                  if mesh.shape.get(a, 1) > 1]
        if wanted and all(s is None for s in sharding.spec):
            found.append(f"{jax.tree_util.keystr(path)} {tuple(np.shape(leaf.value))}")
    if found:
        warnings.warn(f"{len(found)} large parameter(s) stay replicated on every device because "
                      f"no dimension divides the mesh axes {dict(mesh.shape)}: "
                      + "; ".join(found), stacklevel=2)
    return found


_ACTIVATIONS = threading.local()  # (mesh, rules) while a step is traced for a mesh


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules = ()):
    """Within it, :func:`constrain` pins activations to ``mesh``: the logical name "batch"
    to the data-parallel axes, other names by ``rules``."""
    previous = getattr(_ACTIVATIONS, "value", None)
    _ACTIVATIONS.value = (mesh, (("batch", BATCH_AXES), *rules))
    try:
        yield
    finally:
        _ACTIVATIONS.value = previous


def platform() -> str:
    """The platform a step is traced for: the mesh's inside :func:`activation_sharding` (a TPU
    slice compiled ahead of time on a CPU machine is "tpu"), else JAX's default backend.
    Models choose backend-specific implementations by it."""
    ctx = getattr(_ACTIVATIONS, "value", None)
    return ctx[0].devices.flat[0].platform if ctx is not None else jax.default_backend()


def constrain(x: Any, logical_axes: Sequence[str | None]) -> Any:
    """``x`` constrained to the sharding of its logical axis names (e.g. ("batch", None, None,
    None, "embed")) inside :func:`activation_sharding` (axes the mesh does not divide stay
    whole; where none divides, ``x`` is left unconstrained); unchanged outside it. Models
    call it at block boundaries, so that a data-parallel step keeps every activation on its
    batch shard."""
    ctx = getattr(_ACTIVATIONS, "value", None)
    if ctx is None:
        return x
    mesh, rules = ctx
    spec = spec_for(tuple(logical_axes) + (None,) * (np.ndim(x) - len(logical_axes)),
                    np.shape(x), mesh, rules)
    if all(s is None for s in spec):  # nothing divides: left to the compiler, not replicated
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def param_shardings(boxed_params: Any, mesh: Mesh, rules: Rules) -> Any:
    """:func:`logical_shardings` of a parameter tree (kept for callers of the old name)."""
    return logical_shardings(boxed_params, mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int = 5) -> NamedSharding:
    """Leading (batch) axis over every data-parallel mesh axis present, the rest replicated."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.shape)
    return NamedSharding(mesh, P(axes, *([None] * (ndim - 1))))


def global_batch(local: Mapping[str, Any], mesh: Mesh) -> dict:
    """This process's block of a batch (``{field: array}``, batch axis first) as global
    arrays sharded over the mesh's data axes."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), v)
            for k, v in local.items()}


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """Starts JAX's multi-process runtime when the environment calls for it.

    Explicit ``coordinator`` ("host:port") with ``num_processes`` and ``process_id``; or a
    SLURM job with more than one task; or a multi-host TPU slice (``TPU_WORKER_HOSTNAMES``
    naming more than one host), where JAX finds everything itself. Single-process runs need
    nothing and get ``False``.
    """
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


DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "jaxbrain", "xla")


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache, so a rerun, a resumed run or eval.py of
    the same config compiles nothing it compiled before. ``path``: the folder (default:
    ``$JAXBRAIN_COMPILATION_CACHE``, else ~/.cache/jaxbrain/xla); "" turns the cache off.
    A cache folder already chosen through JAX's own settings (JAX_COMPILATION_CACHE_DIR) is
    kept. Returns the folder in use."""
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    if path is None:
        path = os.environ.get("JAXBRAIN_COMPILATION_CACHE", DEFAULT_CACHE)
    if not path:
        return None
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path

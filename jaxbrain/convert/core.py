"""Architecture-independent parts of the PyTorch interchange: reading and writing state dicts,
layout transforms between Flax and PyTorch kernels, and strict key accounting.

An architecture family (``jaxbrain.convert.swin_unetr`` and later ones) supplies a ``Family``:
how a Flax parameter path is named in PyTorch, which buffers PyTorch expects beside the
parameters, and how other published namings map onto the canonical one.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np
import jax
import flax.linen as nn
from flax import traverse_util

from jaxbrain.models.vit import scans_blocks, stack_blocks, unstack_blocks

Path = tuple[str, ...]
State = dict[str, np.ndarray]

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "teacher",
                "network_weights")  # the last: nnU-Net's checkpoint_final.pth
KEY_PREFIXES = ("module.", "_orig_mod.")


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the model; the message lists every problem."""

    def __init__(self, message: str, report: "LoadReport"):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass
class LoadReport:
    """What a load did, key by key (PyTorch names). Nothing is dropped without appearing here."""

    source: str
    source_format: str
    target: str
    loaded: list[str] = dataclasses.field(default_factory=list)
    missing: list[tuple[str, tuple]] = dataclasses.field(default_factory=list)
    unused: list[tuple[str, tuple]] = dataclasses.field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    kept: list[str] = dataclasses.field(default_factory=list)
    new_head: list[tuple[str, tuple, tuple]] = dataclasses.field(default_factory=list)
    adapted: list[str] = dataclasses.field(default_factory=list)
    hints: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unused or self.mismatched)

    def problems(self) -> str:
        lines = []
        if self.missing:
            lines.append(f"  missing from the checkpoint ({len(self.missing)}):")
            lines += [f"    {k}  expected shape {s}" for k, s in self.missing]
        if self.unused:
            lines.append(f"  in the checkpoint but not in the model ({len(self.unused)}):")
            lines += [f"    {k}  shape {s}" for k, s in self.unused]
        if self.mismatched:
            lines.append(f"  shape or value mismatches ({len(self.mismatched)}):")
            lines += [f"    {k}  checkpoint {a} vs model {b}" for k, a, b in self.mismatched]
        lines += [f"  hint: {h}" for h in self.hints]
        return "\n".join(lines)

    def __str__(self) -> str:
        head = (f"{self.source} [{self.source_format}] -> {self.target}: loaded {len(self.loaded)}"
                f", missing {len(self.missing)}, unused {len(self.unused)}, mismatched "
                f"{len(self.mismatched)}, ignored {len(self.ignored)}, kept {len(self.kept)}"
                + (f", new head {len(self.new_head)}" if self.new_head else "")
                + (f", adapted {len(self.adapted)}" if self.adapted else ""))
        body = self.problems()
        if self.ignored:
            body += (f"\n  ignored (not part of this model, or by request) ({len(self.ignored)}): "
                     + ", ".join(self.ignored[:8]))
            body += " ..." if len(self.ignored) > 8 else ""
        if self.new_head:
            body += (f"\n  output layers of another shape, left as initialised (new_head) "
                     f"({len(self.new_head)}):")
            body += "".join(f"\n    {k}  checkpoint {a} vs model {b}" for k, a, b in self.new_head)
        if self.adapted:
            body += "\n  adapted (input channels, inflation to 3D):"
            body += "".join(f"\n    {line}" for line in self.adapted)
        body = body.lstrip("\n")
        return head + ("\n" + body if body else "")


@dataclasses.dataclass(frozen=True)
class Family:
    """The correspondence between one family of Flax modules and its PyTorch state dicts."""

    name: str
    torch_key: Callable[[Any, Path], str]        # (model, flax path) -> canonical torch key
    buffers: Callable[[Any], State]              # model -> non-parameter tensors torch expects
    canonicalize: Callable[[State], tuple[State, str]]  # source names -> canonical, format name
    dummy_input: Callable[[Any], tuple]          # model -> input shape for shape inference
    is_transposed_conv: Callable[[Path], bool] = lambda path: False
    encoder_prefix: str | None = None            # torch prefix exchanged with encoder_only=True
    hints: Callable[[Any, State, State], list[str]] = lambda model, src, expected: []
    # .pt files: the object saved around the tensors (the original training script's layout)
    wrap: Callable[[dict], Any] | None = None
    # Variable collections exchanged (paths then start with the collection name when there is
    # more than "params", e.g. BatchNorm running statistics in "batch_stats").
    collections: tuple[str, ...] = ("params",)
    # Checkpoint keys that the original holds but this model does not use (reported as ignored).
    ignored: Callable[[Any, str], bool] = lambda model, key: False
    # Tensors the original's state dict holds beyond this model's (written on export).
    extra: Callable[[Any], State] = lambda model: {}
    # Output-layer keys whose shape depends on the class count (skipped with new_head=True).
    is_head: Callable[[str], bool] = lambda key: False
    # The command line (python -m jaxbrain.convert): whether a canonical state dict is this
    # family's (inspect and from-torch without --model try the families in order), the model
    # registry names it serves (the first is the default), constructor arguments read off the
    # shapes for one of those names, and a message naming the arguments still needed (None
    # when the arguments suffice).
    detect: Callable[[State], bool] = lambda state: False
    model_names: tuple[str, ...] = ()
    config_for: Callable[[State, str], dict] = lambda state, model_name: {}
    missing: Callable[[str, dict], str | None] = lambda model_name, kwargs: None
    note: str = ""
    # Buffers compared with a relative tolerance instead of exactly (e.g. a table the
    # original may store in bfloat16): ((torch key, rtol), ...).
    buffer_rtol: tuple[tuple[str, float], ...] = ()


# ----------------------------------------------------------------------------------------
# Layout transforms.


def flax_to_torch_array(path: Path, a: np.ndarray, transposed_conv: bool) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):  # counters: PyTorch keeps them as int64
        return a.astype(np.int64)
    if path[-1] != "kernel":
        return a
    if a.ndim == 2:  # Dense (in, out) -> Linear (out, in)
        return a.T
    if transposed_conv:  # (*k, in, out) -> ConvTranspose (in, out, *k)
        return a.transpose(a.ndim - 2, a.ndim - 1, *range(a.ndim - 2))
    return a.transpose(a.ndim - 1, a.ndim - 2, *range(a.ndim - 2))  # Conv (out, in, *k)


def torch_to_flax_array(path: Path, a: np.ndarray, transposed_conv: bool) -> np.ndarray:
    if path[-1] != "kernel":
        return a
    if a.ndim == 2:
        return a.T
    spatial = tuple(range(2, a.ndim))
    return a.transpose(*spatial, 0, 1) if transposed_conv else a.transpose(*spatial, 1, 0)


def torch_shape(path: Path, shape: tuple, transposed_conv: bool) -> tuple:
    return flax_to_torch_array(path, np.empty(shape, np.float16), transposed_conv).shape


# ----------------------------------------------------------------------------------------
# Reading and writing.


def _to_numpy(key: str, v: Any) -> np.ndarray:
    if isinstance(v, np.ndarray):
        return v
    try:
        import torch
    except ImportError:  # pragma: no cover - a torch checkpoint cannot reach here without torch
        torch = None
    if torch is not None and isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        if v.dtype == torch.bfloat16:
            v = v.float()
        return v.numpy()
    raise ValueError(f"state dict entry {key!r} is a {type(v).__name__}, expected a tensor")


def read_state_dict(source: str | os.PathLike | Mapping, trust_pickle: bool = False) -> tuple[State, str]:
    """A flat {name: array} from a file (.pt/.pth/.bin/.ckpt/.safetensors) or a mapping, with
    {"state_dict"/"model"/...: ...} wrappers unwrapped and ``module.`` prefixes stripped."""
    if isinstance(source, Mapping):
        obj, name = source, "<state dict>"
    else:
        name = os.fspath(source)
        if not os.path.exists(name):
            raise FileNotFoundError(f"checkpoint {name!r} does not exist")
        if name.endswith(".safetensors"):
            from safetensors.numpy import load_file
            try:
                obj = load_file(name)
            except Exception as e:
                raise ValueError(f"{name!r} is not a readable safetensors file: {e}") from e
        else:
            import torch
            try:
                obj = torch.load(name, map_location="cpu", weights_only=not trust_pickle)
            except Exception as e:
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                why = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else "")
                hint = ("" if trust_pickle else " If it holds Python objects besides tensors and you "
                        "trust its origin, pass trust_pickle=True (--trust-pickle).")
                raise ValueError(f"cannot read checkpoint {name!r}: {type(e).__name__}: {why}{hint}") from e
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"{name!r} holds a {type(obj).__name__}, expected a state dict")
    state = {}
    for k, v in obj.items():
        key = str(k)
        for prefix in KEY_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = _to_numpy(str(k), v)
    if not state:
        raise ValueError(f"{name!r} holds an empty state dict")
    return state, name


def write_state_dict(state: State, path: str | os.PathLike,
                     wrap: Callable[[dict], Any] | None = None) -> None:
    """Writes tensors to .safetensors (flat, canonical names) or .pt/.pth/.bin (``wrap`` may
    nest them, e.g. {"state_dict": {"module." + name: tensor}}, as a training script saved)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    arrays = {k: np.array(v, order="C") for k, v in state.items()}  # (0-d stays 0-d)
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file
        save_file(arrays, path)
        return
    if not path.endswith((".pt", ".pth", ".bin")):
        raise ValueError(f"output {path!r}: expected a .pt, .pth, .bin or .safetensors file name")
    import torch
    # torch.tensor copies: arrays viewed from JAX buffers are read-only
    tensors = {k: torch.tensor(v) for k, v in arrays.items()}
    torch.save(wrap(tensors) if wrap is not None else tensors, path)


# ----------------------------------------------------------------------------------------
# Accounting.


def unbox(params: Any) -> dict:
    params = nn.meta.unbox(params)
    if isinstance(params, Mapping) and set(params) == {"params"}:
        params = params["params"]
    return params


def target_shapes(model: Any, family: Family) -> dict[Path, jax.ShapeDtypeStruct]:
    """Flat {path: shape} of what the family exchanges: the parameters, or with several
    collections every collection (paths then start with the collection's name)."""
    shape = family.dummy_input(model)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros(shape)))
    if family.collections == ("params",):
        return traverse_util.flatten_dict(unbox(variables["params"]))
    return traverse_util.flatten_dict({c: nn.meta.unbox(variables[c]) for c in family.collections})


def _describe(model: Any) -> str:
    return type(model).__name__


def to_flax(source, model, family: Family, *, encoder_only: bool = False,
            trust_pickle: bool = False):
    """Every checkpoint tensor that names one of the model's variables, in Flax layout and
    whatever its shape: ``({path: array}, report, targets)``. The report lists what the
    checkpoint lacks, what it holds beyond the model, and buffers whose values differ; the
    shapes are left to the caller (``load`` checks them; training initialisation adapts an
    input layer to another channel count)."""
    state, name = read_state_dict(source, trust_pickle)
    state, fmt = family.canonicalize(state)
    targets = target_shapes(model, family)
    report = LoadReport(source=name, source_format=fmt, target=_describe(model))
    scope = family.encoder_prefix if encoder_only else None
    if encoder_only and scope is None:
        raise ValueError(f"{family.name} has no encoder to load alone (encoder_only=True)")
    full = dict(state)  # for the hints, buffers included
    for key, expected in family.buffers(model).items():
        if key in state:
            got = state.pop(key)
            rtol = dict(family.buffer_rtol).get(key, 0.0)
            same = got.shape == expected.shape and (
                np.allclose(got, expected, rtol=rtol, atol=0.0) if rtol else np.array_equal(got, expected))
            if not same:
                report.mismatched.append((key, f"{got.shape} (values differ)", expected.shape))
    keys = {family.torch_key(model, p): p for p in targets}
    found: dict[Path, np.ndarray] = {}
    for key, path in keys.items():
        if scope is not None and not key.startswith(scope):
            report.kept.append(key)
        elif key not in state:
            report.missing.append((key, torch_shape(path, tuple(targets[path].shape),
                                                    family.is_transposed_conv(path))))
        else:
            found[path] = torch_to_flax_array(path, state[key], family.is_transposed_conv(path))
    for key, arr in state.items():
        if key in keys:
            continue
        if (scope is not None and not key.startswith(scope)) or family.ignored(model, key):
            report.ignored.append(key)
        else:
            report.unused.append((key, arr.shape))
    if not report.ok or any(a.shape != tuple(targets[p].shape) for p, a in found.items()):
        report.hints = family.hints(model, full, {k: targets[p] for k, p in keys.items()})
    return found, report, targets


def adapt_channels(kernel: np.ndarray, channels: int, mode: str) -> np.ndarray:
    """A pretrained input-layer kernel (..., C_old, F) for ``channels`` input channels.

    ``average``: every new channel gets the mean kernel over the old channels; ``repeat``: new
    channel j gets old channel j mod C_old. Both are scaled by C_old / channels, so that inputs
    whose channels look alike give the layer the pretrained magnitude. ``sum`` is ``average``
    by its other name: the old kernels summed, divided by ``channels`` (an RGB stem for grey
    input: a grey image replicated to RGB keeps its response). ``mean``: every new channel
    gets the mean kernel divided by ``channels`` (the response of alike channels divided by
    C_old).
    """
    old = kernel.shape[-2]
    if mode in ("average", "sum"):
        out = np.repeat(kernel.mean(-2, keepdims=True), channels, axis=-2) * (old / channels)
    elif mode == "repeat":
        out = np.take(kernel, np.arange(channels) % old, axis=-2) * (old / channels)
    elif mode == "mean":
        out = np.repeat(kernel.mean(-2, keepdims=True), channels, axis=-2) / channels
    else:
        raise ValueError(f"init.channels: expected one of {CHANNEL_MODES[1:]}, got {mode!r}")
    return out.astype(kernel.dtype)


CHANNEL_MODES = ("fresh", "average", "repeat", "sum", "mean")


def merge(found: Mapping[Path, np.ndarray], like: Mapping[Path, Any], report: LoadReport, *,
          name: Callable[[Path], str] = "/".join,
          shown: Callable[[Path, tuple], tuple] = lambda path, shape: tuple(shape),
          input_layer: Path | None = None, channels: str | None = None,
          new_head: bool = False, is_head: Callable[[Path], bool] = lambda path: True) -> dict:
    """The values for every path of ``like`` (the model's variables, flat, in Flax layout):
    those of ``found`` where they fit, the ``like`` value elsewhere.

    Rules, one set for every source (PyTorch files, training runs, converted models):
      * same shape: loaded (cast to the model's dtype);
      * the input layer's kernel (``input_layer`` + "kernel") for another number of input
        channels: adapted with ``channels`` ("average" = "sum", "mean", "repeat"; see
        :func:`adapt_channels`) or, with "fresh", left as initialised together with its bias
        (``None``: a mismatch like any other);
      * an output layer (``is_head``) whose last axis (the class count) differs, with
        ``new_head``: left as initialised;
      * any other shape: a mismatch.
    ``report`` records each decision under ``name(path)``, shapes shown by ``shown``.
    Paths missing from ``found`` take the ``like`` value silently: key accounting
    (missing / unused / kept) is the caller's, who knows the source's naming.
    """
    if channels is not None and channels not in CHANNEL_MODES:
        raise ValueError(f"init.channels: expected one of {CHANNEL_MODES}, got {channels!r}")
    out = dict(like)
    found = dict(found)
    kernel = None if input_layer is None else tuple(input_layer) + ("kernel",)
    if kernel in found and kernel in like and channels is not None:
        got, want = np.asarray(found[kernel]), tuple(like[kernel].shape)
        if (got.shape != want and got.ndim == len(want) and got.shape[:-2] == want[:-2]
                and got.shape[-1] == want[-1]):
            del found[kernel]
            if channels == "fresh":  # the originals: a new, randomly initialised input layer
                found.pop(tuple(input_layer) + ("bias",), None)
            else:
                out[kernel] = adapt_channels(got, want[-2], channels).astype(like[kernel].dtype)
            report.adapted.append(f"{name(kernel)}: {got.shape[-2]} -> {want[-2]} input "
                                  f"channels ({channels})")
    for path, want in like.items():
        got = found.get(path)
        if got is None:
            continue
        got = np.asarray(got)
        want_shape = tuple(want.shape)
        if got.shape == want_shape:
            out[path] = got.astype(want.dtype)
            report.loaded.append(name(path))
        elif new_head and is_head(path) and got.shape[:-1] == want_shape[:-1]:
            report.new_head.append((name(path), shown(path, got.shape), shown(path, want_shape)))
        else:
            report.mismatched.append((name(path), shown(path, got.shape), shown(path, want_shape)))
    return out


def load(source, model, family: Family, strict: bool = True, params=None,
         encoder_only: bool = False, trust_pickle: bool = False, new_head: bool = False):
    if scans_blocks(model):  # converted block by block, returned stacked
        out, report = load(source, model.clone(scan_blocks=False), family, strict,
                           None if params is None else unstack_blocks(unbox(params)),
                           encoder_only, trust_pickle, new_head)
        return stack_blocks(out), report
    found, report, targets = to_flax(source, model, family, encoder_only=encoder_only,
                                     trust_pickle=trust_pickle)
    given = traverse_util.flatten_dict(unbox(params)) if params is not None else {}
    like = {p: given.get(p, targets[p]) for p in targets}

    def torch_name(path):
        return family.torch_key(model, path)

    def torch_layout(path, shape):
        return torch_shape(path, tuple(shape), family.is_transposed_conv(path))

    out = merge(found, like, report, name=torch_name, shown=torch_layout, new_head=new_head,
                is_head=lambda path: family.is_head(torch_name(path)))
    if not report.ok and strict:
        raise CheckpointMismatchError(
            f"checkpoint {report.source} [{report.source_format}] does not match "
            f"{_describe(model)}:\n{report.problems()}\n"
            "Pass strict=False (--non-strict) to load what matches and get this report.", report)
    unfilled = [p for p, v in out.items() if isinstance(v, jax.ShapeDtypeStruct)]
    if unfilled:
        if params is None:
            raise ValueError(
                f"{len(unfilled)} parameters are not filled from {report.source} (e.g. "
                f"{family.torch_key(model, unfilled[0])}); pass params= (for instance "
                "model.init(...)['params']) to supply their values.\n" + str(report))
        raise ValueError(f"params= lacks {'/'.join(unfilled[0])}, which the checkpoint does "
                         "not fill")
    return traverse_util.unflatten_dict({p: np.asarray(v) for p, v in out.items()}), report


def save(params, model, family: Family, path, template: Mapping | None = None) -> State:
    """The model's state dict (and ``family.extra``: tensors the original holds beyond this
    model, taken from ``template`` where it has them with the same shape); a model with
    ``scan_blocks=True`` writes the same model's without it."""
    if scans_blocks(model):
        model, params = model.clone(scan_blocks=False), unstack_blocks(unbox(params))
    flat = traverse_util.flatten_dict(unbox(params))
    targets = target_shapes(model, family)
    if set(flat) != set(targets):
        missing = sorted("/".join(p) for p in set(targets) - set(flat))
        extra = sorted("/".join(p) for p in set(flat) - set(targets))
        raise ValueError(f"params do not fit {_describe(model)}: missing {missing[:10]}, "
                         f"unexpected {extra[:10]}")
    state: State = {}
    for p in targets:  # the model's creation order, as PyTorch lists its state dict
        a = np.asarray(jax.device_get(flat[p]))
        if a.shape != tuple(targets[p].shape):
            raise ValueError(f"params {'/'.join(p)} has shape {a.shape}, model expects {targets[p].shape}")
        state[family.torch_key(model, p)] = flax_to_torch_array(p, a, family.is_transposed_conv(p))
    state.update(family.buffers(model))
    for key, value in family.extra(model).items():
        given = None if template is None else template.get(key)
        state[key] = value if given is None or np.shape(given) != value.shape else np.asarray(given)
    if path is not None:
        write_state_dict(state, path, family.wrap)
    return state


def rename(state: State, rules: list[tuple[str, str]]) -> State:
    out = {}
    for k, v in state.items():
        for pattern, repl in rules:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out

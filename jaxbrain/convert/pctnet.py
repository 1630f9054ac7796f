"""PCT-Net <-> PyTorch: MIS-FM's ``PCTNet`` state dict, as its released checkpoints hold it.

Files are ``{"model_state_dict": {...}, "iteration": N, "optimizer_state_dict": ...}``; keys
follow the module names: ``embeddings.{0,1,2}.*`` (one stem per resolution mode),
``pyramid_ct.*`` and ``pred_heads.{0,1,2}.*``, with BatchNorm running statistics and each
attention's ``relative_position_index`` buffer. The Flax model holds one resolution mode:
import takes that mode's copies (the other two are reported as ignored, as are the unused
``pyramid_ct.convtrans_*.norm_layer`` tensors); export writes all of them, the other modes
from ``template`` (e.g. the released checkpoint) when given, else initialised as PyTorch
initialises a new PCTNet. Exchanged: ``params`` and ``batch_stats`` (running mean and
variance, ``num_batches_tracked``). Output layers of another class count are skipped only
with ``new_head=True``.
"""

from __future__ import annotations

import re

import numpy as np
import jax
import jax.numpy as jnp
from flax import traverse_util

from jaxbrain.convert.core import Family, Path, State, flax_to_torch_array, unbox
from jaxbrain.models.swin_unetr import effective_window, relative_position_index

BLOCKS = ("e2", "e3", "e4", "d3", "d2")
_LEAVES = {"kernel": "weight", "scale": "weight", "alpha": "weight", "mean": "running_mean",
           "var": "running_var", "count": "num_batches_tracked"}


def torch_key(model, path: Path) -> str:
    path = path[1:]  # the collection
    head = {"embedding": f"embeddings.{model.resolution_mode}",
            "pred_head": f"pred_heads.{model.resolution_mode}"}.get(path[0], path[0])
    key = ".".join((head,) + tuple(path[1:-1]) + (_LEAVES.get(path[-1], path[-1]),))
    key = re.sub(r"(?<=[a-z])_(\d+)(?=\.)", r".\1", key)  # Sequential / ModuleList indices
    return key.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")


def is_transposed_conv(path: Path) -> bool:
    return len(path) > 1 and path[-2] == "up_2"


def _block_grids(model) -> dict[str, tuple[int, int, int]]:
    r2 = model.pyramid_size()
    r3 = tuple(s // 2 for s in r2)
    r4 = tuple(s // 2 for s in r3)
    return {"e2": r2, "e3": r3, "e4": r4, "d3": r3, "d2": r2}


def buffers(model) -> State:
    out = {}
    level = {"e2": 0, "d2": 0, "e3": 1, "d3": 1, "e4": 2}
    variant = "swin" if model.corrected_index else "misfm"
    for name, grid in _block_grids(model).items():
        w = model.window_sizes[level[name]]
        ws, _ = effective_window(grid, (w,) * 3, (w // 2,) * 3, "cubic")
        index = relative_position_index(ws, variant)
        for j in range(model.depths[level[name]]):
            out[f"pyramid_ct.convtrans_{name}.trans.blocks.{j}.attn.relative_position_index"] = index.copy()
    return out


def ignored(model, key: str) -> bool:
    m = re.match(r"^(embeddings|pred_heads)\.(\d)\.", key)
    if m and int(m.group(2)) != model.resolution_mode:
        return True
    if not model.multiscale_pred and re.match(
            r"^(pred_heads\.\d\.out_conv1|pyramid_ct\.out_conv[23])\.", key):
        return True
    return bool(re.match(r"^pyramid_ct\.convtrans_\w+\.norm_layer\.(weight|bias)$", key))


def _torch_default(path: Path, shape: tuple) -> np.ndarray:
    """A new PyTorch module's value for BatchNorm (weight 1, bias 0, running mean 0 and
    variance 1, no batches tracked) and PReLU (0.25); convolutions are drawn by the caller."""
    leaf, parent = path[-1], path[-2]
    if leaf == "count":
        return np.zeros(shape, np.int64)
    if leaf in ("scale", "var"):
        return np.ones(shape, np.float32)
    if leaf == "alpha":
        return np.full(shape, 0.25, np.float32)
    return np.zeros(shape, np.float32)  # BatchNorm bias and running mean


_COARSE = ("out_conv1", "out_conv2", "out_conv3")  # deep-supervision layers


def extra(model) -> State:
    """What the original's state dict holds beyond this model, as PyTorch initialises it:
    the other resolution modes' stems and heads, the deep-supervision output layers when
    ``multiscale_pred`` is off (the original always creates them), and the unused
    ``norm_layer`` LayerNorms (weight 1, bias 0)."""
    out: State = {}
    rng = np.random.default_rng(0)
    parts = [(model.clone(resolution_mode=m, multiscale_pred=True),
              lambda p: p[1] in ("embedding", "pred_head")) for m in (0, 1, 2)
             if m != model.resolution_mode]
    if not model.multiscale_pred:
        parts.append((model.clone(multiscale_pred=True), lambda p: p[2] in _COARSE))
    for other, wanted in parts:
        shapes = jax.eval_shape(lambda m=other: m.init(
            jax.random.key(0), jnp.zeros((1, *m.input_size, m.in_channels))))
        flat = traverse_util.flatten_dict({c: unbox(shapes[c]) if c == "params" else shapes[c]
                                           for c in ("params", "batch_stats")})
        convs: dict[Path, tuple] = {}
        for path, leaf in flat.items():
            if not wanted(path):
                continue
            if path[-1] == "kernel":
                convs[path[:-1]] = leaf.shape
            elif not (path[-1] == "bias" and path[:-1] + ("kernel",) in flat):
                value = _torch_default(path, tuple(leaf.shape))
                out[torch_key(other, path)] = flax_to_torch_array(path, value, False)
        for prefix, kshape in convs.items():
            # uniform(+-1/sqrt(fan_in)), fan_in over the torch weight's second axis onwards
            # (PyTorch computes it so for transposed convolutions too)
            kpath = prefix + ("kernel",)
            shape = flax_to_torch_array(kpath, np.zeros(kshape, np.float32),
                                        is_transposed_conv(kpath)).shape
            bound = 1.0 / np.sqrt(np.prod(shape[1:]))
            out[torch_key(other, kpath)] = rng.uniform(-bound, bound, shape).astype(np.float32)
            out[torch_key(other, prefix + ("bias",))] = rng.uniform(
                -bound, bound, kshape[-1:]).astype(np.float32)
    for name in BLOCKS:
        width = model.features[2 + {"e2": 0, "d2": 0, "e3": 1, "d3": 1, "e4": 2}[name]]
        out[f"pyramid_ct.convtrans_{name}.norm_layer.weight"] = np.ones(width, np.float32)
        out[f"pyramid_ct.convtrans_{name}.norm_layer.bias"] = np.zeros(width, np.float32)
    return out


def canonicalize(state: State) -> tuple[State, str]:
    if not any(k.startswith("pyramid_ct.") for k in state):
        raise ValueError("not a PCT-Net state dict: no pyramid_ct.* keys (expected MIS-FM's "
                         "embeddings.N.*, pyramid_ct.*, pred_heads.N.*)")
    return dict(state), "MIS-FM PCTNet"


def dummy_input(model) -> tuple:
    return (1, *model.input_size, model.in_channels)


def is_head(key: str) -> bool:
    return bool(re.match(r"^(pred_heads\.\d\.out_conv[01]|pyramid_ct\.out_conv[23])\.conv\.2\.(weight|bias)$", key))


def infer_config(state: State) -> dict:
    """Constructor arguments read off the shapes. ``input_size`` and ``resolution_mode``
    cannot be read from them."""
    cfg: dict = {}
    w = state.get("embeddings.0.proj.weight")
    if w is None:
        return cfg
    feats = [w.shape[0], state["embeddings.0.down1.conv.2.weight"].shape[0],
             state["embeddings.0.down2.conv.2.weight"].shape[0],
             state["pyramid_ct.down3.conv.2.weight"].shape[0],
             state["pyramid_ct.down4.conv.2.weight"].shape[0]]
    cfg.update(in_channels=int(w.shape[1]), features=tuple(int(f) for f in feats),
               out_channels=int(state["pred_heads.0.out_conv0.conv.2.weight"].shape[0]),
               multiscale_pred="pred_heads.0.out_conv1.conv.2.weight" in state)
    depths, heads = [], []
    for name in ("e2", "e3", "e4"):
        blocks = {int(m.group(1)) for k in state
                  if (m := re.match(rf"^pyramid_ct\.convtrans_{name}\.trans\.blocks\.(\d+)\.", k))}
        depths.append(len(blocks))
        heads.append(int(state[f"pyramid_ct.convtrans_{name}.trans.blocks.0.attn."
                               "relative_position_bias_table"].shape[1]))
    cfg.update(depths=tuple(depths), num_heads=tuple(heads))
    return cfg


def hints(model, source: State, expected: dict) -> list[str]:
    out = []
    have = infer_config(source)
    for name in ("in_channels", "out_channels"):
        if name in have and have[name] != getattr(model, name):
            out.append(f"the checkpoint has {name}={have[name]}, the model {getattr(model, name)}"
                       + (" (new_head=True / --new-head keeps the model's output layers fresh)"
                          if name == "out_channels" else ""))
    if "features" in have and tuple(have["features"]) != tuple(model.features):
        out.append(f"the checkpoint has features={have['features']}, the model {tuple(model.features)}")
    mine = buffers(model)
    theirs = buffers(model.clone(corrected_index=not model.corrected_index))
    for key, value in mine.items():
        got = source.get(key)
        if got is not None and got.shape == value.shape and not np.array_equal(got, value) \
                and np.array_equal(got, theirs[key]):
            out.append(f"the checkpoint's relative_position_index is the "
                       f"{'corrected' if not model.corrected_index else 'original MIS-FM'} one: "
                       f"build the model with corrected_index={not model.corrected_index}")
            break
    table = source.get("pyramid_ct.convtrans_e2.trans.blocks.0.attn.relative_position_bias_table")
    want = expected.get("pyramid_ct.convtrans_e2.trans.blocks.0.attn.relative_position_bias_table")
    if table is not None and want is not None and table.shape[0] != want.shape[0]:
        out.append("the e2 bias table differs in size: the checkpoint was built for another "
                   "input_size / resolution_mode (PCT-Net's Swin blocks are fixed to it)")
    return out


def missing(model_name: str, kwargs: dict) -> str | None:
    if "input_size" not in kwargs or "resolution_mode" not in kwargs:
        return ("PCT-Net's Swin blocks are fixed to one input size, which the checkpoint does "
                "not record: give --set input_size=[64,128,128] --set resolution_mode=N (0, 1 "
                "or 2: which stem and head to take)")
    return None


def wrap(tensors: dict) -> dict:
    return {"model_state_dict": tensors, "iteration": 0}


FAMILY = Family(
    name="PCTNet",
    torch_key=torch_key,
    buffers=buffers,
    canonicalize=canonicalize,
    dummy_input=dummy_input,
    is_transposed_conv=is_transposed_conv,
    hints=hints,
    wrap=wrap,
    collections=("params", "batch_stats"),
    ignored=ignored,
    extra=extra,
    is_head=is_head,
    detect=lambda state: any(k.startswith("pyramid_ct.") for k in state),
    model_names=("pctnet",),
    config_for=lambda state, model_name: infer_config(state),
    missing=missing,
    note=("input_size and resolution_mode are not recorded in the checkpoint; give them with "
          "--set when converting"),
)

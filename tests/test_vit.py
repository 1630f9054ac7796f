"""ViT against MONAI's ViT and transformers' VideoMAE, built from their packages with random
weights: outputs both directions (eval mode), strict round trips, files of older MONAI
versions, files that must fail with the key named; the MCG-NJU names; position-table
resizing against PyTorch's F.interpolate; remat and gradients; logical axis names; the
command line on both layouts; the 2D configuration against timm's VisionTransformer (imported
with placeholders for the torchvision modules timm's package imports but the model does not
use: no torchvision wheel matches the CPU torch)."""

from __future__ import annotations

import functools
import json
import re

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import flax.linen as nn
from flax import traverse_util

torch = pytest.importorskip("torch")
monai_nets = pytest.importorskip("monai.networks.nets")
transformers = pytest.importorskip("transformers")

from _util import numpy_state, random_params, rel_l2, timm_module, torch_state  # noqa: E402
from _sidecar import build  # noqa: E402
from jaxbrain.convert import CheckpointMismatchError, detect, export, load_torch, save_torch  # noqa: E402
from jaxbrain.convert import videomae, vit as vit_family  # noqa: E402
from jaxbrain.convert.__main__ import main as convert_main  # noqa: E402
from jaxbrain.models import ViT  # noqa: E402
from jaxbrain.models.vit import interpolation_matrix, resize_pos_embed, sincos_table  # noqa: E402

SIZE, PATCH, WIDTH, DEPTH, HEADS, MLP = (32, 32, 32), 8, 48, 2, 4, 96
CLIP = (4, 32, 32)  # frames, height, width: tubelets 2x16x16 -> 2x2x2 tokens


def _perturb(net, seed):
    """Every parameter away from its initial value (LayerNorms, zero biases, CLS)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()


def _monai(classification: bool, qkv_bias: bool, seed: int = 0):
    torch.manual_seed(seed)
    net = monai_nets.ViT(2, SIZE, PATCH, hidden_size=WIDTH, mlp_dim=MLP, num_layers=DEPTH,
                         num_heads=HEADS, classification=classification, num_classes=3,
                         qkv_bias=qkv_bias)
    model = ViT(2, SIZE, PATCH, hidden_size=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP,
                cls_token=classification, qkv_bias=qkv_bias, num_classes=3 if classification else 0,
                post_activation="tanh" if classification else None)
    return _perturb(net, seed + 1), model


@pytest.fixture(scope="module")
def monai_head():
    return _monai(classification=True, qkv_bias=False)


@pytest.fixture(scope="module")
def monai_tokens():
    return _monai(classification=False, qkv_bias=True, seed=2)


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _monai_out(net, x):
    with torch.no_grad():
        out, _ = net(torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))))
    return out.numpy()


# Small programs compile several times faster without XLA's expensive CPU passes.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
_COMPILED: dict = {}


def _fast_jit(fn, *args):
    """``jax.jit(fn)`` compiled once for these argument shapes with FAST_COMPILE."""
    key = (fn, tuple(np.shape(a) for a in jax.tree_util.tree_leaves(args)))
    if key not in _COMPILED:
        _COMPILED[key] = jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)
    return _COMPILED[key](*args)


@functools.lru_cache(maxsize=None)
def _forward(model, tokens):
    return lambda params, x: model.apply({"params": params}, x, return_tokens=tokens)


def _ours(model, params, x, tokens=False):
    return _fast_jit(_forward(model, tokens), params, jnp.asarray(x))


def _assert_bitwise(a, b):
    fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert set(fa) == set(fb)
    for k in fa:
        assert np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])), "/".join(k)


# ----------------------------------------------------------------------------------------
# MONAI ViT.


@pytest.mark.parametrize("which", ["monai_head", "monai_tokens"])
def test_monai_parity_both_directions(which, request, tmp_path):
    net, model = request.getfixturevalue(which)
    tokens = which == "monai_tokens"
    x = _x((2, *SIZE, 2))
    # MONAI -> jaxbrain
    params, report = load_torch(numpy_state(net), model)
    assert report.ok and report.source_format.startswith("MONAI ViT")
    assert {k.split(".")[2] for k in report.ignored} == {"norm_cross_attn"}
    assert rel_l2(_ours(model, params, x, tokens), _monai_out(net, x)) < 1e-4
    # jaxbrain -> MONAI: new values, MONAI loads them strictly and agrees
    mine = random_params(model, seed=5)
    state, _ = export(mine, model, tmp_path / "vit.pt")
    fresh, info = build(tmp_path / "vit.pt")  # MONAI's ViT from the sidecar alone
    assert info["class"] == "monai.networks.nets.ViT"
    assert rel_l2(_ours(model, mine, x, tokens), _monai_out(fresh, x)) < 1e-4
    back, _ = load_torch(state, model)
    _assert_bitwise(mine, back)


def test_older_monai_files(monai_head, tmp_path):
    net, model = monai_head
    state = numpy_state(net)
    # MONAI < 1.4: no cross-attention keys at all
    old = {k: v for k, v in state.items() if "cross_attn" not in k}
    params, report = load_torch(old, model)
    assert report.ok and not report.ignored
    # MONAI 1.4-1.6.0 built an unused CrossAttentionBlock in every TransformerBlock
    from monai.networks.blocks import CrossAttentionBlock
    torch.manual_seed(3)
    legacy = _monai(classification=True, qkv_bias=False, seed=4)[0]
    for blk in legacy.blocks:
        blk.cross_attn = CrossAttentionBlock(WIDTH, HEADS, qkv_bias=False)
    params, report = load_torch(numpy_state(legacy), model)
    assert report.ok and any(".cross_attn.to_k.weight" in k for k in report.ignored)
    assert "1.4-1.6.0" in report.source_format
    exported = vit_family.save_torch(params, model, tmp_path / "legacy.pt", legacy_cross_attn=True)
    legacy.load_state_dict(torch_state(exported), strict=True)


def test_wrong_files_fail_naming_keys(monai_head):
    net, model = monai_head
    state = numpy_state(net)
    with pytest.raises(CheckpointMismatchError, match=r"classification_head\.0\.weight.*\n.*"
                       r"[\s\S]*new_head"):
        load_torch(state, model.clone(num_classes=5))
    fresh = random_params(model.clone(num_classes=5))
    _, report = load_torch(state, model.clone(num_classes=5), params=fresh, new_head=True)
    assert {k for k, _, _ in report.new_head} == {"classification_head.0.weight",
                                                  "classification_head.0.bias"}
    lacking = {k: v for k, v in state.items() if k != "blocks.1.attn.qkv.weight"}
    with pytest.raises(CheckpointMismatchError, match=r"missing[\s\S]*blocks\.1\.attn\.qkv\.weight"):
        load_torch(lacking, model)
    flat = dict(state, **{"patch_embedding.patch_embeddings.weight": np.zeros((WIDTH, 2, 8, 8), np.float32)})
    with pytest.raises(CheckpointMismatchError, match=r"patch_embedding\.patch_embeddings\.weight"
                       r"[\s\S]*2 spatial axes, the model 3"):
        load_torch(flat, model)
    with pytest.raises(CheckpointMismatchError, match=r"classification_head\.weight[\s\S]*Tanh"):
        load_torch(state, model.clone(post_activation=None))


# ----------------------------------------------------------------------------------------
# VideoMAE (transformers, and the MCG-NJU names).


def _videomae_config(**kw):
    return transformers.VideoMAEConfig(
        image_size=CLIP[1], patch_size=16, num_channels=3, num_frames=CLIP[0], tubelet_size=2,
        hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
        intermediate_size=MLP, num_labels=5, **kw)


@pytest.fixture(scope="module")
def videomae_nets():
    torch.manual_seed(0)
    classifier = _perturb(transformers.VideoMAEForVideoClassification(_videomae_config()), 1)
    encoder = _perturb(transformers.VideoMAEModel(_videomae_config()), 2)
    return classifier, encoder


def _video(seed=0):
    return _x((2, *CLIP, 3), seed)  # (B, T, H, W, C); transformers takes (B, T, C, H, W)


def _videomae_out(net, x):
    with torch.no_grad():
        out = net(pixel_values=torch.from_numpy(np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3))))
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).numpy()


def _model_for(state):
    family, canonical, _ = detect(state)
    assert family is videomae.FAMILY
    return ViT(img_size=CLIP, num_heads=HEADS, **family.config_for(canonical, "vit"))


@pytest.mark.parametrize("which", ["classifier", "encoder"])
def test_videomae_parity_both_directions(videomae_nets, which):
    net = videomae_nets[which == "encoder"]
    state = numpy_state(net)
    model = _model_for(state)
    assert (model.patch(), model.pos_embed, model.cls_token, model.mask_k_bias) == ((2, 16, 16), "sincos", False, True)
    x = _video()
    params, report = load_torch(state, model)
    assert report.ok and report.source_format == "transformers VideoMAE"
    tokens = which == "encoder"
    assert rel_l2(_ours(model, params, x, tokens), _videomae_out(net, x)) < 1e-4
    mine = random_params(model, seed=3)
    for layer in mine["encoder"].values():  # the masked k third is not stored by VideoMAE
        if "attn" in layer:
            layer["attn"]["qkv"]["bias"][WIDTH:2 * WIDTH] = 0.0
    exported = videomae.save_torch(mine, model)
    fresh = type(net)(transformers.VideoMAEConfig(**videomae.transformers_config(model))).eval()
    fresh.load_state_dict(torch_state(exported), strict=True)
    assert rel_l2(_ours(model, mine, x, tokens), _videomae_out(fresh, x)) < 1e-4
    back, _ = load_torch(exported, model)
    _assert_bitwise(mine, back)


def _mcg_nju_names(state):
    """transformers' VideoMAEForVideoClassification keys -> the original repository's (the
    inverse of transformers' convert_videomae_to_pytorch mapping): fused qkv, q_bias/v_bias."""
    out = {}
    for key, value in state.items():
        m = re.match(r"videomae\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)", key)
        if m:
            i, part, kind = m.groups()
            if kind == "weight":
                out.setdefault(f"blocks.{i}.attn.qkv.weight", {})[part] = value
            else:
                out[f"blocks.{i}.attn.{part[0]}_bias"] = value
            continue
        for a, b in (("videomae.embeddings.patch_embeddings.projection", "patch_embed.proj"),
                     ("videomae.encoder.layer.", "blocks."), ("layernorm_before", "norm1"),
                     ("layernorm_after", "norm2"), ("attention.output.dense", "attn.proj"),
                     ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2"),
                     ("classifier", "head")):
            key = key.replace(a, b)
        out[key] = value
    for key, parts in list(out.items()):
        if isinstance(parts, dict):
            out[key] = np.concatenate([parts["query"], parts["key"], parts["value"]], 0)
    return out


def test_mcg_nju_and_pretraining_files(videomae_nets):
    net = videomae_nets[0]
    state = numpy_state(net)
    model = _model_for(state)
    original = _mcg_nju_names(state)
    assert "blocks.0.attn.q_bias" in original and "head.weight" in original
    params, report = load_torch(original, model)
    assert report.ok and report.source_format == "MCG-NJU VideoMAE"
    reference, _ = load_torch(state, model)
    _assert_bitwise(reference, params)
    _assert_bitwise(reference, load_torch(original, model, layout="videomae")[0])
    # a pre-training file: the encoder loads, the decoder is reported as ignored
    pre = transformers.VideoMAEForPreTraining(_videomae_config(use_mean_pooling=False))
    pre = _perturb(pre, 4)
    pre_state = numpy_state(pre)
    model = _model_for(pre_state)
    assert model.uses_final_norm() and model.num_classes == 0
    params, report = load_torch(pre_state, model)
    assert report.ok and any(k.startswith("decoder.") for k in report.ignored)
    assert "mask_token" in report.ignored
    x = _video(1)
    assert rel_l2(_ours(model, params, x, tokens=True), _videomae_out(pre.videomae, x)) < 1e-4


def test_videomae_file_initialises_a_vit_through_init_torch(videomae_nets, tmp_path):
    """``init.torch`` (train.py's way into load_pretrained) with a transformers VideoMAE file:
    the file's keys choose VideoMAE's layout, the encoder loads, the new head starts fresh."""
    from ml_collections import ConfigDict
    from jaxbrain.training import loop
    net = videomae_nets[1]  # VideoMAEModel
    state = numpy_state(net)
    path = tmp_path / "videomae.pt"
    torch.save(torch_state(state), path)
    family, canonical, _ = detect(state)
    model = ViT(img_size=CLIP, num_heads=HEADS, **family.config_for(canonical, "vit"),
                num_classes=2)
    fresh = {"params": random_params(model, seed=5)}
    config = ConfigDict({"init": {"torch": str(path), "encoder_only": True, "new_head": True}})
    variables = loop.pretrained(config, model, fresh, None)
    x = _video(2)
    assert rel_l2(_ours(model, variables["params"], x, tokens=True), _videomae_out(net, x)) < 1e-4
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(variables["params"]["head"][name],
                                      fresh["params"]["head"][name])


def test_sincos_table_is_videomaes():
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table
    np.testing.assert_array_equal(sincos_table(10, 12), get_sinusoid_encoding_table(10, 12)[0].numpy())


# ----------------------------------------------------------------------------------------
# The model itself.


def test_resize_pos_embed_matches_interpolate():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(1, 4 * 5, 6)).astype(np.float32)
    for method in ("linear", "bicubic"):
        assert resize_pos_embed(table, (4, 5), (4, 5), method) is table  # same grid: identity
        mode = "bilinear" if method == "linear" else "bicubic"
        for new in ((7, 9), (3, 2)):
            ref = torch.nn.functional.interpolate(
                torch.from_numpy(table.reshape(1, 4, 5, 6).transpose(0, 3, 1, 2)), size=new,
                mode=mode, align_corners=False).numpy().transpose(0, 2, 3, 1).reshape(1, -1, 6)
            np.testing.assert_allclose(resize_pos_embed(table, (4, 5), new, method), ref, atol=1e-5)
    volume = rng.normal(size=(3 * 4 * 2, 5)).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(volume.reshape(1, 3, 4, 2, 5).transpose(0, 4, 1, 2, 3)), size=(6, 3, 5),
        mode="trilinear", align_corners=False).numpy().transpose(0, 2, 3, 4, 1).reshape(-1, 5)
    np.testing.assert_allclose(resize_pos_embed(volume, (3, 4, 2), (6, 3, 5), "linear"), ref, atol=1e-5)
    # linear resizing keeps a table that is linear along an axis linear wherever the source
    # position lies inside the old grid (outside, it clamps to the edge row as PyTorch does);
    # bicubic (a = -0.75) keeps constants only
    old, new = 6, 11
    linear = np.repeat((2.0 * np.arange(old) + 1.0)[:, None], 3, 1).astype(np.float32)
    src = (np.arange(new) + 0.5) * old / new - 0.5
    inside = (src >= 0) & (src <= old - 1)
    got = np.asarray(resize_pos_embed(linear, (old,), (new,), "linear"))
    np.testing.assert_allclose(got[inside, 0], 2.0 * src[inside] + 1.0, atol=1e-5)
    np.testing.assert_allclose(got[~inside, 0], np.where(src[~inside] < 0, 1.0, 2.0 * old - 1.0))
    for method in ("linear", "bicubic"):
        np.testing.assert_allclose(interpolation_matrix(old, new, method).sum(1), 1.0, atol=1e-12)


def test_timm_style_2d_config_shapes():
    """patch 16x16, CLS with a learned position, 4 registers, qkv bias, LayerScale, eps 1e-6;
    another input grid resizes the table."""
    model = ViT(3, (64, 48), 16, hidden_size=32, depth=2, num_heads=4, mlp_dim=64, pos_embed_cls=True,
                num_registers=4, qkv_bias=True, layer_scale_init=1e-5, norm_eps=1e-6, num_classes=7)
    x = jnp.zeros((2, 64, 48, 3))
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    flat = {"/".join(k): v.value.shape for k, v in traverse_util.flatten_dict(shapes["params"]).items()}
    assert flat["encoder/position_embeddings"] == (1, 1 + 4 * 3, 32)
    assert flat["encoder/registers"] == (1, 4, 32) and flat["encoder/blocks_1/ls2/gamma"] == (32,)
    assert flat["encoder/patch_embedding/kernel"] == (16, 16, 3, 32)
    params = nn.unbox(shapes)
    assert jax.eval_shape(model.apply, params, x).shape == (2, 7)
    tokens = jax.eval_shape(lambda p, x: model.apply(p, x, return_tokens=True), params, jnp.zeros((1, 80, 32, 3)))
    assert tokens.shape == (1, 1 + 4 + 5 * 2, 32)


# ----------------------------------------------------------------------------------------
# timm's VisionTransformer (2D).


def _timm_vit_module():
    """``timm.models.vision_transformer`` (timm's code, unmodified; see _util.timm_module)."""
    return timm_module("vision_transformer")


TIMM_VARIANTS = {  # timm VisionTransformer arguments (2D, patch 16, width 64, depth 2, 4 heads)
    # ViT-B's layout: CLS token with a learned position row, qkv bias, head on the CLS token
    "vit_b": dict(),
    # registers without positions (no_embed_class), LayerScale, average pooling with fc_norm
    "registers_layerscale_avg": dict(reg_tokens=2, no_embed_class=True, init_values=0.1,
                                     global_pool="avg"),
}


def _timm_net(seed, **kw):
    vt = _timm_vit_module()
    torch.manual_seed(seed)
    net = vt.VisionTransformer(img_size=48, patch_size=16, in_chans=3, num_classes=5, embed_dim=64,
                               depth=2, num_heads=4, mlp_ratio=4.0, qkv_bias=True, **kw)
    return _perturb(net, seed + 1)


def _timm_out(net, x, tokens=False):
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        return (net.forward_features(t) if tokens else net(t)).numpy()


@pytest.mark.parametrize("variant", list(TIMM_VARIANTS))
def test_2d_vit_equals_timm(variant, tmp_path):
    """The ViT configured as a 2D ViT (ViT-B/16's layout at width 64) equals timm's
    VisionTransformer: logits and tokens both directions, strict load into timm, exact round
    trip; the file's keys choose the timm layout and the arguments come off its shapes."""
    kw = TIMM_VARIANTS[variant]
    net = _timm_net(0, **kw)
    state = numpy_state(net)
    family, canonical, fmt = detect(state)
    assert family is vit_family.TIMM_FAMILY and fmt == "timm VisionTransformer"
    model = ViT(num_heads=4, **family.config_for(canonical, "vit"))
    assert model.patch() == (16, 16) and model.grid() == (3, 3) and model.norm_eps == 1e-6
    assert model.qkv_bias and not model.mask_k_bias and model.num_classes == 5
    assert model.pos_embed_cls == (variant == "vit_b")
    assert model.pool == ("cls" if variant == "vit_b" else "mean")
    params, report = load_torch(state, model)
    assert report.ok and report.source_format == "timm VisionTransformer"
    x = _x((2, 48, 48, 3), seed=1)
    assert rel_l2(_ours(model, params, x), _timm_out(net, x)) < 1e-4
    assert rel_l2(_ours(model, params, x, tokens=True), _timm_out(net, x, tokens=True)) < 1e-4

    mine = random_params(model, seed=3)
    exported, _ = export(mine, model, tmp_path / "timm.safetensors", layout="timm")
    fresh, info = build(tmp_path / "timm.safetensors")  # timm's class from the sidecar alone
    assert info["class"].endswith("VisionTransformer") and info["layout"] == "timm"
    assert rel_l2(_ours(model, mine, x), _timm_out(fresh, x)) < 1e-4
    back, _ = load_torch(exported, model)
    _assert_bitwise(mine, back)


def test_timm_files_that_do_not_fit_are_named():
    net = _timm_net(0)
    state = numpy_state(net)
    model = ViT(3, 48, 16, spatial_dims=2, hidden_size=64, depth=2, num_heads=4, mlp_dim=256,
                qkv_bias=True, pos_embed_cls=False, norm_eps=1e-6, num_classes=5)  # no CLS row
    with pytest.raises(CheckpointMismatchError, match=r"pos_embed.*\(1, 10, 64\).*\(1, 9, 64\)"
                       ) as err:
        load_torch(state, model)
    assert "no_embed_class=False is pos_embed_cls=True" in str(err.value)
    volume = ViT(3, 48, 16, spatial_dims=3, hidden_size=64, depth=2, num_heads=4, mlp_dim=256,
                 qkv_bias=True, pos_embed_cls=True, norm_eps=1e-6, num_classes=5)
    with pytest.raises(CheckpointMismatchError, match=r"patch_embed\.proj\.weight") as err:
        load_torch(state, volume)
    assert "a 2D checkpoint into a 3D model" in str(err.value)
    with pytest.raises(ValueError, match="no timm VisionTransformer equivalent: 3 spatial axes"):
        vit_family.save_timm(random_params(volume), volume)


def _tiny(**kw):
    return ViT(2, (16, 16), 4, hidden_size=16, depth=2, num_heads=2, mlp_dim=32, qkv_bias=True,
               mask_k_bias=True, num_registers=1, layer_scale_init=0.5, dropout=0.1,
               drop_path=0.2, num_classes=3, **kw)


def test_remat_gives_the_same_gradients_and_the_k_bias_none():
    """In training mode (dropout, drop path: the recomputation draws the same masks)."""
    x = jnp.asarray(_x((2, 16, 16, 2)))
    y = jnp.array([0, 2])
    params = random_params(_tiny())

    def grads(model, p):
        def loss(p):
            logits = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(1)})
            return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1).mean()
        return jax.value_and_grad(loss)(p)

    (l0, g0), (l1, g1) = _fast_jit(lambda p: (grads(_tiny(), p), grads(_tiny(remat=True), p)), params)
    assert np.isfinite(l0) and abs(float(l0) - float(l1)) < 1e-6
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for i in range(2):
        bias = np.asarray(g0["encoder"][f"blocks_{i}"]["attn"]["qkv"]["bias"])
        assert np.all(bias[16:32] == 0) and np.any(bias[:16] != 0) and np.any(bias[32:] != 0)


def test_logical_names_on_every_parameter():
    model = _tiny(pool="mean")
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 2)))["params"]
    leaves = traverse_util.flatten_dict(boxed)
    assert ("fc_norm", "scale") in leaves and ("head", "kernel") in leaves
    for path, leaf in leaves.items():
        assert isinstance(leaf, nn.Partitioned), "/".join(path)
        assert len(leaf.names) == leaf.value.ndim, "/".join(path)
    assert model.input_layer() == ("encoder", "patch_embedding") and model.encoder_name == "encoder"


# ----------------------------------------------------------------------------------------
# The command line.


def test_command_line_reads_both_layouts(videomae_nets, monai_tokens, tmp_path, capsys):
    net, model = monai_tokens
    monai_file = tmp_path / "monai.pt"
    torch.save(net.state_dict(), monai_file)
    assert convert_main(["inspect", str(monai_file)]) == 0
    out = capsys.readouterr().out
    assert "MONAI ViT" in out and '"hidden_size": 48' in out and '"img_size": [32, 32, 32]' in out
    video_file = tmp_path / "videomae.bin"
    torch.save(videomae_nets[0].state_dict(), video_file)
    assert convert_main(["inspect", str(video_file)]) == 0
    assert "transformers VideoMAE" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="num_heads"):
        convert_main(["from-torch", str(video_file), str(tmp_path / "none")])
    assert convert_main(["from-torch", str(video_file), str(tmp_path / "ckpt"), "--set", "num_heads=4",
                         "--set", "img_size=[4,32,32]"]) == 0
    config = json.loads((tmp_path / "ckpt" / "model.json").read_text())["kwargs"]
    assert config["pos_embed"] == "sincos" and config["num_classes"] == 5
    # MONAI's ViT cannot compute VideoMAE's model: refused, naming the layout that can
    with pytest.raises(SystemExit, match="MONAI's ViT has no mean pooling.*--layout videomae"):
        convert_main(["to-torch", str(tmp_path / "ckpt"), str(tmp_path / "back.safetensors")])
    assert convert_main(["to-torch", str(tmp_path / "ckpt"), str(tmp_path / "back.safetensors"),
                         "--layout", "videomae"]) == 0
    fresh, info = build(tmp_path / "back.safetensors")  # from config.json, strictly loaded
    assert type(fresh).__name__ == "VideoMAEForVideoClassification" == info["class"].split(".")[1]

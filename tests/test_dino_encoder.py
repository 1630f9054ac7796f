"""The DINO slice encoder (BrainDINO / DINOv3 / DINOv2) against the originals' own code with
random weights: the dinov2 package's DinoVisionTransformer and DINOHead, transformers'
Dinov2WithRegistersModel and DINOv3ViTModel (and its RoPE module); the strict interchange
(jaxbrain.convert.dino) both ways; intermediate layers, mask tokens, stochastic depth.

transformers' wheel does not ship ``convert_dinov3_vit_to_hf.py`` (its original -> HF key
conversion), so the original-layout export reaches DINOv3ViTModel through
``jaxbrain.convert.dino.to_hf``, checked by the HF model's own outputs after a strict load.
"""

import math
import os

os.environ.setdefault("XFORMERS_DISABLED", "1")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from jaxbrain.convert import CheckpointMismatchError, load_torch, save_torch  # noqa: E402
from jaxbrain.convert import dino as cdino  # noqa: E402
from jaxbrain.models.dino import DINOHead, DinoViT, dino_preset  # noqa: E402
from jaxbrain.models.vit import Block, ViTEncoder, rope_augment, rope_coords, rope_periods  # noqa: E402

TINY = dict(hidden_size=64, depth=3, num_heads=4, mlp_dim=256, patch_size=8, img_size=32)
ATOL = 1e-4


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Every floating parameter (and the LayerScale gammas, norms, biases) drawn at random so
    that no term of the forward pass is trivially zero or one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim == 1 else 0.1)
                    + (1.0 if name.endswith(("norm1.weight", "norm2.weight", "norm.weight",
                                             "layernorm.weight")) else 0.0))


def _nhwc(x: torch.Tensor) -> jnp.ndarray:
    return jnp.asarray(x.permute(0, 2, 3, 1).numpy())


def _state(module: torch.nn.Module) -> dict:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 48, 40, generator=g)


# ----------------------------------------------------------------------------------------
# Encoder features.


def test_intermediate_layers_and_masks():
    args = dict(in_channels=3, img_size=32, patch_size=8, spatial_dims=2, hidden_size=32, depth=3,
                num_heads=4, mlp_dim=64, num_registers=2, layer_scale_init=1e-1, norm_eps=1e-6)
    model, plain = ViTEncoder(**args, mask_token=True), ViTEncoder(**args)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    params = nn.unbox(model.init(jax.random.key(1), x)["params"])
    assert params["mask_token"].shape == (1, 32)
    assert "mask_token" not in nn.unbox(plain.init(jax.random.key(1), x)["params"])
    params = dict(params, mask_token=jax.random.normal(jax.random.key(2), (1, 32)))
    full = model.apply({"params": params}, x)
    outs = model.apply({"params": params}, x, layers=(0, -1, 1))
    assert len(outs) == 3 and all(o.shape == full.shape for o in outs)
    np.testing.assert_allclose(outs[1], full, atol=1e-6)
    assert not np.allclose(outs[0], outs[2])
    masks = jnp.zeros((2, 16), bool).at[0, 3].set(True).at[1, :5].set(True)
    masked = model.apply({"params": params}, x, masks=masks)
    assert not np.allclose(masked[0], full[0]) and not np.allclose(masked[1], full[1])
    np.testing.assert_array_equal(model.apply({"params": params}, x, masks=jnp.zeros((2, 16), bool)), full)
    with pytest.raises(ValueError, match="mask_token=True"):
        plain.apply({"params": {k: v for k, v in params.items() if k != "mask_token"}}, x, masks=masks)
    with pytest.raises(ValueError, match="num_patches=16"):
        model.apply({"params": params}, x, masks=masks[:, :4])
    with pytest.raises(ValueError, match="layers="):
        model.apply({"params": params}, x, layers=(3,))


def test_braindino_parameter_count():
    model = DinoViT(**dino_preset("braindino_vitb16"))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    n = sum(math.prod(a.shape) for a in jax.tree.leaves(nn.unbox(shapes["params"])))
    print(f"BrainDINO ViT-B/16 parameters: {n} ({n / 1e6:.2f}M)")
    assert round(n / 1e6, 2) == 85.64
    assert model.num_prefix() == 5 and model.drop_path == 0.2 and not model.qkv_bias


def test_subset_stochastic_depth():
    """DINOv3: a branch reaches k = max(int(B (1 - rate)), 1) samples, the rest pass unchanged."""
    tokens = jax.random.normal(jax.random.key(2), (8, 21, 64))
    blk = Block(4, 256, layer_scale_init=1.0, norm_eps=1e-6, drop_path=0.75, drop_path_mode="subset")
    p = blk.init(jax.random.key(3), tokens)
    out = blk.apply(p, tokens, False, rngs={"dropout": jax.random.key(4)})
    same = np.all(np.asarray(out) == np.asarray(tokens), axis=(1, 2)).sum()
    assert 8 - 2 * 2 <= same <= 8 - 2  # k = 2 per branch, two branches
    again = blk.apply(p, tokens, False, rngs={"dropout": jax.random.key(4)})
    np.testing.assert_array_equal(out, again)
    c = blk.apply(p, tokens, False, rngs={"dropout": jax.random.key(5)})
    assert not np.array_equal(out, c)  # the draw follows the key


# ----------------------------------------------------------------------------------------
# RoPE.


def test_rope_matches_transformers_and_formula():
    from transformers import DINOv3ViTConfig
    from transformers.models.dinov3_vit.modeling_dinov3_vit import DINOv3ViTRopePositionEmbedding

    model = DinoViT(**dino_preset("dinov3_vitb16", **TINY))
    cfg = DINOv3ViTConfig(hidden_size=64, num_attention_heads=4, patch_size=8, image_size=32)
    hf = DINOv3ViTRopePositionEmbedding(cfg).eval()
    for h, w in ((4, 4), (6, 5)):
        cos_ref, sin_ref = hf(torch.zeros(1, 3, 8 * h, 8 * w))
        sin, cos = model.rope_tables((h, w))
        np.testing.assert_allclose(sin, sin_ref.numpy(), atol=1e-6)
        np.testing.assert_allclose(cos, cos_ref.numpy(), atol=1e-6)
    # The original's formula in float64 (base 100, head_dim 16: 4 periods), every normalisation.
    periods = 100.0 ** (2 * np.arange(4) / 8)
    np.testing.assert_allclose(rope_periods(16, 100.0), periods, rtol=1e-7)
    for norm, div in (("separate", (6, 5)), ("max", (6, 6)), ("min", (5, 5))):
        ch, cw = np.arange(0.5, 6) / div[0], np.arange(0.5, 5) / div[1]
        coords = 2 * np.stack(np.meshgrid(ch, cw, indexing="ij"), -1).reshape(-1, 2) - 1
        angles = np.tile((2 * np.pi * coords[:, :, None] / periods).reshape(30, -1), 2)
        got = DinoViT(**dino_preset("dinov3_vitb16", **TINY, rope_normalize=norm)).rope_tables((6, 5))
        np.testing.assert_allclose(got[0], np.sin(angles), atol=1e-6)
        np.testing.assert_allclose(got[1], np.cos(angles), atol=1e-6)
    # Training-time rescale: one log-uniform factor in [1/2, 2] for both axes.
    base = rope_coords((4, 4))
    scaled = np.asarray(rope_augment(jnp.asarray(base), jax.random.key(0), rescale=2.0))
    factor = scaled / base
    assert np.allclose(factor, factor[0, 0]) and 0.5 <= factor[0, 0] <= 2.0 and factor[0, 0] != 1.0
    shifted = np.asarray(rope_augment(jnp.asarray(base), jax.random.key(0), shift=0.1, jitter=1.5))
    assert not np.allclose(shifted, base)


# ----------------------------------------------------------------------------------------
# DINOv2 (the dinov2 package).


def _dinov2(block_chunks: int, seed: int):
    from dinov2.models.vision_transformer import DinoVisionTransformer
    torch.manual_seed(seed)
    ref = DinoVisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4,
                                mlp_ratio=4.0, init_values=1.0, block_chunks=block_chunks).eval()
    _randomise(ref, seed)
    return ref


@pytest.fixture(scope="module")
def dinov2_model():
    return DinoViT(**dino_preset("dinov2_vitb14", **TINY))


@pytest.mark.parametrize("block_chunks", [0, 3])
def test_dinov2_both_ways(block_chunks, images, dinov2_model):
    ref = _dinov2(block_chunks, seed=block_chunks + 1)
    state = _state(ref)
    params, report = load_torch(state, dinov2_model)
    assert report.ok and ("chunked" in report.source_format) == (block_chunks > 0)
    apply = jax.jit(lambda p, x, m: dinov2_model.apply({"params": p}, x, masks=m))
    for x in images:
        n = (x.shape[2] // 8) * (x.shape[3] // 8)
        masks = torch.zeros(2, n, dtype=torch.bool)
        masks[0, 1:4] = True
        masks[1, -2:] = True
        for m in (None, masks):
            with torch.no_grad():
                out = ref.forward_features(x, masks=m)
            ours = apply(params, _nhwc(x), None if m is None else jnp.asarray(m.numpy()))
            np.testing.assert_allclose(ours[:, 0], out["x_norm_clstoken"].numpy(), atol=ATOL)
            np.testing.assert_allclose(ours[:, 1:], out["x_norm_patchtokens"].numpy(), atol=ATOL)
    # Export into a fresh original (strict), same outputs; import(export) bit for bit.
    exported = cdino.save_torch(params, dinov2_model, block_chunks=block_chunks)
    fresh = _dinov2(block_chunks, seed=99)
    fresh.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in exported.items()}, strict=True)
    x = images[1]
    with torch.no_grad():
        np.testing.assert_allclose(fresh.forward_features(x)["x_norm_patchtokens"].numpy(),
                                   ref.forward_features(x)["x_norm_patchtokens"].numpy(), atol=1e-6)
    back, _ = load_torch(exported, dinov2_model)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_dino_head_and_training_checkpoint(tmp_path, dinov2_model):
    """DINOv2's weight-normalised DINOHead and the {"teacher": {backbone, heads}} checkpoint."""
    from dinov2.layers.dino_head import DINOHead as TorchHead
    torch.manual_seed(0)
    ref = TorchHead(64, 50, nlayers=3, hidden_dim=32, bottleneck_dim=16).eval()
    _randomise(ref, 5)
    head = DINOHead(50, hidden=32, bottleneck=16, nlayers=3, weight_norm=True)
    x = torch.randn(5, 64)
    hp, report = cdino.core.load(_state(ref), head, cdino.head_family(64))
    assert report.ok
    with torch.no_grad():
        np.testing.assert_allclose(head.apply({"params": hp}, jnp.asarray(x.numpy())), ref(x).numpy(), atol=1e-5)
    ref3 = _dinov2(0, seed=7)
    bp, _ = load_torch(_state(ref3), dinov2_model)
    path = tmp_path / "teacher_checkpoint.pth"
    cdino.save_training(bp, dinov2_model, path, heads={"dino_head": (hp, head, 64), "ibot_head": (hp, head, 64)})
    raw = torch.load(path)
    assert set(raw) == {"teacher"} and "backbone.pos_embed" in raw["teacher"]
    assert "dino_head.last_layer.weight_g" in raw["teacher"] and "ibot_head.mlp.4.weight" in raw["teacher"]
    fresh = TorchHead(64, 50, nlayers=3, hidden_dim=32, bottleneck_dim=16)
    fresh.load_state_dict({k[len("dino_head."):]: v for k, v in raw["teacher"].items()
                           if k.startswith("dino_head.")}, strict=True)
    back, report = load_torch(str(path), dinov2_model)
    assert "training checkpoint" in report.source_format
    assert any(k.startswith("dino_head.") for k in report.ignored) and not report.unused
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(bp)):
        np.testing.assert_array_equal(a, b)
    hb, _ = cdino.load_head(str(path), head, 64, "ibot_head")
    for a, b in zip(jax.tree.leaves(hb), jax.tree.leaves(hp)):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------
# transformers: registers (DINOv2) and DINOv3.


def test_dinov2_registers_transformers(images):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel
    cfg = Dinov2WithRegistersConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4,
                                    image_size=32, patch_size=8, num_register_tokens=4, layerscale_value=0.5,
                                    layer_norm_eps=1e-6, qkv_bias=True)
    torch.manual_seed(0)
    hf = Dinov2WithRegistersModel(cfg).eval()
    _randomise(hf, 11)
    model = DinoViT(**dino_preset("dinov2_vitb14_reg", **dict(TINY, depth=2)))
    params, report = load_torch(_state(hf), model)
    assert report.ok and "Dinov2WithRegisters" in report.source_format
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    for x in images:  # 4x4 (trained) and 6x5 (antialiased bicubic resize of the table)
        with torch.no_grad():
            ref = hf(pixel_values=x).last_hidden_state.numpy()
        np.testing.assert_allclose(apply(params, _nhwc(x)), ref, atol=ATOL)
    exported = cdino.save_torch(params, model, layout="hf")
    fresh = Dinov2WithRegistersModel(cfg).eval()
    fresh.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in exported.items()}, strict=True)
    with torch.no_grad():
        np.testing.assert_allclose(fresh(pixel_values=images[0]).last_hidden_state.numpy(),
                                   hf(pixel_values=images[0]).last_hidden_state.numpy(), atol=1e-6)


@pytest.mark.parametrize("variant", ["dinov3_vitb16", "braindino_vitb16"])
def test_dinov3_transformers(variant, images):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel
    hub = variant == "dinov3_vitb16"
    cfg = DINOv3ViTConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                          image_size=32, patch_size=8, num_register_tokens=4, layerscale_value=0.5,
                          layer_norm_eps=1e-5 if hub else 1e-6, query_bias=hub, key_bias=False,
                          value_bias=hub, pos_embed_rescale=2.0)
    torch.manual_seed(0)
    hf = DINOv3ViTModel(cfg).eval()
    _randomise(hf, 3)
    model = DinoViT(**dino_preset(variant, **dict(TINY, depth=2), rope_dtype="fp32"))  # as transformers'
    params, report = load_torch(_state(hf), model)
    assert report.ok and report.source_format.startswith("transformers DINOv3ViT")
    apply = jax.jit(lambda p, x, m: model.apply({"params": p}, x, masks=m))
    for x in images:
        n = (x.shape[2] // 8) * (x.shape[3] // 8)
        masks = torch.zeros(2, n, dtype=torch.bool)
        masks[:, 2] = True
        for m in (None, masks):
            with torch.no_grad():
                ref = hf(pixel_values=x, bool_masked_pos=m).last_hidden_state.numpy()
            ours = apply(params, _nhwc(x), None if m is None else jnp.asarray(m.numpy()))
            np.testing.assert_allclose(ours[:, 0], ref[:, 0], atol=ATOL)     # CLS
            np.testing.assert_allclose(ours[:, 1:5], ref[:, 1:5], atol=ATOL)  # storage tokens
            np.testing.assert_allclose(ours[:, 5:], ref[:, 5:], atol=ATOL)   # patches
    # The original layout (DINOv3's names, periods and bias_mask buffers) ...
    original = cdino.save_torch(params, model)
    assert original["rope_embed.periods"].shape == (4,) and "storage_tokens" in original
    assert ("blocks.0.attn.qkv.bias_mask" in original) == hub
    hf_state = cdino.to_hf(original, model)
    fresh = DINOv3ViTModel(cfg).eval()
    fresh.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in hf_state.items()}, strict=True)
    with torch.no_grad():
        np.testing.assert_allclose(fresh(pixel_values=images[1]).last_hidden_state.numpy(),
                                   hf(pixel_values=images[1]).last_hidden_state.numpy(), atol=1e-6)
    # ... imports bit for bit.
    back, report = load_torch(original, model)
    assert report.source_format == "DINOv3 original"
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    assert cdino.infer_config(original)["num_heads"] == 4 and cdino.infer_config(original)["rope_base"] == 100.0


def _dinov3_rope(h: int, w: int, head_dim: int, base: float, dtype: torch.dtype):
    """DINOv3's ``RopePositionEmbedding(dtype=dtype)`` (normalize_coords="separate", eval):
    periods, coordinates, angles, sin and cos, each op in ``dtype`` as the original."""
    dd = {"dtype": dtype}
    periods = base ** (2 * torch.arange(head_dim // 4, **dd) / (head_dim // 2))
    coords_h = torch.arange(0.5, h, **dd) / h
    coords_w = torch.arange(0.5, w, **dd) / w
    coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)
    coords = 2.0 * coords - 1.0
    angles = 2 * math.pi * coords[:, :, None] / periods[None, None, :]
    angles = angles.flatten(1, 2).tile(2)
    return periods, torch.sin(angles), torch.cos(angles)


def _dinov3_apply_rope(q, k, cos, sin, **_):
    """DINOv3's ``SelfAttention.apply_rope``: q and k cast to the tables' dtype, rotated
    (patch tokens only), cast back; in place of transformers' ``apply_rotary_pos_emb``."""
    def rotate(x):
        dtype, x = x.dtype, x.to(sin.dtype)
        prefix = x.shape[-2] - sin.shape[-2]
        t = x[:, :, prefix:]
        t1, t2 = t.chunk(2, dim=-1)
        t = t * cos + torch.cat([-t2, t1], dim=-1) * sin
        return torch.cat([x[:, :, :prefix], t], dim=-2).to(dtype)
    return rotate(q), rotate(k)


def test_bf16_rope_matches_dinov3_as_braindino_builds_it(images, monkeypatch):
    """BrainDINO's backbone is DINOv3's ``vit_base`` with its default
    ``pos_embed_rope_dtype="bf16"``: periods, coordinates, angles, sin / cos and the rotated
    q and k in bfloat16. transformers' DINOv3ViTModel (float32 RoPE) with the original's
    bfloat16 tables and rotation in place of its own is that model."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel
    from transformers.models.dinov3_vit import modeling_dinov3_vit as hf_module

    model = DinoViT(**dino_preset("braindino_vitb16", **dict(TINY, depth=2)))
    assert model.rope_dtype == "bf16" and dino_preset("dinov3_vitb16")["rope_dtype"] == "fp32"
    for h, w in ((4, 4), (6, 5), (14, 14)):  # the tables: bit for bit
        periods, sin_ref, cos_ref = _dinov3_rope(h, w, 16, 100.0, torch.bfloat16)
        np.testing.assert_array_equal(rope_periods(16, 100.0, "bf16"), periods.float().numpy())
        sin, cos = model.rope_tables((h, w))
        np.testing.assert_array_equal(sin, sin_ref.float().numpy())
        np.testing.assert_array_equal(cos, cos_ref.float().numpy())

    cfg = DINOv3ViTConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                          image_size=32, patch_size=8, num_register_tokens=4, layerscale_value=0.5,
                          layer_norm_eps=1e-6, query_bias=False, key_bias=False, value_bias=False)
    torch.manual_seed(0)
    hf = DINOv3ViTModel(cfg).eval()
    _randomise(hf, 5)
    params, report = load_torch(_state(hf), model)
    assert report.ok

    def bf16_tables(pixel_values):
        _, sin, cos = _dinov3_rope(pixel_values.shape[2] // 8, pixel_values.shape[3] // 8, 16, 100.0,
                                   torch.bfloat16)
        return cos, sin
    monkeypatch.setattr(hf.rope_embeddings, "forward", bf16_tables)
    monkeypatch.setattr(hf_module, "apply_rotary_pos_emb", _dinov3_apply_rope)
    fp32 = DinoViT(**dict(dino_preset("braindino_vitb16", **dict(TINY, depth=2)), rope_dtype="fp32"))
    for x in images:
        with torch.no_grad():
            ref = hf(pixel_values=x).last_hidden_state.numpy()
        ours = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x))(params, _nhwc(x)))
        other = np.asarray(fp32.apply({"params": params}, _nhwc(x)))
        err, gap = np.abs(ours - ref).max(), np.abs(other - ref).max()
        print(f"bf16 RoPE vs DINOv3's bf16 path: {err:.2e}; an fp32-RoPE model: {gap:.2e}")
        assert err < 5e-5 and gap > 1e-3, (err, gap)

    # Conversion: the export's periods buffer holds the model's RoPE dtype, read back on import.
    original = cdino.save_torch(params, model)
    np.testing.assert_array_equal(original["rope_embed.periods"], rope_periods(16, 100.0, "bf16"))
    assert cdino.infer_config(original)["rope_dtype"] == "bf16"
    assert cdino.infer_config(cdino.save_torch(params, fp32))["rope_dtype"] == "fp32"


# ----------------------------------------------------------------------------------------
# Strict reports and the command line.


def test_strict_reports_name_the_key(tmp_path):
    model = DinoViT(**dino_preset("braindino_vitb16", **dict(TINY, depth=1)))
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"])
    state = save_torch(params, model, None)
    assert set(state) >= {"cls_token", "storage_tokens", "mask_token", "rope_embed.periods",
                          "blocks.0.ls1.gamma", "blocks.0.attn.qkv.weight", "norm.weight"}
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.0\.attn\.extra"):
        load_torch({**state, "blocks.0.attn.extra": np.zeros(3, np.float32)}, model)
    bad = dict(state, **{"blocks.0.mlp.fc1.weight": np.zeros((128, 64), np.float32)})
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.0\.mlp\.fc1\.weight"):
        load_torch(bad, model)
    wrong_base = r"rope_embed\.periods[\s\S]*base 10000\.0, the model has rope_base=100\.0"
    with pytest.raises(CheckpointMismatchError, match=wrong_base):
        load_torch(dict(state, **{"rope_embed.periods": rope_periods(16, 10000.0)}), model)
    bf16 = torch.tensor(state["rope_embed.periods"]).bfloat16().float().numpy()
    load_torch(dict(state, **{"rope_embed.periods": bf16}), model)  # stored in bfloat16: accepted
    # The command line: inspect, from-torch (arguments off the file), to-torch.
    from jaxbrain.convert.__main__ import main
    src = tmp_path / "teacher_checkpoint.pth"
    cdino.save_training(params, model, src)
    assert main(["inspect", str(src)]) == 0
    assert main(["from-torch", str(src), str(tmp_path / "ckpt")]) == 0
    assert main(["to-torch", str(tmp_path / "ckpt"), str(tmp_path / "out.pth")]) == 0
    out = torch.load(tmp_path / "out.pth")
    assert set(out) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(out[k].numpy(), v)
    assert main(["to-torch", str(tmp_path / "ckpt"), str(tmp_path / "hf.safetensors"), "--layout", "hf"]) == 0
    from safetensors.numpy import load_file
    hf = load_file(str(tmp_path / "hf.safetensors"))
    np.testing.assert_array_equal(hf["model.layer.0.layer_scale1.lambda1"], state["blocks.0.ls1.gamma"])


def test_pretraining_model_checkpoint(tmp_path):
    """DinoStudent (encoder + heads) <-> {"teacher": {backbone, dino_head, ibot_head}}."""
    from jaxbrain.models.dino_heads import DinoStudent
    kw = dict(dino_preset("braindino_vitb16", **dict(TINY, depth=1)), head_prototypes=40, head_hidden=24,
              head_bottleneck=12, ibot_prototypes=30)
    student = DinoStudent(**kw)
    params = nn.unbox(student.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"])
    path = tmp_path / "teacher_checkpoint.pth"
    save_torch(params, student, path)
    raw = torch.load(path)
    assert set(raw) == {"teacher"}
    inner = raw["teacher"]
    assert {"backbone.rope_embed.periods", "backbone.storage_tokens", "dino_head.mlp.4.weight",
            "dino_head.last_layer.weight", "ibot_head.last_layer.weight"} <= set(inner)
    assert tuple(inner["ibot_head.last_layer.weight"].shape) == (30, 12)
    cfg = cdino.student_config({k: v.numpy() for k, v in inner.items()})
    assert {k: cfg[k] for k in ("head_prototypes", "head_hidden", "head_bottleneck", "ibot_prototypes",
                                "num_heads", "depth")} == dict(head_prototypes=40, head_hidden=24,
                                                               head_bottleneck=12, ibot_prototypes=30,
                                                               num_heads=4, depth=1)
    back, report = load_torch(str(path), student)
    assert report.ok
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    encoder = DinoViT(**dino_preset("braindino_vitb16", **dict(TINY, depth=1)))
    enc, report = load_torch(str(path), encoder)  # the backbone alone, heads reported as ignored
    assert report.ok and any(k.startswith("ibot_head.") for k in report.ignored)
    for a, b in zip(jax.tree.leaves(enc), jax.tree.leaves(params["encoder"])):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointMismatchError, match=r"dino_head\.last_layer\.weight"):
        load_torch(str(path), DinoStudent(**dict(kw, head_prototypes=41)))

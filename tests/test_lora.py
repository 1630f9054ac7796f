"""LoRA on the slice encoder's q and v (BrainDINO's downstream option): the adapters start as
the plain encoder, fold into its qkv weight (so the adapted encoder goes back to the
originals' layout, checked by transformers' DINOv3ViTModel), train alone under a frozen
encoder (``optim.unfreeze``), and the end-to-end whole-scan model (``slice_scan``) is the
frozen-feature probe at initialisation."""

import os

os.environ.setdefault("XFORMERS_DISABLED", "1")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from flax import traverse_util  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from jaxbrain.convert import dino as cdino  # noqa: E402
from jaxbrain.inference import features  # noqa: E402
from jaxbrain.models.dino import DinoViT, dino_preset  # noqa: E402
from jaxbrain.models.slice_heads import SliceHead, SliceScanViT  # noqa: E402
from jaxbrain.models.vit import LORA_MODULES, merge_lora  # noqa: E402
from jaxbrain.training import optim  # noqa: E402

TINY = dict(hidden_size=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8, img_size=32,
            drop_path=0.0, layer_scale_init=0.5)


def _perturbed(params, seed: int, scale: float = 0.2):
    """Every LoRA up-projection (zero at initialisation) drawn at random."""
    key = jax.random.key(seed)

    def draw(kp, v):
        nonlocal key
        names = [getattr(k, "key", None) for k in kp]
        if len(names) > 1 and names[-2] in ("lora_b_q", "lora_b_v"):
            key, sub = jax.random.split(key)
            return v + scale * jax.random.normal(sub, v.shape, v.dtype)
        return v
    return jax.tree_util.tree_map_with_path(draw, params)


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(1), (2, 32, 32, 3))


@pytest.mark.parametrize("alpha", [None, 16.0])
def test_adapters_start_as_the_plain_encoder_and_merge(x, alpha):
    kw = dino_preset("braindino_vitb16", **TINY)
    plain, adapted = DinoViT(**kw), DinoViT(**kw, lora_rank=4, lora_alpha=alpha)
    params = nn.meta.unbox(adapted.init(jax.random.key(0), x))["params"]
    qkv = params["blocks_0"]["attn"]["qkv"]
    assert sorted(qkv) == sorted(("kernel", *LORA_MODULES))
    assert qkv["lora_a_q"]["kernel"].shape == (32, 4) and qkv["lora_b_v"]["kernel"].shape == (4, 32)
    bound = 1.0 / np.sqrt(32)  # kaiming_uniform_(a=sqrt(5)) of an (r, in) weight
    a = np.asarray(qkv["lora_a_v"]["kernel"])
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.5 * bound
    assert not np.any(qkv["lora_b_q"]["kernel"])
    base = merge_lora(params, alpha)
    np.testing.assert_array_equal(plain.apply({"params": base}, x), adapted.apply({"params": params}, x))

    tuned = _perturbed(params, 1)
    out = adapted.apply({"params": tuned}, x)
    assert np.abs(out - adapted.apply({"params": params}, x)).max() > 1e-2  # the adapters act
    np.testing.assert_allclose(plain.apply({"params": merge_lora(tuned, alpha)}, x), out, atol=2e-5)
    # Only q and v move: the k third of the merged kernel is the base one.
    merged = merge_lora(tuned, alpha)["blocks_1"]["attn"]["qkv"]["kernel"]
    np.testing.assert_array_equal(merged[:, 32:64], tuned["blocks_1"]["attn"]["qkv"]["kernel"][:, 32:64])


def test_merged_adapters_reach_dinov3_in_transformers():
    """A LoRA-tuned BrainDINO encoder, merged and written in DINOv3's layout, is read by
    transformers' DINOv3ViTModel (strict) and gives the adapted encoder's tokens."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel
    kw = dino_preset("braindino_vitb16", **dict(TINY, hidden_size=64, num_heads=4, mlp_dim=256),
                     rope_dtype="fp32")  # transformers' RoPE is float32
    adapted = DinoViT(**kw, lora_rank=8)
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    tuned = _perturbed(nn.meta.unbox(adapted.init(jax.random.key(0), x))["params"], 3)
    plain = DinoViT(**kw)
    hf_state = cdino.to_hf(cdino.save_torch(merge_lora(tuned), plain), plain)
    cfg = DINOv3ViTConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=4, image_size=32, patch_size=8,
                          num_register_tokens=4, layer_norm_eps=1e-6, query_bias=False,
                          key_bias=False, value_bias=False)
    hf = DINOv3ViTModel(cfg).eval()
    hf.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in hf_state.items()}, strict=True)
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(adapted.apply({"params": tuned}, x),
                               ref.last_hidden_state.numpy(), atol=1e-4)


def test_unfreeze_trains_the_adapters_of_a_frozen_encoder():
    model = SliceScanViT(**dino_preset("braindino_vitb16", **TINY), lora_rank=2, num_classes=2,
                         head_num_heads=2)
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 3, 32, 32))))["params"]
    labels = optim.freeze_labels(params, ("encoder",), ("*/lora_*",))
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(labels).items()}
    trained = sorted(k for k, v in flat.items() if v == "train")
    assert all("/lora_" in k or k.startswith("head/") for k in trained)
    assert sum("/lora_" in k for k in trained) == 2 * 4  # 2 blocks x 4 adapters
    assert flat["encoder/blocks_0/attn/qkv/kernel"] == "frozen"
    with pytest.raises(ValueError, match=r"optim.unfreeze: '\*/lorra_\*' matches no frozen"):
        optim.freeze_labels(params, ("encoder",), ("*/lorra_*",))
    with pytest.raises(ValueError, match="optim.freeze, which is not set"):
        optim.make_optimizer(ConfigDict({"name": "adam", "lr": 1e-3, "unfreeze": ("*/lora_*",)}), 10)
    tx, _ = optim.make_optimizer(ConfigDict({"name": "adam", "lr": 1e-2, "freeze": "encoder",
                                             "unfreeze": ["*/lora_*"]}), 10, encoder_name="encoder")
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    up = {"/".join(k): v for k, v in traverse_util.flatten_dict(updates).items()}
    assert not np.any(up["encoder/blocks_1/mlp/linear1/kernel"])
    assert np.all(up["encoder/blocks_1/attn/qkv/lora_b_v/kernel"] != 0)


def test_frozen_weights_take_no_gradients():
    """The loop's step under optim.freeze="encoder" with the adapters unfrozen differentiates
    the trained parameters alone: their gradients equal those of the whole tree's gradient,
    the frozen weights' gradient matmuls are gone from the step, the frozen weights stay
    bit-identical and the trained ones follow the all-parameter step (same optimizer state
    layout)."""
    from jaxbrain import objectives
    from jaxbrain.training import loop
    model = SliceScanViT(**dino_preset("braindino_vitb16", **TINY), lora_rank=2, num_classes=2,
                         head_num_heads=2)
    stack = jax.random.normal(jax.random.key(5), (2, 3, 32, 32))
    params = _perturbed(nn.meta.unbox(model.init(jax.random.key(0), stack[:1]))["params"], 6)
    batch = {"image": stack, "target": jnp.asarray([0.0, 1.0])}
    objective = objectives.create(name="classification", num_classes=2)
    cfg = ConfigDict({"name": "adam", "lr": 1e-2, "weight_decay": 1e-5, "schedule": "constant",
                      "freeze": "encoder", "unfreeze": ("*/lora_*",)})
    tx, lr_fn = optim.make_optimizer(cfg, 10, encoder_name="encoder")
    rule = optim.freeze_rule(cfg, "encoder")
    state = {"step": jnp.asarray(3, jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(7))}

    # The whole tree's gradient, as the step took it before (dropout key as the loop's).
    key = jax.random.fold_in(jax.random.key(7), 3)

    def loss(p):
        def apply(x, variables=None, *, train=True, **inputs):
            return model.apply({"params": p}, x, train=train, rngs={"dropout": key}, **inputs)
        return objective.compute(apply, batch, jax.random.fold_in(key, 1))[0]
    full = jax.tree_util.tree_leaves(jax.jit(jax.grad(loss))(params))
    mask = loop.trained_mask(params, rule)
    assert 0 < sum(mask) < len(mask) and len(mask) == len(full)
    grads, _ = jax.jit(loop.make_gradients(model, objective, jnp.float32, rule))(state, batch)
    assert len(grads) == sum(mask)  # no cotangent for a frozen leaf
    for g, ref in zip(grads, [f for f, t in zip(full, mask) if t]):
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-7)

    new = loop.make_train_step(model, objective, tx, lr_fn, jnp.float32, rule)
    old = loop.make_train_step(model, objective, tx, lr_fn, jnp.float32)  # all parameters

    def dots(step):
        return str(jax.make_jaxpr(step)(state, batch)).count("dot_general")
    frozen_kernels = sum(p.ndim == 2 for p, t in zip(jax.tree_util.tree_leaves(params), mask)
                         if not t)
    assert frozen_kernels >= 8 and dots(old) - dots(new) >= frozen_kernels
    s_new, m_new = jax.jit(new)(state, batch)
    s_old, m_old = jax.jit(old)(state, batch)
    assert jax.tree.structure(s_new["opt_state"]) == jax.tree.structure(s_old["opt_state"])
    leaves = zip(*map(jax.tree_util.tree_leaves, (s_new["params"], s_old["params"], params)), mask)
    for a, b, p0, trained in leaves:
        if trained:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
            assert np.any(np.asarray(a) != np.asarray(p0))
        else:
            assert np.asarray(a).tobytes() == np.asarray(p0).tobytes()  # bit-identical
    np.testing.assert_allclose(m_new["loss"], m_old["loss"], rtol=1e-5)


def test_slice_scan_at_initialisation_is_the_frozen_feature_probe():
    """The end-to-end model's logits = the head on the cached-feature path's per-slice CLS of
    the same encoder weights (zero up-projections)."""
    kw = dino_preset("braindino_vitb16", **TINY)
    model = SliceScanViT(**kw, lora_rank=8, num_classes=3, head_pool="attention", head_num_heads=2)
    stack = np.asarray(jax.random.normal(jax.random.key(4), (2, 5, 32, 32)), np.float32)
    variables = nn.meta.unbox(model.init(jax.random.key(0), stack[:1]))
    logits = model.apply(variables, stack)
    encoder = features.Encoder(DinoViT(**kw), {"params": merge_lora(variables["params"]["encoder"])},
                               {}, {})
    feats = np.stack([encoder(np.repeat(s[..., None], 3, -1), batch=4) for s in stack])
    head = SliceHead(in_channels=32, num_classes=3, pool="attention", num_heads=2)
    ref = head.apply({"params": variables["params"]["head"]}, jnp.asarray(feats))
    np.testing.assert_allclose(logits, ref, atol=1e-5)
    with pytest.raises(ValueError, match="slice stacks"):
        model.apply(variables, stack[0])


# ----------------------------------------------------------------------------------------
# BrainDINO's SliceStudent layout (jaxbrain.convert.slice_probe).


def _torch_slice_student(state, plain_model, cfg_kwargs, num_classes, pooling):
    """The SliceStudent forward pass in PyTorch from a state dict in its layout: the LoRA
    wrapper's ``qkv[..., :D] += b_q(a_q(x))``, ``qkv[..., -D:] += b_v(a_v(x))`` is the same
    as adding ``B A`` to the q and v rows of the weight, so the backbone is DINOv3's (through
    transformers' DINOv3ViTModel, strict); the head is SliceStudent's nn.Sequential."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel
    backbone = {k[len("student."):]: np.array(v) for k, v in state.items() if k.startswith("student.")}
    d = cfg_kwargs["hidden_size"]
    for key in [k for k in backbone if k.endswith(".attn.qkv.qkv.weight")]:
        stem = key[:-len("qkv.weight")]
        w = backbone.pop(key)
        w[:d] += backbone.pop(stem + "linear_b_q.weight") @ backbone.pop(stem + "linear_a_q.weight")
        w[-d:] += backbone.pop(stem + "linear_b_v.weight") @ backbone.pop(stem + "linear_a_v.weight")
        backbone[stem[:-1] + ".weight"] = w
    hf = DINOv3ViTModel(DINOv3ViTConfig(**cfg_kwargs)).eval()
    hf.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in cdino.to_hf(backbone, plain_model).items()},
                       strict=True)
    head = torch.nn.Sequential(torch.nn.LayerNorm(d), torch.nn.Linear(d, d), torch.nn.GELU(),
                               torch.nn.Linear(d, num_classes))
    name = "reg_head" if num_classes == 1 else "cls_head"
    head.load_state_dict({k[len(name) + 1:]: torch.from_numpy(np.array(v)) for k, v in state.items()
                          if k.startswith(name + ".")}, strict=True)
    att = None
    if pooling == "attention":
        att = torch.nn.Linear(d, 1)
        att.load_state_dict({k[len("att_pool.att."):]: torch.from_numpy(np.array(v))
                             for k, v in state.items() if k.startswith("att_pool.att.")}, strict=True)

    def forward(stack):  # (B, S, H, W) -> logits
        b, s = stack.shape[:2]
        x = torch.from_numpy(np.array(stack)).reshape(b * s, 1, *stack.shape[2:]).repeat(1, 3, 1, 1)
        with torch.no_grad():
            cls = hf(pixel_values=x).last_hidden_state[:, 0].reshape(b, s, -1)
            pooled = cls.mean(1) if att is None else (torch.softmax(att(cls), dim=1) * cls).sum(1)
            return head(pooled).numpy()
    return forward


@pytest.mark.parametrize("pooling,num_classes", [("mean", 3), ("attention", 1)])
def test_slice_student_layout_both_ways(pooling, num_classes):
    from jaxbrain.convert import core, slice_probe
    kw = dino_preset("braindino_vitb16", **dict(TINY, hidden_size=64, num_heads=4, mlp_dim=256))
    model = SliceScanViT(**kw, lora_rank=4, num_classes=num_classes, head_pool=pooling,
                         head_num_heads=2)
    stack = np.asarray(jax.random.normal(jax.random.key(5), (2, 3, 32, 32)), np.float32)
    tuned = _perturbed(nn.meta.unbox(model.init(jax.random.key(0), stack[:1]))["params"], 6)
    state = core.save(tuned, model, slice_probe.FAMILY, None)
    head = "reg_head" if num_classes == 1 else "cls_head"
    assert state["student.blocks.1.attn.qkv.linear_a_q.weight"].shape == (4, 64)
    assert state["student.blocks.1.attn.qkv.linear_b_v.weight"].shape == (64, 4)
    assert state["student.blocks.0.attn.qkv.qkv.weight"].shape == (192, 64)
    assert state[f"{head}.3.weight"].shape == (num_classes, 64) and "student.storage_tokens" in state
    assert ("att_pool.att.weight" in state) == (pooling == "attention")
    cfg = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
               image_size=32, patch_size=8, num_register_tokens=4, layer_norm_eps=1e-6,
               query_bias=False, key_bias=False, value_bias=False)
    forward = _torch_slice_student(state, DinoViT(**kw), cfg, num_classes, pooling)
    np.testing.assert_allclose(model.apply({"params": tuned}, stack), forward(stack), atol=1e-4)

    # A SliceStudent file holds more than the probe uses: those keys are ignored, by name.
    extra = {**state, "slice_transformer.encoder.layers.0.linear1.weight": np.zeros((8, 64), np.float32),
             ("cls_head" if num_classes == 1 else "reg_head") + ".3.weight": np.zeros((1, 64), np.float32)}
    if pooling == "mean":
        extra["att_pool.att.weight"] = np.zeros((1, 64), np.float32)
    back, report = core.load(extra, model, slice_probe.FAMILY)
    assert report.ok and report.source_format.startswith("SliceStudent (DINOv3 original, LoRA")
    assert len(report.ignored) == len(extra) - len(state)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(tuned)):
        np.testing.assert_array_equal(a, b)
    assert slice_probe.config_for(state, "slice_scan")["lora_rank"] == 4
    with pytest.raises(core.CheckpointMismatchError, match="build with lora_rank=<their rank>"):
        core.load(state, SliceScanViT(**kw, num_classes=num_classes, head_pool=pooling), slice_probe.FAMILY)

"""ViT blocks under ``nn.scan`` (``scan_blocks=True``): the same outputs and gradients as the
block-by-block encoder, weights converted between the layouts bit for bit, and the same
PyTorch files and initialisation whichever layout the model has."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbrain.models import DinoSeg, DinoViT, ViT
from jaxbrain.models.vit import merge_lora, stack_blocks, unstack_blocks

from _util import random_params

VIT = dict(in_channels=1, img_size=8, patch_size=4, spatial_dims=3, hidden_size=16, depth=3,
           num_heads=2, mlp_dim=32, num_classes=2)
DINO = dict(img_size=16, patch_size=4, hidden_size=16, depth=4, num_heads=2, mlp_dim=32,
            num_registers=1, layer_scale_init=1e-5, norm_eps=1e-6, mask_token=False)


def _leaves_equal(a, b):
    fa = jax.tree_util.tree_flatten_with_path(a)[0]
    fb = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    assert [k for k, _ in fa] == list(fb)
    for k, v in fa:
        assert np.asarray(v).dtype == np.asarray(fb[k]).dtype, k
        np.testing.assert_array_equal(np.asarray(v), np.asarray(fb[k]), err_msg=str(k))


def test_layouts_convert_bit_for_bit():
    """stack_blocks gives the scanned model's tree structure and shapes; unstack_blocks
    inverts it exactly (params and a mirror such as Adam's moments); the scanned weights
    carry the leading "layers" logical axis, which the FSDP rules keep whole."""
    from jaxbrain.parallel import RULES
    x = np.zeros((1, 8, 8, 8, 1), np.float32)
    plain = random_params(ViT(**VIT))
    boxed = jax.eval_shape(ViT(**VIT, scan_blocks=True).init, jax.random.key(0), x)["params"]
    stacked = stack_blocks(plain)
    assert "blocks_0" not in stacked["encoder"]
    assert jax.tree_util.tree_structure(stacked) == jax.tree_util.tree_structure(nn.unbox(boxed))
    for a, b in zip(jax.tree_util.tree_leaves(stacked), jax.tree_util.tree_leaves(nn.unbox(boxed))):
        assert a.shape == b.shape
    _leaves_equal(unstack_blocks(stacked), plain)
    _leaves_equal(stack_blocks(stacked), stacked)  # already stacked: unchanged
    mirror = {"mu": stacked, "count": np.int32(3)}
    _leaves_equal(unstack_blocks(mirror)["mu"], plain)
    names = boxed["encoder"]["blocks"]["attn"]["qkv"]["kernel"].names
    assert names == ("layers", "embed", "qkv")
    assert tuple(nn.logical_to_mesh_axes(names, RULES["fsdp"])) == \
        (None, *nn.logical_to_mesh_axes(names[1:], RULES["fsdp"]))


def test_scan_equals_unrolled_outputs_and_gradients():
    """The ViT classifier's logits and parameter gradients, scanned (rematerialised inside
    the scan with a checkpoint policy) vs block by block, on the same weights."""
    plain = ViT(**VIT)
    scanned = ViT(**VIT, scan_blocks=True, remat=True, remat_policy="dots_with_no_batch_dims_saveable")
    params = random_params(plain)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 8, 1))

    def loss(model):
        return lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)

    v0, g0 = jax.jit(jax.value_and_grad(loss(plain)))(params)
    v1, g1 = jax.jit(jax.value_and_grad(loss(scanned)))(stack_blocks(params))
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    g1 = unstack_blocks(g1)
    for (k, a), b in zip(jax.tree_util.tree_flatten_with_path(g0)[0], jax.tree_util.tree_leaves(g1)):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=1e-6, err_msg=str(k))


def test_dino_seg_reads_the_named_blocks_under_scan():
    """DinoSeg's features (blocks 1 and 3 through the final norm) are the same with
    the encoder scanned; LoRA adapters stack with the blocks and merge the same way."""
    kw = dict(DINO, in_channels=2, out_channels=3, layers=(1, 3), lora_rank=2)
    plain, scanned = DinoSeg(**kw), DinoSeg(**kw, scan_blocks=True)
    x = jax.random.normal(jax.random.key(2), (1, 16, 16, 2))
    params = random_params(plain)
    stacked = stack_blocks(params)
    assert stacked["encoder"]["blocks"]["attn"]["qkv"]["lora_b_q"]["kernel"].shape == (4, 2, 16)
    np.testing.assert_allclose(scanned.apply({"params": stacked}, x, return_features=True),
                               plain.apply({"params": params}, x, return_features=True),
                               rtol=1e-5, atol=1e-5)
    merged = merge_lora(stacked["encoder"])
    _leaves_equal(unstack_blocks(merged), merge_lora(params["encoder"]))


def test_stochastic_depth_under_scan():
    """Training with per-sample stochastic depth increasing over the blocks draws per layer
    (a different mask per block); a batch-subset rule with per-block rates is refused."""
    kw = dict(DINO, drop_path=0.5, drop_path_mode="sample")
    model = DinoViT(**kw, scan_blocks=True)
    x = jax.random.normal(jax.random.key(2), (4, 16, 16, 3))
    params = stack_blocks(random_params(DinoViT(**kw)))
    run = jax.jit(lambda key: model.apply({"params": params}, x, train=True, rngs={"dropout": key}))
    a, b = run(jax.random.key(0)), run(jax.random.key(1))
    assert np.isfinite(a).all() and not np.allclose(a, b)
    np.testing.assert_array_equal(a, run(jax.random.key(0)))
    subset = DinoViT(**dict(kw, drop_path_mode="subset"), scan_blocks=True)
    with pytest.raises(ValueError, match="drop_path_uniform"):
        subset.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(0)})
    uniform = DinoViT(**dict(kw, drop_path_mode="subset", drop_path_uniform=True), scan_blocks=True)
    assert np.isfinite(uniform.apply({"params": params}, x, train=True,
                                     rngs={"dropout": jax.random.key(0)})).all()


def test_pytorch_files_and_init_are_layout_free(tmp_path):
    """The PyTorch export (state dict and sidecar) of a scanned DINO encoder equals the
    unscanned one's; the file loads back into the scanned model stacked; a scanned model is
    initialised from an unscanned converted directory and an unscanned one from a scanned."""
    import torch
    from jaxbrain import runs
    from jaxbrain.convert import export, load_torch
    from jaxbrain.convert.pretrained import load_pretrained
    plain, scanned = DinoViT(**DINO), DinoViT(**DINO, scan_blocks=True)
    params = random_params(plain)
    for name, model, tree in (("plain", plain, params), ("scanned", scanned, stack_blocks(params))):
        (tmp_path / name).mkdir()
        export(tree, model, tmp_path / name / "m.pt")
    a, b = torch.load(tmp_path / "plain" / "m.pt"), torch.load(tmp_path / "scanned" / "m.pt")
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (tmp_path / "plain" / "m.json").read_text() == (tmp_path / "scanned" / "m.json").read_text()
    loaded, report = load_torch(tmp_path / "plain" / "m.pt", scanned)
    _leaves_equal(loaded, stack_blocks(params))

    for source_model, source, target in ((plain, params, scanned), (scanned, stack_blocks(params), plain)):
        path = str(tmp_path / f"run_{source_model.scan_blocks}")
        runs.save_converted(path, {"name": "dino_vit", **DINO, "scan_blocks": source_model.scan_blocks},
                            {"params": source})
        fresh = {"params": random_params(plain, seed=5)}
        fresh = stack_blocks(fresh) if target.scan_blocks else fresh
        merged, report = load_pretrained(path, target, fresh)
        assert report.ok
        _leaves_equal(merged["params"], stack_blocks(params) if target.scan_blocks else params)


def test_layer_decay_of_stacked_blocks():
    """optim.layer_decay gives block k of the stacked blocks the factor of blocks_k."""
    from jaxbrain.training.optim import layer_scales
    plain = random_params(ViT(**VIT))
    flat = layer_scales(plain, 0.5)
    stacked = layer_scales(stack_blocks(plain), 0.5)
    assert stacked["encoder/patch_embedding/kernel"] == flat["encoder/patch_embedding/kernel"]
    assert stacked["head/kernel"] == flat["head/kernel"]
    got = np.asarray(stacked["encoder/blocks/attn/qkv/kernel"]).ravel()
    np.testing.assert_array_equal(got, [flat[f"encoder/blocks_{k}/attn/qkv/kernel"] for k in range(3)])


def test_config_choice():
    """``--config.model.scan_blocks=True`` and ``model.remat_policy`` reach the recipes' models."""
    import os
    from jaxbrain import models
    from jaxbrain.training.config import command_line_config
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for config in ("brain_classification.py:demo,vit", "braindino_seg_brats.py:demo"):
        c = command_line_config(["--config", os.path.join(root, "configs", config),
                                 "--config.model.scan_blocks=True",
                                 "--config.model.remat_policy=nothing_saveable"])
        model = models.from_config(c.model)
        assert model.scan_blocks and model.remat_policy == "nothing_saveable"
    with pytest.raises(ValueError, match="remat_policy='everything'"):
        ViT(**VIT, remat_policy="everything").init(jax.random.key(0), np.zeros((1, 8, 8, 8, 1)))

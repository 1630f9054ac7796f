"""BrainDINO slice segmentation: the decoder on the ViT's intermediate features (shapes, the
1/4 fusion, the ViT-B parameter split, the decoder against PyTorch's layers, the features
against DINOv2's get_intermediate_layers), nnU-Net's 2D slice sampler, slice-by-slice volume
prediction, and the demo recipe through train.py and eval.py."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbrain.data import transforms as T
from jaxbrain.inference import Predictor, sliding_window_inference
from jaxbrain.models.dino_seg import DinoSeg, decoder_fraction
from jaxbrain.objectives import Segmentation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(in_channels=4, out_channels=3, img_size=32, patch_size=8, hidden_size=32, depth=4,
            num_heads=4, mlp_dim=64, num_registers=2, layer_scale_init=0.1, norm_eps=1e-6,
            layers=(0, 1, 3))


@pytest.fixture(scope="module")
def tiny():
    model = DinoSeg(**TINY)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 4))
    params = nn.unbox(model.init(jax.random.key(1), x)["params"])
    return model, params, x


def test_decoder_shapes_fusion_and_vit_b_share(tiny):
    model, params, x = tiny
    out = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x)
    assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.float32
    np.testing.assert_array_equal(params["fuse"]["kernel"], np.full((4, 3), 0.25, np.float32))
    assert "bias" not in params["fuse"]
    assert params["encoder"]["patch_embedding"]["kernel"].shape == (8, 8, 3, 32)  # 3 fused channels
    # 3 layers x 32 = 96 channels at 1/8, halved by each of log2(8) = 3 stages.
    widths = [params[f"decoder_{i}"]["kernel"].shape for i in range(3)]
    assert widths == [(2, 2, 96, 48), (2, 2, 48, 24), (2, 2, 24, 12)]
    assert params["decoder_0"]["norm"]["scale"].shape == (48,)
    assert params["head"]["kernel"].shape == (12, 3) and "decoder_3" not in params
    # Kaiming-normal (slope 0.01) over PyTorch's transposed-conv fan-in (out * 4) in the decoder.
    k = np.asarray(params["decoder_0"]["kernel"])
    assert abs(k.std() - np.sqrt(2 / (1 + 1e-4) / (48 * 4))) < 0.01
    feats = model.apply({"params": params}, x, return_features=True)
    assert feats.shape == (2, 4, 4, 96)
    half = DinoSeg(**TINY, dtype=jnp.bfloat16).apply({"params": params}, x)  # bf16 compute
    assert half.dtype == jnp.float32 and float(jnp.abs(half - out).mean()) < 0.05 * float(jnp.abs(out).mean())
    boxed = model.init(jax.random.key(1), x)["params"]  # logical axis names on every weight
    assert all(isinstance(v, nn.Partitioned) for v in jax.tree_util.tree_leaves(
        boxed, is_leaf=lambda v: isinstance(v, nn.Partitioned)))

    # ViT-B/16 (BrainDINO's backbone: 4 storage tokens, mask token, no positions table),
    # 4 modalities in, TC / WT / ET out: the decoder (with fusion and head) is 22.6%.
    big = DinoSeg(in_channels=4, out_channels=3, img_size=224, patch_size=16, num_registers=4,
                  mask_token=True, layer_scale_init=1e-5, norm_eps=1e-6, pos_embed="none")
    shapes = jax.eval_shape(lambda k: nn.unbox(big.init(k, jnp.zeros((1, 224, 224, 4)))["params"]),
                            jax.random.key(0))
    total = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))
    encoder = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes["encoder"]))
    share = decoder_fraction(shapes)
    print(f"\nViT-B/16 dino_seg: {total / 1e6:.2f}M parameters, encoder {encoder / 1e6:.2f}M, "
          f"decoder {(total - encoder) / 1e6:.2f}M = {100 * share:.2f}%")
    assert encoder == 85_641_984  # DINOv3 vit_base with 4 storage tokens
    assert [shapes[f"decoder_{i}"]["kernel"].shape[-1] for i in range(4)] == [1536, 768, 384, 192]
    assert round(100 * share, 1) == 22.6

    with pytest.raises(ValueError, match="not multiples of the patch size"):
        model.apply({"params": params}, x[:, :30])
    with pytest.raises(ValueError, match=r"expected input \(batch, H, W, 4\)"):
        model.apply({"params": params}, x[..., :3])
    with pytest.raises(ValueError, match="power of 2"):
        DinoSeg(**dict(TINY, patch_size=6, img_size=36)).init(jax.random.key(0), jnp.zeros((1, 36, 36, 4)))


def test_decoder_and_fusion_equal_pytorch_layers(tiny):
    """The decoder against PyTorch's ConvTranspose2d / LayerNormNd / GELU / Conv2d and the
    fusion against F.conv2d with the first C rows of a 4-modality bias-free 1x1 conv, weights
    carried over in the layouts the module docstring gives."""
    import torch
    import torch.nn.functional as F
    model, params, x = tiny
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a) + 0.05 * rng.standard_normal(a.shape).astype(np.float32),
                                    params)
    feats = model.apply({"params": params}, x, return_features=True)
    out = model.apply({"params": params}, x)

    def layer_norm_nd(t, weight, bias, eps=1e-6):  # dynamic_network_architectures' LayerNormNd
        u = t.mean(1, keepdim=True)
        s = (t - u).pow(2).mean(1, keepdim=True)
        return weight[None, :, None, None] * ((t - u) / torch.sqrt(s + eps)) + bias[None, :, None, None]

    t = torch.from_numpy(np.array(feats)).permute(0, 3, 1, 2)
    for i in range(3):
        p = params[f"decoder_{i}"]
        up = torch.nn.ConvTranspose2d(p["kernel"].shape[2], p["kernel"].shape[3], 2, stride=2)
        with torch.no_grad():
            up.weight.copy_(torch.from_numpy(np.transpose(p["kernel"], (2, 3, 0, 1)).copy()))
            up.bias.copy_(torch.from_numpy(p["bias"]))
            t = torch.nn.GELU()(layer_norm_nd(up(t), torch.from_numpy(p["norm"]["scale"]),
                                              torch.from_numpy(p["norm"]["bias"])))
    head = torch.from_numpy(params["head"]["kernel"].T.copy())[:, :, None, None]
    ref = F.conv2d(t, head, torch.from_numpy(params["head"]["bias"])).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)

    # Fusion of 2 modalities: the first 2 input rows of the 4-modality to3 convolution.
    to3 = torch.from_numpy(rng.standard_normal((3, 4, 1, 1)).astype(np.float32))
    two = DinoSeg(**dict(TINY, in_channels=2))
    unfused = DinoSeg(**dict(TINY, in_channels=3, fused_channels=0))
    assert unfused.input_layer() == ("encoder", "patch_embedding") and two.input_layer() == ("fuse",)
    mine = two.apply({"params": dict(params, fuse={"kernel": to3[:, :2, 0, 0].T.numpy()})},
                     x[..., :2], return_features=True)
    fused = F.conv2d(torch.from_numpy(np.array(x[..., :2])).permute(0, 3, 1, 2), to3[:, :2])
    theirs = unfused.apply({"params": {k: v for k, v in params.items() if k != "fuse"}},
                           fused.permute(0, 2, 3, 1).numpy(), return_features=True)
    np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-4)


def _dinov2_params(net, sd) -> dict:
    """DINOv2's DinoVisionTransformer state dict as the ViTEncoder tree (the test's own map)."""
    t = {k: v.detach().numpy() for k, v in sd.items()}
    enc = {"cls_token": t["cls_token"], "mask_token": t["mask_token"],
           "position_embeddings": t["pos_embed"],
           "patch_embedding": {"kernel": t["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
                               "bias": t["patch_embed.proj.bias"]},
           "norm": {"scale": t["norm.weight"], "bias": t["norm.bias"]}}
    for i in range(len(net.blocks)):
        b = f"blocks.{i}."
        enc[f"blocks_{i}"] = {
            "norm1": {"scale": t[b + "norm1.weight"], "bias": t[b + "norm1.bias"]},
            "norm2": {"scale": t[b + "norm2.weight"], "bias": t[b + "norm2.bias"]},
            "attn": {"qkv": {"kernel": t[b + "attn.qkv.weight"].T, "bias": t[b + "attn.qkv.bias"]},
                     "out_proj": {"kernel": t[b + "attn.proj.weight"].T, "bias": t[b + "attn.proj.bias"]}},
            "ls1": {"gamma": t[b + "ls1.gamma"]}, "ls2": {"gamma": t[b + "ls2.gamma"]},
            "mlp": {"linear1": {"kernel": t[b + "mlp.fc1.weight"].T, "bias": t[b + "mlp.fc1.bias"]},
                    "linear2": {"kernel": t[b + "mlp.fc2.weight"].T, "bias": t[b + "mlp.fc2.bias"]}}}
    return enc


def test_features_are_dinov2_intermediate_layers_of_the_named_blocks():
    """The feature map the decoder reads is DINOv2's get_intermediate_layers(n=blocks,
    reshape=True, norm=True) concatenated along channels, for the fused input; the blocks
    after the last one named do not matter."""
    import torch
    from dinov2.models.vision_transformer import DinoVisionTransformer
    torch.manual_seed(0)
    net = DinoVisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=4,
                                mlp_ratio=2.0, init_values=0.5, block_chunks=0).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():  # no zero biases, no unit norms, a real table
            p.add_(0.1 * torch.randn_like(p))
    model = DinoSeg(**dict(TINY, num_registers=0, pos_embed="learned", pos_embed_cls=True,
                           qkv_bias=True, mask_token=True, layer_scale_init=0.5, layers=(0, 2)))
    x = np.random.default_rng(1).standard_normal((2, 32, 32, 4)).astype(np.float32)
    fresh = nn.unbox(model.init(jax.random.key(0), x)["params"])
    fuse = np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32)
    params = dict(fresh, fuse={"kernel": fuse}, encoder=_dinov2_params(net, net.state_dict()))
    feats = np.asarray(model.apply({"params": params}, x, return_features=True))
    with torch.no_grad():
        ref = net.get_intermediate_layers(torch.from_numpy(x @ fuse).permute(0, 3, 1, 2), n=[0, 2],
                                          reshape=True, norm=True)
    ref = torch.cat(ref, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-4)
    later = dict(params, encoder=dict(params["encoder"], blocks_3=jax.tree_util.tree_map(
        lambda a: a * 0 + 1.0, params["encoder"]["blocks_3"])))
    np.testing.assert_array_equal(model.apply({"params": later}, x, return_features=True), feats)


def test_encoder_from_a_converted_backbone(tiny, tmp_path):
    """init.encoder_only from a converted slice encoder directory (a bare DinoViT, as
    ``convert from-torch`` writes a DINOv3 / DINOv2 backbone): its tree becomes ``encoder``,
    fusion and decoder stay fresh, and the features are the backbone's named blocks."""
    from jaxbrain import runs
    from jaxbrain.convert.pretrained import load_pretrained
    from jaxbrain.models import DinoViT
    model, params, x = tiny
    fields = {k: TINY[k] for k in ("img_size", "patch_size", "hidden_size", "depth", "num_heads",
                                   "mlp_dim", "num_registers", "layer_scale_init", "norm_eps")}
    backbone = DinoViT(**fields, pos_embed="learned", mask_token=False)
    x3 = np.asarray(x[..., :3])
    source = nn.unbox(backbone.init(jax.random.key(7), x3))
    runs.save_converted(str(tmp_path / "backbone"), {"name": "dino_vit", **fields,
                                                     "pos_embed": "learned", "mask_token": False},
                        source)
    merged, report = load_pretrained(str(tmp_path / "backbone"), model, {"params": params},
                                     encoder_only=True)
    assert "taken as encoder/" in str(report.adapted)
    got = merged["params"]
    for a, b in zip(jax.tree_util.tree_leaves(got["encoder"]), jax.tree_util.tree_leaves(source["params"])):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got["decoder_0"]["kernel"], params["decoder_0"]["kernel"])
    feats = model.apply({"params": got}, x, return_features=True)
    fused = np.asarray(x) @ np.asarray(got["fuse"]["kernel"])
    blocks = backbone.apply(source, fused, layers=TINY["layers"])
    ref = np.concatenate([np.asarray(b)[:, 3:].reshape(2, 4, 4, 32) for b in blocks], -1)
    np.testing.assert_allclose(feats, ref, rtol=1e-5, atol=1e-5)


def test_slice_sampler_oversamples_foreground_and_crops_to_the_patch():
    rng = np.random.default_rng(0)
    image = np.zeros((20, 24, 10, 2), np.float32)
    image[2:18, 2:22, 1:9] = rng.standard_normal((16, 20, 8, 2)) + 3.0
    label = np.zeros((20, 24, 10), np.uint8)
    label[14:17, 3:6, 7] = 2
    label[4, 20, 2] = 1
    record = {"id": "c", "image": image, "label": label}
    fg = T.RandSliceCrop(roi=(8, 16), pos_fraction=1.0)
    for seed in range(20):
        out = fg(record, np.random.default_rng(seed))
        assert out["image"].shape == (8, 16, 2) and out["label"].shape == (8, 16)
        assert out["label"][4, 8] > 0 or out["label"].max() > 0  # centred on a tumour voxel
    classes = [fg(record, np.random.default_rng(s))["label"].max() for s in range(40)]
    assert {1, 2} <= set(classes)  # the class is drawn first: the single voxel of 1 shows up
    rand = T.RandSliceCrop(roi=(30, 16), pos_fraction=0.0)  # taller than the slice: padded
    slices = set()
    for seed in range(60):
        out = rand(record, np.random.default_rng(seed))
        assert out["image"].shape == (30, 16, 2)
        assert not out["image"][:5].any() and not out["image"][-5:].any()  # 5 padded rows each side
        slices.add(int(np.argmax([np.array_equal(out["image"][5:25], image[:, :, z, :][:, s:s + 16])
                                  for z in range(10) for s in range(9)]) // 9))
    assert slices == set(range(1, 9))  # uniform among slices with brain
    mixed = T.RandSliceCrop(roi=(8, 8), pos_fraction=0.33)
    hits = np.mean([mixed(record, np.random.default_rng(s))["label"].any() for s in range(1000)])
    assert 0.31 < hits < 0.40  # a third forced (1), the rest by chance (3%)
    with pytest.raises(ValueError, match="2 positive integers"):
        T.RandSliceCrop(roi=(8, 8, 8))
    with pytest.raises(ValueError, match="data.roi"):
        T.RandSliceCrop()


def test_volumes_are_predicted_slice_by_slice(tiny):
    """The shared predictor on a 2D model: the stacked slices equal the model run on each
    slice alone (one window a slice), and equal per-slice sliding windows when a slice needs
    several windows; any axis can be the slice axis."""
    model, params, _ = tiny
    objective = Segmentation(kind="sigmoid")
    variables = {"params": params}
    volume = np.random.default_rng(0).standard_normal((32, 32, 5, 4)).astype(np.float32)
    predictor = Predictor(model, objective, (32, 32), mode="gaussian", sw_batch_size=3, slice_axis=2)
    probs = predictor.probabilities(variables, volume)
    assert probs.shape == (32, 32, 5, 3)
    apply = jax.jit(lambda p, s: objective.probabilities(model.apply({"params": p}, s)))
    each = np.stack([np.asarray(apply(params, volume[None, :, :, z]))[0] for z in range(5)], axis=2)
    np.testing.assert_allclose(probs, each, rtol=1e-5, atol=1e-6)

    wide = np.random.default_rng(1).standard_normal((4, 48, 40, 4)).astype(np.float32)
    across = Predictor(model, objective, (32, 32), sw_batch_size=4, slice_axis=0)
    probs = across.probabilities(variables, wide)
    assert probs.shape == (4, 48, 40, 3)
    fn = lambda w: objective.probabilities(model.apply(variables, w))  # noqa: E731
    for i in (0, 3):
        one = sliding_window_inference(fn, wide[i:i + 1], (32, 32), mode="gaussian", sw_batch_size=4)
        np.testing.assert_allclose(probs[i], one[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="give 2 sizes"):
        Predictor(model, objective, (32, 32, 32), slice_axis=2)


def _dice(pred, target):
    return 2 * np.logical_and(pred, target).sum() / (pred.sum() + target.sum())


def test_demo_trains_on_slices_and_eval_equals_validation(tmp_path):
    """The demo recipe at test size: train.py's loop on axial slices, validation of whole
    volumes slice by slice, then eval.py: its metrics.json equals the run's last validation,
    and the whole-tumour Dice beats calling the whole brain tumour."""
    from jaxbrain.data import labels, pipeline
    from jaxbrain.training import data as data_lib
    from jaxbrain.training.config import load_config_file
    from jaxbrain.training.loop import train_and_evaluate
    c = load_config_file(os.path.join(ROOT, "configs", "braindino_seg_brats.py"), "demo")
    c.model.update(hidden_size=32, depth=2, num_heads=4, mlp_dim=64, layers=(0, 1), img_size=32)
    c.total_steps, c.log_every, c.eval_every, c.ckpt_every = 150, 50, 150, 150
    c.batch_size = 8
    c.progress = False
    c.optim.update(lr=2e-3, lr_scale={"encoder": 0.5})
    c.data.update(roi=(32, 32), threads=1, crops_per_volume=4)
    c.data.synthetic.update(n=5, shape=(48, 48, 32), anatomy="procedural")
    c.eval.update(max_cases=1, sw_batch_size=8)
    workdir = str(tmp_path / "run")
    last = train_and_evaluate(c, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    curve = [r["train/loss"] for r in rows if "train/loss" in r]
    assert curve[-1] < curve[0], curve
    val = {k[4:]: v for r in rows for k, v in r.items() if k.startswith("val/")}

    out = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), "--workdir", workdir,
                          "--output", str(tmp_path / "eval")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / "eval" / "metrics.json") as f:
        written = json.load(f)
    means = {k: v["mean"] for k, v in written["summary"].items() if k != "step"}
    assert {"dice_WT", "hd95_WT", "dice_ET"} <= set(val) and set(val) <= set(means)
    assert {k: means[k] for k in val} == pytest.approx(val, rel=1e-5, abs=1e-6)
    assert last["val_dice_WT"] == pytest.approx(val["dice_WT"])
    (case,) = written["cases"]
    assert os.path.exists(tmp_path / "eval" / f"{case['case']}_seg.nii.gz")

    _, val_cases = data_lib.cases(c.data, workdir)
    record = pipeline.eval_dataset(val_cases[:1], preprocess=c.data.preprocess, shard=(0, 1))[0]
    assert record["id"] == case["case"]
    wt = labels.brats_to_regions(record["label"])[..., 1] > 0
    baseline = _dice(np.any(record["image"] != 0, axis=-1), wt)
    print(f"\nwhole-tumour Dice {val['dice_WT']:.3f} (validation) = {means['dice_WT']:.3f} "
          f"(eval.py); the whole brain called tumour: {baseline:.3f}; train loss "
          f"{curve[0]:.3f} -> {curve[-1]:.3f}")
    assert val["dice_WT"] > baseline + 0.1, (val, baseline)

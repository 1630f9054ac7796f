"""2D image and video networks into the 3D models (jaxbrain.convert.inflate): on volumes
constant along depth the inflated networks give the 2D networks' responses (timm's ViT and
ResNet / DenseNet built with random weights; whole networks where the architecture makes it
exact), VideoMAE's tubelet kernel resampled to a deeper patch gives the video kernel's
response on the matching clip (transformers' VideoMAEModel), every load goes through
load_pretrained with strict reports, wrong inputs fail by name, and a train run starts from
a timm ResNet file (init.torch + init.from)."""

from __future__ import annotations

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import flax.linen as nn

torch = pytest.importorskip("torch")

from _util import numpy_state, timm_module  # noqa: E402
from jaxbrain import models  # noqa: E402
from jaxbrain.convert import CheckpointMismatchError, core, inflate, vit as vit_family  # noqa: E402
from jaxbrain.convert.pretrained import load_pretrained  # noqa: E402
from jaxbrain.models import ViT  # noqa: E402
from jaxbrain.models.cnn3d import DenseNet, ResNet  # noqa: E402


def _randomise(net, seed):
    """Parameters and BatchNorm running statistics away from their initial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return net.eval()


def _fresh(model, shape):
    """Stand-in fresh variables (zeros of the model's shapes: these loads replace them all)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape, jnp.float32))
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), nn.unbox(shapes))


def _grey(rng, shape):
    """(B, H, W) grey images."""
    return rng.normal(size=shape).astype(np.float32)


def _torch_rgb(img):
    """(B, H, W) grey -> (B, 3, H, W): the grey image replicated to RGB."""
    return torch.from_numpy(np.repeat(img[:, None], 3, axis=1))


def _volume(img, depth):
    """(B, H, W) -> (B, depth, H, W, 1): constant along depth."""
    return np.repeat(img[:, None, :, :, None], depth, axis=1)


def _captured(model, variables, x, path):
    """The output of the submodule at ``path`` (its first call)."""
    _, state = model.apply(variables, x, capture_intermediates=lambda m, _: m.name == path[-1],
                           mutable=["intermediates"])
    tree = state["intermediates"]
    for name in path:
        tree = tree[name]
    return np.asarray(tree["__call__"][0])


def _strict_clean(report):
    assert report.ok and not report.mismatched and not report.unused and not report.missing


# ----------------------------------------------------------------------------------------
# Kernels.


def test_kernel_inflation_and_depth_resampling():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 5, 5)).astype(np.float32)
    mean, centre = inflate.inflate_kernel(w, 7, "mean"), inflate.inflate_kernel(w, 7, "centre")
    assert mean.shape == centre.shape == (4, 3, 7, 5, 5)
    np.testing.assert_allclose(mean.sum(2), w, rtol=1e-6)
    np.testing.assert_array_equal(centre[:, :, 3], w)
    assert not centre[:, :, [0, 1, 2, 4, 5, 6]].any()
    # frames -> depth taps: every frame's weight sums to one over the taps
    for frames, depth in ((2, 16), (2, 3), (3, 2), (2, 1), (2, 2)):
        m = inflate.depth_matrix(frames, depth)
        np.testing.assert_allclose(m.sum(0), np.ones(frames), rtol=1e-12)
    np.testing.assert_array_equal(inflate.depth_matrix(2, 4), [[.5, 0], [.5, 0], [0, .5], [0, .5]])
    np.testing.assert_array_equal(inflate.depth_matrix(2, 5, "centre")[1:3], np.eye(2))
    with pytest.raises(ValueError, match="init.inflate='sideways'"):
        inflate.inflate_kernel(w, 3, "sideways")
    with pytest.raises(ValueError, match="shorter"):
        inflate.depth_matrix(4, 2, "centre")


# ----------------------------------------------------------------------------------------
# timm ViT -> 3D ViT.


def _timm_vit(seed, **kw):
    vt = timm_module("vision_transformer")
    torch.manual_seed(seed)
    net = vt.VisionTransformer(img_size=32, patch_size=16, in_chans=3, num_classes=3, embed_dim=32,
                               depth=1, num_heads=2, mlp_ratio=2.0, qkv_bias=True, **kw)
    return _randomise(net, seed + 1)


@pytest.fixture(scope="module")
def timm_vit_avg():
    """A timm ViT without prefix tokens (average pooling) and its 3D inflation, grey input."""
    net = _timm_vit(0, class_token=False, global_pool="avg")
    state = numpy_state(net)
    cfg = inflate.config_for("timm_vit", state, "vit")
    assert cfg["patch_size"] == (16, 16, 16) and cfg["img_size"] == (32, 32, 32)
    model = ViT(num_heads=2, **{**cfg, "in_channels": 1, "img_size": (48, 32, 32)})
    return net, state, model, _fresh(model, (1, 48, 32, 32, 1))


@pytest.mark.parametrize("mode", inflate.MODES)
def test_timm_vit_inflated_equals_2d_on_depth_constant_volumes(timm_vit_avg, mode):
    """Without prefix tokens, the whole inflated ViT on a depth-constant volume is the 2D ViT
    on its slice (each token repeats over the 3 depth positions; attention over repeated keys
    is unchanged, so is the token mean); the patch embedding alone within 1e-5; the RGB stem
    summed for grey input; positions repeated over depth."""
    net, state, model, fresh = timm_vit_avg
    variables, report = load_pretrained(state, model, fresh, source_family="timm_vit",
                                        inflate=mode, channels="sum", new_head=False)
    _strict_clean(report)
    assert "inflated to 3D" in report.source_format  # every key loaded, the stem adapted:
    assert set(report.loaded) | {"patch_embed.proj.weight"} == set(state)
    assert any("patch_embed.proj.weight: 3 -> 1 input channels (sum)" in a for a in report.adapted)
    table = variables["params"]["encoder"]["position_embeddings"]
    np.testing.assert_array_equal(table.reshape(3, 4, 32), np.repeat(state["pos_embed"].reshape(1, 4, 32), 3, 0))

    img = _grey(np.random.default_rng(1), (2, 32, 32))
    x = _volume(img, 48)
    with torch.no_grad():
        rgb = _torch_rgb(img)
        want_tokens = net.patch_embed(rgb).numpy()  # (B, 4, D)
        want = net(rgb).numpy()
    tokens = _captured(model, variables, x, ("encoder", "patch_embedding"))  # (B, 3, 2, 2, D)
    for d in range(3):
        np.testing.assert_allclose(tokens[:, d].reshape(2, 4, 32), want_tokens, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(model.apply(variables, x)), want, atol=2e-5, rtol=1e-4)


def test_timm_vit_cls_row_positions_and_grid_resampling():
    """ViT-B's layout (CLS token with a position row): the row goes into cls_token for a
    model without CLS positions or is carried as the CLS row; the 2x2 grid resampled in-plane
    (bicubic as F.interpolate) to 3x3 and repeated over depth."""
    net = _timm_vit(2)
    state = numpy_state(net)
    pos = state["pos_embed"]
    assert pos.shape == (1, 5, 32)
    base = dict(inflate.config_for("timm_vit", state, "vit"), num_heads=2, in_channels=3)
    assert base["pos_embed_cls"]
    folded = ViT(**{**base, "pos_embed_cls": False, "img_size": (32, 32, 32)})
    v, report = load_pretrained(state, folded, _fresh(folded, (1, 32, 32, 32, 3)))
    _strict_clean(report)  # init.from=None: the keys show timm's ViT
    p = v["params"]["encoder"]
    np.testing.assert_allclose(p["cls_token"], state["cls_token"] + pos[:, :1], rtol=1e-6)
    np.testing.assert_array_equal(p["position_embeddings"].reshape(2, 4, 32),
                                  np.repeat(pos[:, 1:], 2, 0))
    assert any("added into cls_token" in a for a in report.adapted)

    wide = ViT(**{**base, "img_size": (16, 48, 48)})
    v, report = load_pretrained(state, wide, _fresh(wide, (1, 16, 48, 48, 3)), inflate="centre")
    _strict_clean(report)
    table = v["params"]["encoder"]["position_embeddings"]
    assert table.shape == (1, 1 + 9, 32)
    np.testing.assert_array_equal(table[:, :1], pos[:, :1])
    with torch.no_grad():  # timm's own resampling of the patch rows, without antialiasing
        grid = torch.from_numpy(pos[:, 1:]).reshape(1, 2, 2, 32).permute(0, 3, 1, 2)
        want = torch.nn.functional.interpolate(grid, size=(3, 3), mode="bicubic", align_corners=False)
        want = want.permute(0, 2, 3, 1).reshape(1, 9, 32).numpy()
    np.testing.assert_allclose(table[:, 1:], want, atol=1e-6)
    kernel = v["params"]["encoder"]["patch_embedding"]["kernel"]  # (16, 16, 16, 3, 32)
    assert not np.asarray(kernel)[[0, 15]].any() and np.asarray(kernel)[8].any()  # centre tap


# ----------------------------------------------------------------------------------------
# torchvision / timm ResNet and DenseNet -> 3D CNNs.


def _timm_resnet(block, layers, channels, seed=0):
    r = timm_module("resnet")
    torch.manual_seed(seed)
    net = r.ResNet({"basic": r.BasicBlock, "bottleneck": r.Bottleneck}[block], list(layers),
                   channels=channels, num_classes=3)
    return _randomise(net, seed + 1)


RESNETS = {  # timm arguments; the 3D model: torchvision's stem and shortcut B without bias
    "resnet18": ("basic", (2, 2, 2, 2), (64, 64, 128, 128)),
    "bottleneck": ("bottleneck", (1, 1, 1, 1), (64, 8, 8, 8)),  # torchvision's stem: 64 wide
}


def _resnet3d(block, layers, channels):
    return ResNet(1, 3, block=block, layers=layers, block_inplanes=channels, conv1_t_size=7,
                  conv1_t_stride=2, shortcut_type="B", bias_downsample=False)


@pytest.fixture(scope="module")
def resnets():
    out = {}
    for name, (block, layers, channels) in RESNETS.items():
        net = _timm_resnet(block, layers, channels)
        model = _resnet3d(block, layers, channels)
        out[name] = (net, numpy_state(net), model, _fresh(model, (1, 16, 32, 32, 1)))
    return out


def _torch_stem(net, rgb):
    """conv1 and bn1 of a timm ResNet (its ReLU is act1)."""
    with torch.no_grad():
        return net.bn1(net.conv1(rgb)).numpy()


@pytest.mark.parametrize("name", list(RESNETS))
def test_resnet_centre_inflation_equals_2d_network(resnets, name):
    """Centre inflation: the whole inflated ResNet (basic blocks: ResNet-18's depths at small
    widths; bottlenecks) on a depth-constant volume gives the 2D network's logits (every
    layer's depth taps see only the slice itself, the depth padding meets zero taps); BatchNorm
    statistics carried; the stem (conv1 7^3, stride 2, bn1) equals torchvision's slice by
    slice; the 2D head kept."""
    net, state, model, fresh = resnets[name]
    variables, report = load_pretrained(state, model, fresh, source_family="torchvision_resnet",
                                        inflate="centre")
    _strict_clean(report)
    assert set(report.loaded) | {"conv1.weight"} == set(state)  # the stem adapted to grey
    assert report.source_format.startswith("ResNet")
    stats = variables["batch_stats"]["encoder"]["bn1"]
    np.testing.assert_array_equal(stats["mean"], state["bn1.running_mean"])
    img = _grey(np.random.default_rng(3), (2, 32, 32))
    x = _volume(img, 16)
    with torch.no_grad():
        want = net(_torch_rgb(img)).numpy()
    got = np.asarray(model.apply(variables, x))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    bn1 = _captured(model, variables, x, ("encoder", "bn1"))  # (B, 8, 16, 16, C)
    stem = _torch_stem(net, _torch_rgb(img)).transpose(0, 2, 3, 1)
    for d in range(bn1.shape[1]):
        np.testing.assert_allclose(bn1[:, d], stem, atol=1e-5, rtol=1e-5)


def test_resnet_mean_inflation_equals_2d_stem_on_interior_slices(resnets):
    """Mean (I3D) inflation: the stem's output (conv1 7^3 stride 2, bn1) on a depth-constant
    volume of 16 slices equals the 2D stem at the output depths 2..5, whose 7 taps lie inside
    the volume (at 0, 1, 6, 7 the zero padding takes its share of the kernel)."""
    net, state, model, fresh = resnets["resnet18"]
    variables, report = load_pretrained(state, model, fresh, inflate="mean")  # keys decide
    _strict_clean(report)
    assert any("2D kernels inflated over depth (mean): 1x1 -> 1x1x1, 3x3 -> 3x3x3, 7x7 -> 7x7x7"
               in a for a in report.adapted)
    img = _grey(np.random.default_rng(4), (1, 32, 32))
    bn1 = _captured(model, variables, _volume(img, 16), ("encoder", "bn1"))
    stem = _torch_stem(net, _torch_rgb(img)).transpose(0, 2, 3, 1)
    for d in range(2, 6):  # 2d - 3 >= 0 and 2d + 3 <= 15
        np.testing.assert_allclose(bn1[:, d], stem, atol=1e-5, rtol=1e-5)
    assert np.abs(bn1[:, 0] - stem).max() > 1e-3  # the border slice is not the 2D response


def test_densenet_inflation_equals_2d_network():
    """torchvision / timm DenseNet names: centre inflation gives the 2D logits on a depth-
    constant volume (dense layers, transitions with average pooling, norm5); mean inflation
    the 2D stem (conv0 7^3 stride 2, norm0) on the interior output depths."""
    d = timm_module("densenet")
    torch.manual_seed(0)
    net = _randomise(d.DenseNet(growth_rate=4, block_config=(1, 2), bn_size=2, num_classes=3), 1)
    state = numpy_state(net)
    model = DenseNet(1, 3, init_features=8, growth_rate=4, block_config=(1, 2), bn_size=2)
    fresh = _fresh(model, (1, 16, 32, 32, 1))
    img = _grey(np.random.default_rng(5), (2, 32, 32))
    x = _volume(img, 16)
    rgb = _torch_rgb(img)
    variables, report = load_pretrained(state, model, fresh, source_family="torchvision_densenet",
                                        inflate="centre")
    _strict_clean(report)
    assert report.source_format.startswith("torchvision")
    assert len(report.loaded) + 1 == len(state)  # in MONAI's names; the stem adapted
    assert "features.conv0.weight" not in report.loaded
    with torch.no_grad():
        want = net(rgb).numpy()
    np.testing.assert_allclose(np.asarray(model.apply(variables, x)), want, atol=1e-4, rtol=1e-4)
    variables, report = load_pretrained(state, model, fresh, inflate="mean")
    _strict_clean(report)
    conv0 = _captured(model, variables, x, ("features", "conv0"))
    with torch.no_grad():  # (timm's norm0 holds the ReLU: the convolution is compared)
        stem = net.features.conv0(rgb).numpy().transpose(0, 2, 3, 1)
    for k in range(2, 6):
        np.testing.assert_allclose(conv0[:, k], stem, atol=1e-5, rtol=1e-5)


def test_wrong_sources_fail_by_name(resnets):
    net, state, model, fresh = resnets["resnet18"]
    # a timm ResNet into MedicalNet's ResNet-18 (shortcut A): the downsample keys are named
    shortcut_a = models.create("resnet18", in_channels=1, num_classes=3,
                               block_inplanes=(64, 64, 128, 128))
    with pytest.raises(CheckpointMismatchError, match=r"layer2\.0\.downsample\.0\.weight"):
        load_pretrained(state, shortcut_a, _fresh(shortcut_a, (1, 16, 32, 32, 1)))
    with pytest.raises(ValueError, match="init.from='timm_vit' reads ViT"):
        load_pretrained(state, model, fresh, source_family="timm_vit")
    with pytest.raises(ValueError, match="init.from='imagenet'"):
        load_pretrained(state, model, fresh, source_family="imagenet")
    with pytest.raises(ValueError, match="reads DenseNet files"):
        load_pretrained(state, model, fresh, source_family="torchvision_densenet")
    densenet = DenseNet(1, 3, init_features=8, growth_rate=4, block_config=(1, 2), bn_size=2)
    with pytest.raises(ValueError, match="init.from='torchvision_densenet': not a DenseNet state dict"):
        load_pretrained(state, densenet, {}, source_family="torchvision_densenet")
    # another stem size: the 2D kernel stays 2D and the report names it
    small_stem = ResNet(1, 3, block="basic", layers=(2, 2, 2, 2), block_inplanes=(64, 64, 128, 128),
                        conv1_t_size=3, shortcut_type="B", bias_downsample=False)
    with pytest.raises(CheckpointMismatchError, match=r"conv1\.weight  checkpoint \(64, 3, 7, 7\)"):
        load_pretrained(state, small_stem, _fresh(small_stem, (1, 16, 32, 32, 1)))


# ----------------------------------------------------------------------------------------
# VideoMAE -> 3D ViT with a deeper patch.


@pytest.fixture(scope="module")
def videomae_net():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.VideoMAEConfig(image_size=32, patch_size=16, num_channels=3, num_frames=4,
                                      tubelet_size=2, hidden_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=64, qv_bias=True,
                                      use_mean_pooling=False)
    torch.manual_seed(0)
    net = _randomise(transformers.VideoMAEModel(cfg), 1)
    return net, numpy_state(net)


@pytest.mark.parametrize("mode", inflate.MODES)
def test_videomae_tubelets_into_a_deeper_volume_patch(videomae_net, mode):
    """The 2x16x16 tubelet kernel as a 16^3 patch: with "mean" a volume holding each of a
    clip's frames for 8 slices gives VideoMAEModel's patch embedding of the clip, with either
    mode a depth-constant volume gives it on the constant clip; sin-cos positions regenerated
    for the volume (a learned table starts from them); strict report."""
    net, state = videomae_net
    cfg = inflate.config_for("videomae", state, "vit")
    assert cfg["patch_size"] == (16, 16, 16)
    model = ViT(num_heads=2, **{**cfg, "img_size": (32, 32, 32), "pos_embed": "learned"})
    variables, report = load_pretrained(state, model, _fresh(model, (1, 32, 32, 32, 3)),
                                        source_family="videomae", inflate=mode)
    _strict_clean(report)
    assert any("tubelet of 2 frames -> patch depth 16" in a for a in report.adapted)
    table = variables["params"]["encoder"]["position_embeddings"]
    np.testing.assert_array_equal(table[0], vit_family.sincos_table(8, 32))
    rng = np.random.default_rng(6)
    clip = rng.normal(size=(1, 4, 3, 32, 32)).astype(np.float32)  # (B, T, C, H, W)
    constant = np.repeat(clip[:, :1], 4, axis=1)
    cases = [(constant, np.repeat(constant, 8, axis=1))]
    if mode == "mean":
        cases.append((clip, np.repeat(clip, 8, axis=1)))  # each frame held 8 slices
    for video, volume in cases:
        with torch.no_grad():
            want = net.embeddings.patch_embeddings(torch.from_numpy(video)).numpy()  # (B, 8, D)
        x = volume.transpose(0, 1, 3, 4, 2)  # (B, D, H, W, C)
        tokens = _captured(model, variables, x, ("encoder", "patch_embedding"))  # (B, 2, 2, 2, D)
        # within 1e-5 of the response's scale (sums of 12288 float32 products)
        np.testing.assert_allclose(tokens.reshape(1, 8, 32), want, rtol=1e-5,
                                   atol=1e-5 * np.abs(want).max())


# ----------------------------------------------------------------------------------------
# Through the training loop: init.torch + init.from.


def test_train_run_starts_from_a_timm_resnet_file(resnets, tmp_path):
    """configs/brain_classification.py:ad,demo with a 3D ResNet of the file's widths, one
    train step from a timm ResNet .pt file (init.from="torchvision_resnet", encoder only,
    grey from RGB): the run's first parameters are the inflated 2D network's."""
    import os
    import ml_collections
    from jaxbrain.training import loop
    from jaxbrain.training.config import load_config_file
    net, state, model, _ = resnets["bottleneck"]
    path = str(tmp_path / "timm_resnet.pt")
    torch.save(net.state_dict(), path)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    c = load_config_file(os.path.join(root, "configs", "brain_classification.py"), "ad,demo")
    block, layers, channels = RESNETS["bottleneck"]
    c.model = ml_collections.ConfigDict(dict(name="resnet", in_channels=1, num_classes=2, block=block, layers=layers,
                   block_inplanes=channels, conv1_t_size=7, conv1_t_stride=2,
                   shortcut_type="B", bias_downsample=False))
    c.data.synthetic.update(n=12, shape=(24, 24, 24), workers=0)
    c.data.update(roi=(24, 24, 24), num_folds=3)
    c.total_steps, c.log_every, c.eval_every, c.ckpt_every = 1, 1, 0, 1
    c.batch_size = 2
    c.progress = False
    c.init.update(torch=path, encoder_only=True, new_head=True, strict=True, inflate="centre")
    c.init["from"] = "torchvision_resnet"
    x = jax.ShapeDtypeStruct((1, 24, 24, 24, 1), jnp.float32)
    built = models.from_config(c.model)
    start = loop.initial_variables(c, built, x, jax.random.key(0))
    kernel = np.asarray(start["params"]["encoder"]["conv1"]["kernel"])  # (7, 7, 7, 1, 64)
    want = state["conv1.weight"].sum(1).transpose(1, 2, 0)  # RGB summed, (7, 7, 64)
    np.testing.assert_allclose(kernel[3, :, :, 0], want, rtol=1e-5, atol=1e-6)
    assert not kernel[[0, 1, 2, 4, 5, 6]].any()
    loop.train_and_evaluate(c, str(tmp_path / "run"))
    assert os.path.exists(tmp_path / "run" / "metrics.jsonl")


def test_command_line_from_torch_inflates(timm_vit_avg, tmp_path, capsys):
    """python -m jaxbrain.convert from-torch --from timm_vit: the 3D arguments lifted off the
    2D file (patch 16^3), the rest given; the converted directory holds load_pretrained's
    inflated parameters."""
    from jaxbrain import runs
    from jaxbrain.convert.__main__ import main as convert_main
    net, state, model, fresh = timm_vit_avg
    path = str(tmp_path / "vit.pt")
    torch.save(net.state_dict(), path)
    out = str(tmp_path / "converted")
    assert convert_main(["from-torch", path, out, "--from", "timm_vit", "--model", "vit",
                         "--set", "num_heads=2", "--set", "in_channels=1",
                         "--set", "img_size=[48,32,32]", "--channels", "sum",
                         "--inflate", "centre"]) == 0
    assert "inflated to 3D (centre)" in capsys.readouterr().out
    run = runs.load_run(out)
    want, _ = load_pretrained(state, model, fresh, source_family="timm_vit", inflate="centre",
                              channels="sum")
    got = run.variables["params"]["encoder"]["patch_embedding"]["kernel"]
    np.testing.assert_array_equal(np.asarray(got), want["params"]["encoder"]["patch_embedding"]["kernel"])
    with pytest.raises(SystemExit, match="give --model"):
        convert_main(["from-torch", path, out, "--from", "timm_vit"])


def test_torchvision_preset_takes_a_torchvision_resnet(resnets):
    """configs/brain_classification.py:resnet18,torchvision builds the architecture a
    torchvision ResNet-18 file fits (shortcut B without downsample bias; the plain resnet18
    preset is MedicalNet's shortcut A, refused above), and names the family."""
    from jaxbrain.training.config import load_config_file
    net, state, _, _ = resnets["resnet18"]
    c = load_config_file("configs/brain_classification.py", "ad,resnet18,torchvision")
    assert c.init["from"] == "torchvision_resnet"
    cfg = dict(c.model.to_dict(), block_inplanes=RESNETS["resnet18"][2], num_classes=3)
    model = models.from_config(cfg)
    variables, report = load_pretrained(state, model, _fresh(model, (1, 16, 32, 32, 1)),
                                        source_family=c.init["from"], inflate=c.init.inflate)
    assert not report.unused and not report.missing and not report.mismatched
    with pytest.raises(ValueError, match="the timm preset initialises vit, not resnet18"):
        load_config_file("configs/brain_classification.py", "ad,resnet18,timm")


# ----------------------------------------------------------------------------------------
# The whole-scan source presets on the files their sources publish.


def _preset_load(state, presets, **model):
    """load_pretrained as configs/brain_classification.py:<presets> starts a run (tiny sizes)."""
    from jaxbrain.training.config import load_config_file
    c = load_config_file("configs/brain_classification.py", presets)
    cfg = dict(c.model.to_dict(), hidden_size=32, depth=1, num_heads=2, mlp_dim=64,
               img_size=(32, 32, 32), patch_size=16, **model)
    built = models.from_config(cfg)
    return built, load_pretrained(state, built, _fresh(built, (1, 32, 32, 32, 1)),
                                  encoder_only=c.init.encoder_only, new_head=c.init.new_head,
                                  channels=c.init.channels, source_family=c.init["from"],
                                  inflate=c.init.inflate)


def _mcg_pretraining(hf: dict) -> dict:
    """MCG-NJU's pre-training checkpoint layout ({"model": encoder.*, encoder.norm, decoder.*,
    encoder_to_decoder, mask_token}) of a transformers VideoMAEForPreTraining state dict:
    fused qkv without bias, q_bias / v_bias."""
    enc, out = "videomae.encoder.layer.", {}
    for key, value in hf.items():
        if not key.startswith("videomae."):
            out[key.replace("decoder.decoder_layers.", "decoder.blocks.")] = value
            continue
        key = key[len("videomae."):]
        key = key.replace("embeddings.patch_embeddings.projection.", "patch_embed.proj.")
        key = key.replace("encoder.layer.", "blocks.").replace("layernorm.", "norm.")
        key = key.replace("layernorm_before.", "norm1.").replace("layernorm_after.", "norm2.")
        key = key.replace("attention.output.dense.", "attn.proj.")
        key = key.replace("intermediate.dense.", "mlp.fc1.").replace("output.dense.", "mlp.fc2.")
        key = key.replace("attention.attention.query.bias", "attn.q_bias")
        key = key.replace("attention.attention.value.bias", "attn.v_bias")
        if ".attention.attention." in key:
            continue  # fused below
        out["encoder." + key.replace("blocks_", "blocks.")] = value
    for i in {k.split(".")[3] for k in hf if k.startswith(enc)}:
        p = f"{enc}{i}.attention.attention."
        out[f"encoder.blocks.{i}.attn.qkv.weight"] = np.concatenate(
            [hf[p + n + ".weight"] for n in ("query", "key", "value")], 0)
    return {"model": out}


def test_source_presets_load_published_files():
    """The videomae preset takes a transformers VideoMAEForPreTraining / VideoMAEModel file
    with its final layernorm and MCG-NJU's pre-training layout (encoder.norm, decoder) with
    the same result, the norm and decoder reported as ignored (VideoMAE's fine-tuning), or
    kept with model.final_norm=True; the timm preset takes timm's token-pooled ViT (norm.*)
    with the demo's sizes too; a clean load has no hints (stem adapted, head fresh); a file
    that needs another pooling fails naming the setting."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.VideoMAEConfig(
        image_size=32, patch_size=16, num_channels=3, num_frames=4, tubelet_size=2,
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        qv_bias=True, use_mean_pooling=False, decoder_hidden_size=16,
        decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32)
    torch.manual_seed(0)
    pre = numpy_state(_randomise(transformers.VideoMAEForPreTraining(cfg), 2))
    assert "videomae.layernorm.weight" in pre
    enc = {k[len("videomae."):]: v for k, v in pre.items() if k.startswith("videomae.")}
    loads = {}
    for name, state in (("pretraining", pre), ("model", enc), ("mcg", _mcg_pretraining(pre))):
        model, (variables, report) = _preset_load(state, "ad,vit,videomae")
        _strict_clean(report)
        assert not report.hints and "hint" not in str(report)
        assert any("final norm not used" in a and "model.final_norm=True" in a
                   for a in report.adapted)
        assert "videomae.layernorm.weight" in report.ignored
        loads[name] = variables["params"]["encoder"]
    for other in ("model", "mcg"):
        jax.tree.map(np.testing.assert_array_equal, loads[other], loads["pretraining"])
    np.testing.assert_array_equal(loads["mcg"]["blocks_0"]["mlp"]["linear1"]["kernel"],
                                  pre["videomae.encoder.layer.0.intermediate.dense.weight"].T)
    _, (variables, report) = _preset_load(pre, "ad,vit,videomae", final_norm=True)
    _strict_clean(report)
    np.testing.assert_array_equal(variables["params"]["encoder"]["norm"]["scale"],
                                  pre["videomae.layernorm.weight"])

    token = numpy_state(_timm_vit(3, global_pool="token"))
    for presets in ("ad,vit,timm", "ad,demo,vit,timm"):
        model, (variables, report) = _preset_load(token, presets)
        _strict_clean(report)
        assert not report.hints and "hint" not in str(report), str(report)
        np.testing.assert_array_equal(variables["params"]["encoder"]["norm"]["scale"],
                                      token["norm.weight"])
    with pytest.raises(CheckpointMismatchError, match="set model.pool=cls"):
        _preset_load(token, "ad,vit,timm", pool="mean")
    avg = numpy_state(_timm_vit(4, class_token=False, global_pool="avg"))
    with pytest.raises(CheckpointMismatchError, match="set model.pool=mean"):
        _preset_load(avg, "ad,vit,timm", cls_token=False)

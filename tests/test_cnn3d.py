"""3D DenseNet and ResNet against MONAI's own classes (random weights, randomised BatchNorm):
outputs in evaluation and training mode, running statistics after a training forward, export
strictly loaded into MONAI, exact round trips, MedicalNet backbones, the type-A shortcut's
gradient, and checkpoints that do not fit."""

from __future__ import annotations

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import flax.linen as nn
from flax import traverse_util

torch = pytest.importorskip("torch")
from monai.networks.nets import DenseNet as MonaiDenseNet, DenseNet121 as MonaiDenseNet121  # noqa: E402
from monai.networks.nets import ResNet as MonaiResNet  # noqa: E402

from _util import numpy_state, random_params, rel_l2, to_torch_input  # noqa: E402
from _sidecar import build  # noqa: E402
from jaxbrain import models  # noqa: E402
from jaxbrain.convert import CheckpointMismatchError, export, family_of, load_torch, save_torch  # noqa: E402
from jaxbrain.models.cnn3d import (DenseNet, DenseNet121, ResNet, ResNet10, ResNet18,  # noqa: E402
                                   ResNet50)

# Batch statistics over a single voxel of two samples are ill-conditioned (float32 rounding
# is amplified ~1e8 times through DenseNet121), so the deepest stage keeps 4-8 voxels.
# jit at XLA's lowest optimisation level compiles these networks 3-5x faster than eager
# op-by-op execution (one compile per distinct shape) runs them.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
INPLANES = [64, 128, 256, 512]
TINY = dict(block="basic", layers=(1, 1, 1, 1), block_inplanes=(4, 8, 16, 32))
TINY_DENSENET = dict(init_features=8, growth_rate=4, block_config=(1, 2), bn_size=2)


def _randomise(net, seed=1):
    """Running statistics, affine BatchNorm parameters and biases away from their defaults."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(7)
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, torch.nn.Linear):
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return net


def _x(size, channels=1, seed=0):
    size = (size,) * 3 if isinstance(size, int) else tuple(size)
    return np.random.default_rng(seed).normal(size=(2, *size, channels)).astype(np.float32)


def _torch_out(net, x, train=False):
    net.train(train)
    with torch.no_grad():
        return net(to_torch_input(x)).numpy()


def _eval_and_train(model, variables, x):
    """(eval output, (train output, updated batch_stats)), one compiled program per model."""
    fn = jax.jit(lambda v, x: (model.apply(v, x),
                               model.apply(v, x, train=True, mutable=["batch_stats"])))
    return fn.lower(variables, x).compile(FAST_COMPILE), jnp.asarray(x)


def _flat(tree):
    return traverse_util.flatten_dict(jax.device_get(tree))


PAIRS = {  # name: (MONAI network, ours, input size)
    "densenet121": (lambda: MonaiDenseNet121(spatial_dims=3, in_channels=1, out_channels=3),
                    lambda: DenseNet121(1, 3), (32, 64, 64)),
    "resnet18_A": (lambda: MonaiResNet("basic", [2, 2, 2, 2], INPLANES, n_input_channels=2,
                                       conv1_t_stride=1, shortcut_type="A", num_classes=4),
                   lambda: ResNet18(2, 4, conv1_t_stride=1), 20),
    "resnet50_B": (lambda: MonaiResNet("bottleneck", [3, 4, 6, 3], INPLANES, n_input_channels=1,
                                       conv1_t_stride=2, shortcut_type="B", num_classes=2),
                   lambda: ResNet50(1, 2, bias_downsample=True), 40),
}


def _perturbed(params, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: (p * (1 + 0.05 * rng.normal(size=p.shape))).astype(np.float32),
                        jax.device_get(params))


@pytest.mark.parametrize("name", list(PAIRS))
def test_parity_both_directions_eval_and_train(name, tmp_path):
    make_net, make_model, size = PAIRS[name]
    torch.manual_seed(0)
    net, model = _randomise(make_net()), make_model()
    variables, report = load_torch(numpy_state(net), model)
    assert report.ok and len(report.loaded) == len(net.state_dict())
    x = _x(size, model.in_channels)
    run, xj = _eval_and_train(model, variables, x)
    out, (train_out, updated) = run(variables, xj)
    assert out.shape == (2, model.num_classes) and out.dtype == jnp.float32
    assert rel_l2(out, _torch_out(net, x)) < 1e-4
    assert rel_l2(train_out, _torch_out(net, x, train=True)) < 1e-4
    # one training forward moved the running statistics as PyTorch's (momentum 0.1, unbiased
    # variance, num_batches_tracked 7 -> 8)
    after, family = numpy_state(net), family_of(model)
    stats = _flat(updated["batch_stats"])
    assert len(stats) == sum(k.endswith(("running_mean", "running_var", "num_batches_tracked"))
                             for k in after)
    for path, value in stats.items():
        want = after[family.torch_key(model, ("batch_stats",) + path)]
        if path[-1] == "count":
            assert int(value) == int(want) == 8
        else:
            assert rel_l2(value, want) < 1e-4, path

    # ours -> MONAI: other weights and our statistics, strictly loaded, the same outputs
    mine = {"params": _perturbed(variables["params"]),
            "batch_stats": jax.device_get(updated["batch_stats"])}
    export(mine, model, tmp_path / "m.pt")
    fresh, info = build(tmp_path / "m.pt")  # MONAI's class from the sidecar alone
    assert info["library"] == "monai" and type(fresh).__name__ in ("ResNet", "DenseNet")
    assert rel_l2(run(mine, xj)[0], _torch_out(fresh, x)) < 1e-4


@pytest.mark.parametrize("family", ["densenet", "resnet"])
def test_round_trips_are_exact(family, tmp_path):
    """MONAI state dict -> ours -> state dict: every key, value and dtype, int64
    num_batches_tracked included; ours -> file -> ours bit for bit."""
    if family == "densenet":
        torch.manual_seed(0)
        net = _randomise(MonaiDenseNet(3, 2, 3, dropout_prob=0.2, **TINY_DENSENET))
        model = DenseNet(2, 3, dropout_prob=0.2, **TINY_DENSENET)
    else:
        torch.manual_seed(0)
        net = _randomise(MonaiResNet("bottleneck", [1, 2, 1, 1], [4, 8, 16, 32], n_input_channels=2,
                                     shortcut_type="B", bias_downsample=True, num_classes=3))
        model = ResNet(2, 3, block="bottleneck", layers=(1, 2, 1, 1), block_inplanes=(4, 8, 16, 32))
    original = numpy_state(net)
    variables, report = load_torch(original, model)
    assert report.ok and len(report.loaded) == len(original)
    state = save_torch(variables, model, None)
    assert set(state) == set(original)
    for key, value in original.items():
        assert state[key].dtype == value.dtype and np.array_equal(state[key], value), key
    assert state[next(k for k in state if k.endswith("num_batches_tracked"))].dtype == np.int64
    mine = random_params(model, seed=3)
    mine["batch_stats"] = jax.tree.map(lambda a: np.abs(a) + 0.5 if a.ndim else np.int32(9),
                                       mine["batch_stats"])
    save_torch(mine, model, tmp_path / "m.pt")
    back, _ = load_torch(tmp_path / "m.pt", model)
    a, b = _flat(back), _flat(mine)
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


def test_type_a_shortcut_passes_no_gradient_as_in_monai():
    """MONAI (and MedicalNet) concatenate ``out.data`` in the type-A shortcut (and the
    gradients of rematerialised blocks are those of the plain ones)."""
    torch.manual_seed(0)
    net = _randomise(MonaiResNet("basic", [1, 1, 1, 1], [4, 8, 16, 32], n_input_channels=1,
                                 conv1_t_stride=2, shortcut_type="A", num_classes=3))
    model = ResNet(1, 3, shortcut_type="A", remat=True, **TINY)
    variables, _ = load_torch(numpy_state(net), model)
    x = _x(16, seed=3)
    weights = np.random.default_rng(4).normal(size=(2, 3)).astype(np.float32)
    net.eval()
    (net(to_torch_input(x)) * torch.from_numpy(weights)).sum().backward()
    want = {k: p.grad.numpy() for k, p in net.named_parameters()}

    def loss(params):
        return (model.apply({**variables, "params": params}, x) * weights).sum()
    grads = jax.jit(jax.grad(loss)).lower(variables["params"]).compile(FAST_COMPILE)(variables["params"])
    got = save_torch({"params": grads, "batch_stats": variables["batch_stats"]}, model, None)
    assert set(want) <= set(got)
    for key, value in want.items():
        assert rel_l2(got[key], value) < 1e-4, key


@pytest.fixture(scope="module")
def medicalnet_file(tmp_path_factory):
    """A MedicalNet resnet10 release: {"state_dict": {"module.conv1.weight": ...}}, no fc,
    shortcut B without downsample bias, conv1 stride 2."""
    torch.manual_seed(0)
    net = _randomise(MonaiResNet("basic", [1, 1, 1, 1], INPLANES, n_input_channels=1,
                                 conv1_t_stride=2, shortcut_type="B", bias_downsample=False,
                                 feed_forward=False))
    path = tmp_path_factory.mktemp("medicalnet") / "resnet_10_23dataset.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return net, path


def test_medicalnet_backbone_into_features_and_into_a_new_head(medicalnet_file):
    net, path = medicalnet_file
    features = ResNet10(1, None)
    variables, report = load_torch(path, features)
    assert report.ok and "layer2.0.downsample.0.weight" in report.loaded
    x = _x(16, seed=5)
    out = jax.jit(features.apply).lower(variables, x).compile(FAST_COMPILE)(variables, x)
    assert out.shape == (2, 512)
    assert rel_l2(out, _torch_out(net, x)) < 1e-4

    classifier = ResNet10(1, 2)
    with pytest.raises(CheckpointMismatchError, match=r"fc\.weight") as err:
        load_torch(path, classifier)
    assert "encoder_only=True" in str(err.value)
    init = random_params(classifier)
    loaded, report = load_torch(path, classifier, params=init, encoder_only=True)
    assert report.ok and sorted(report.kept) == ["fc.bias", "fc.weight"]
    assert "bn1.running_mean" in report.loaded
    np.testing.assert_array_equal(loaded["params"]["fc"]["kernel"], init["params"]["fc"]["kernel"])
    np.testing.assert_array_equal(loaded["params"]["encoder"]["conv1"]["kernel"],
                                  variables["params"]["encoder"]["conv1"]["kernel"])


def test_encoder_only_from_orbax_keeps_the_encoders_running_statistics(tmp_path):
    """init.encoder_only from an Orbax directory (a converted model; a training run reads the
    same way) takes the encoder's parameters *and* its BatchNorm statistics; the head stays
    as initialised (another class count)."""
    from jaxbrain import runs
    from jaxbrain.convert.pretrained import load_pretrained
    kw = dict(block="basic", layers=(1, 1, 1, 1), block_inplanes=(4, 8, 8, 8))
    source = random_params(ResNet(1, 3, **kw), seed=1)
    assert set(source) == {"params", "batch_stats"}
    runs.save_converted(str(tmp_path / "pretrained"), {"name": "resnet", "in_channels": 1,
                                                       "num_classes": 3, **kw}, source)
    model = ResNet(1, 2, **kw)
    fresh = random_params(model, seed=2)
    variables, report = load_pretrained(str(tmp_path / "pretrained"), model, fresh,
                                        encoder_only=True)
    assert report.ok and "params/fc/kernel" in report.kept
    got, want, start = _flat(variables), _flat(source), _flat(fresh)
    encoder = [k for k in got if k[1] == "encoder"]
    assert {k[0] for k in encoder} == {"params", "batch_stats"}
    assert ("batch_stats", "encoder", "bn1", "mean") in encoder
    for k in encoder:
        np.testing.assert_array_equal(got[k], want[k], err_msg="/".join(k))
    for k in got:
        if k[1] != "encoder":
            np.testing.assert_array_equal(got[k], start[k], err_msg="/".join(k))


def _tiny_resnet_state(classes, **kw):
    torch.manual_seed(0)
    return numpy_state(MonaiResNet("basic", [1, 1, 1, 1], [4, 8, 16, 32], n_input_channels=1,
                                   num_classes=classes, **kw))


def _tiny_densenet_state(spatial_dims=3):
    torch.manual_seed(0)
    return numpy_state(MonaiDenseNet(spatial_dims, 1, 3, init_features=8, growth_rate=4,
                                     block_config=(1, 2), bn_size=2))



def test_other_class_count_fails_unless_new_head():
    state, model = _tiny_resnet_state(5), ResNet(1, 3, **TINY)
    with pytest.raises(CheckpointMismatchError, match="num_classes=5") as err:
        load_torch(state, model)
    assert "fc.weight  checkpoint (5, 32) vs model (3, 32)" in str(err.value)
    _, report = load_torch(state, model, params=random_params(model), new_head=True)
    assert sorted(k for k, _, _ in report.new_head) == ["fc.bias", "fc.weight"]


def test_missing_key_and_wrong_shortcut_are_named():
    state = _tiny_densenet_state()
    del state["features.denseblock2.denselayer2.layers.norm1.running_var"]
    with pytest.raises(CheckpointMismatchError, match="missing from the checkpoint \\(1\\)") as err:
        load_torch(state, DenseNet(1, 3, **TINY_DENSENET))
    assert ("features.denseblock2.denselayer2.layers.norm1.running_var  expected shape (10,)"
            in str(err.value))
    with pytest.raises(CheckpointMismatchError, match="shortcut_type='B', the model 'A'") as err:
        load_torch(_tiny_resnet_state(3), ResNet(1, 3, shortcut_type="A", **TINY))
    assert "layer2.0.downsample.0.weight" in str(err.value)


@pytest.mark.parametrize("family", ["densenet", "resnet"])
def test_2d_weights_into_the_3d_model_are_named(family):
    if family == "densenet":
        state, model = _tiny_densenet_state(2), DenseNet(1, 3, **TINY_DENSENET)
        key, shapes = "features.conv0.weight", "checkpoint (8, 1, 7, 7) vs model (8, 1, 7, 7, 7)"
    else:
        torch.manual_seed(0)
        state = numpy_state(MonaiResNet("basic", [1, 1, 1, 1], [4, 8, 16, 32], spatial_dims=2,
                                        n_input_channels=1, num_classes=3))
        model = ResNet(1, 3, **TINY)
        key, shapes = "conv1.weight", "checkpoint (4, 1, 7, 7) vs model (4, 1, 7, 7, 7)"
    with pytest.raises(CheckpointMismatchError) as err:
        load_torch(state, model)
    assert f"{key}  {shapes}" in str(err.value)
    assert "kernels are 2D" in str(err.value)


def test_inspect_recognises_both_families(tmp_path, capsys, medicalnet_file):
    from jaxbrain.convert.__main__ import main as convert
    _, path = medicalnet_file
    assert convert(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ResNet-10 (3D, shortcut B, no fc" in out and "--model resnet" in out
    assert '"layers": [1, 1, 1, 1]' in out and '"bias_downsample": false' in out
    assert '"num_classes": null' in out and "conv1_t_stride" in out
    dense = tmp_path / "densenet.pt"
    torch.manual_seed(0)
    torch.save(MonaiDenseNet(3, 1, 3, **TINY_DENSENET).state_dict(), dense)
    assert convert(["inspect", str(dense)]) == 0
    out = capsys.readouterr().out
    assert "MONAI DenseNet (3D)" in out and '"block_config": [1, 2]' in out and '"growth_rate": 4' in out


def test_registry_names_and_mixed_precision():
    assert models.create("densenet169", in_channels=1, num_classes=2).block_config == (6, 12, 32, 32)
    r = models.from_config({"name": "resnet34", "in_channels": 1, "num_classes": 2}, "bfloat16")
    assert (r.block, tuple(r.layers), r.shortcut_type) == ("basic", (3, 4, 6, 3), "A")
    assert r.dtype == jnp.bfloat16
    model = ResNet(1, 3, dtype=jnp.bfloat16, **TINY)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 16, 1)))
    stats = jax.tree_util.tree_leaves(shapes["batch_stats"])
    assert {s.dtype for s in stats} == {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 16, 16, 16, 1))), shapes)
    assert out.shape == (2, 3) and out.dtype == jnp.float32
    with pytest.raises(ValueError, match="channels last"):
        model.apply(nn.unbox(shapes), jnp.zeros((1, 1, 16, 16, 16)))


def test_torchvision_names_and_remat_trees():
    state = _tiny_densenet_state()
    renamed = {k.replace(".layers.", ".").replace("class_layers.out.", "classifier."): v
               for k, v in state.items()}
    model = DenseNet(1, 3, **TINY_DENSENET)
    variables, report = load_torch(renamed, model)
    assert report.ok and report.source_format.startswith("torchvision DenseNet")
    a, b = _flat(variables), _flat(load_torch(state, model)[0])
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    x = jnp.zeros((1, 16, 16, 16, 1))
    for plain, rematted in [(model, model.clone(remat=True)),
                            (ResNet(1, 3, **TINY), ResNet(1, 3, remat=True, **TINY))]:
        shapes = [jax.tree_util.tree_structure(jax.eval_shape(m.init, jax.random.key(0), x))
                  for m in (plain, rematted)]
        assert shapes[0] == shapes[1]

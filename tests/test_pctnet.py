"""PCT-Net against the PyTorch replica (bench/torch_pctnet.py, the published architecture with
MIS-FM's state-dict keys): outputs in evaluation and training mode and BatchNorm statistics
after a training step, for the three resolution modes; strict round trips; other class
counts; the relative-position index variants; the fixed input size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import flax.linen as nn
from flax import traverse_util

torch = pytest.importorskip("torch")
from torch_pctnet import DropPath, PCTNet as TorchPCTNet  # noqa: E402  (bench/)

from _util import from_torch_output, numpy_state, rel_l2, to_torch_input  # noqa: E402
from jaxbrain.convert import CheckpointMismatchError, export, load_torch, save_torch  # noqa: E402
from jaxbrain.models import PCTNet  # noqa: E402

SIZE = (16, 32, 32)  # pyramid grids: mode 0 4x8x8 (window shrinks to 4), mode 1 8^3 and
FEATURES = (4, 8, 16, 32, 64)  # mode 2 16x8x8 (window 6, padded and shifted)
HEADS = (2, 2, 4)


def _pair(mode, *, classes=3, dropout=(0.0,) * 5, drop_path=0.0, corrected=False, seed=0):
    torch.manual_seed(seed)
    net = TorchPCTNet({"in_chns": 2, "class_num": classes, "input_size": list(SIZE),
                       "feature_chns": list(FEATURES), "dropout": list(dropout),
                       "num_heads": list(HEADS), "multiscale_pred": True,
                       "resolution_mode": mode, "corrected_index": corrected})
    for m in net.modules():
        if isinstance(m, DropPath):
            m.drop_prob = drop_path
    with torch.no_grad():  # running statistics and slopes away from their initial values
        g = torch.Generator().manual_seed(seed + 1)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(7)
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, torch.nn.PReLU):
                m.weight.copy_(0.1 + 0.3 * torch.rand(1, generator=g))
    model = PCTNet(2, classes, input_size=SIZE, features=FEATURES, dropout=dropout,
                   num_heads=HEADS, drop_path=drop_path, multiscale_pred=True,
                   resolution_mode=mode, corrected_index=corrected)
    return net, model


def _x(seed=0):
    return np.random.default_rng(seed).normal(size=(2, *SIZE, 2)).astype(np.float32)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_outputs_and_batch_statistics_match_pytorch(mode):
    net, model = _pair(mode)
    variables, report = load_torch(numpy_state(net), model)
    assert report.ok and len(report.ignored) > 0  # the other modes' stems and heads
    x = _x(mode)

    net.eval()
    with torch.no_grad():
        ref = net(to_torch_input(x))
    out = model.apply(variables, jnp.asarray(x), all_scales=True)
    assert len(out) == 4
    for o, r in zip(out, ref):
        assert rel_l2(o, from_torch_output(r)) < 1e-4

    net.train()
    with torch.no_grad():
        ref = net(to_torch_input(x))
    out, updated = model.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"],
                               rngs={"dropout": jax.random.key(0)})
    for o, r in zip(out, ref):
        assert rel_l2(o, from_torch_output(r)) < 1e-4
    # the running statistics moved exactly as PyTorch's (momentum 0.1, unbiased variance)
    after, _ = load_torch(numpy_state(net), model)
    flat = traverse_util.flatten_dict(jax.device_get(updated["batch_stats"]))
    want = traverse_util.flatten_dict(after["batch_stats"])
    assert set(flat) == set(want)
    for key, value in flat.items():
        if key[-1] == "count":
            assert int(value) == int(want[key]) == 8
        else:
            np.testing.assert_allclose(value, want[key], rtol=1e-4, atol=1e-5, err_msg=str(key))


def test_round_trip_is_exact_and_loads_strictly_into_pytorch(tmp_path):
    net, model = _pair(1, dropout=(0.0, 0.0, 0.2, 0.2, 0.2), drop_path=0.2)
    original = numpy_state(net)
    variables, _ = load_torch(original, model)
    # export: every key of the original, strict load into the replica
    path = tmp_path / "pctnet.pt"
    state, _ = export(variables, model, path, template=original)
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"model_state_dict", "iteration"}
    info = json.loads((tmp_path / "pctnet.json").read_text())
    assert info["class"] == "PCTNet" and info["kwargs"]["params"]["resolution_mode"] == 1
    fresh = TorchPCTNet(info["kwargs"]["params"])  # the replica from the sidecar alone
    fresh.load_state_dict(saved["model_state_dict"], strict=True)
    assert set(state) == set(original)
    for key, value in original.items():  # with the template, the whole state dict comes back
        np.testing.assert_array_equal(state[key], value, err_msg=key)
        assert state[key].dtype == value.dtype, key
    # import back: bit for bit
    back, _ = load_torch(path, model)
    a = traverse_util.flatten_dict(back)
    b = traverse_util.flatten_dict(jax.device_get(variables))
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    # without a template the other modes are initialised as PyTorch initialises them
    state = save_torch(variables, model, None)
    fresh.load_state_dict({k: torch.from_numpy(np.array(v, order="C")) for k, v in state.items()},
                          strict=True)
    assert not np.array_equal(state["embeddings.0.proj.weight"], original["embeddings.0.proj.weight"])
    np.testing.assert_array_equal(state["embeddings.1.proj.weight"], original["embeddings.1.proj.weight"])


def test_other_class_count_needs_new_head():
    net, _ = _pair(0, classes=5)
    _, model = _pair(0, classes=2)
    with pytest.raises(CheckpointMismatchError, match="out_channels=5") as err:
        load_torch(numpy_state(net), model)
    assert "new_head" in str(err.value)
    from jaxbrain.training.loop import init_variables  # only the initialisers are compiled
    init = jax.device_get(init_variables(model, jax.ShapeDtypeStruct((1, *SIZE, 2), jnp.float32),
                                         jax.random.key(0), None))
    variables, report = load_torch(numpy_state(net), model, params=init, new_head=True)
    heads = sorted(k for k, _, _ in report.new_head)
    assert heads == sorted(f"{p}.conv.2.{w}" for p in ("pred_heads.0.out_conv0", "pred_heads.0.out_conv1",
                                                       "pyramid_ct.out_conv2", "pyramid_ct.out_conv3")
                           for w in ("weight", "bias"))
    kept = ("params", "pred_head", "out_conv0", "conv_2", "kernel")
    np.testing.assert_array_equal(traverse_util.flatten_dict(variables)[kept],
                                  traverse_util.flatten_dict(init)[kept])


def test_index_variants_and_fixed_input_size():
    net, _ = _pair(2, corrected=True)
    _, model = _pair(2)
    with pytest.raises(CheckpointMismatchError, match="corrected_index=True"):
        load_torch(numpy_state(net), model)
    variables, _ = load_torch(numpy_state(net), model.clone(corrected_index=True))
    net.eval()
    x = _x(3)
    with torch.no_grad():
        ref = net(to_torch_input(x))[0]
    out = model.clone(corrected_index=True).apply(variables, jnp.asarray(x))
    assert rel_l2(out, from_torch_output(ref)) < 1e-4
    with pytest.raises(ValueError, match="input_size"):
        model.apply(variables, jnp.zeros((1, 16, 32, 48, 2)))


def test_command_line_import_inspect_and_export_with_template(tmp_path, capsys):
    from jaxbrain.convert.__main__ import main as convert
    net, model = _pair(1, classes=5)
    released = tmp_path / "released.pt"
    torch.save({"model_state_dict": net.state_dict(), "iteration": 100,
                "optimizer_state_dict": {}}, released)
    assert convert(["inspect", str(released)]) == 0
    assert '"out_channels": 5' in capsys.readouterr().out
    with pytest.raises(SystemExit, match="input_size"):
        convert(["from-torch", str(released), str(tmp_path / "ckpt"), "--model", "pctnet"])
    assert convert(["from-torch", str(released), str(tmp_path / "ckpt"), "--model", "pctnet",
                    "--set", f"input_size={list(SIZE)}", "--set", "resolution_mode=1",
                    "--set", f"num_heads={list(HEADS)}", "--set", "drop_path=0.0",
                    "--set", "dropout=[0.0,0.0,0.0,0.0,0.0]"]) == 0
    out = tmp_path / "back.pt"
    assert convert(["to-torch", str(tmp_path / "ckpt"), str(out), "--template", str(released)]) == 0
    back = torch.load(out, weights_only=True)["model_state_dict"]
    original = net.state_dict()
    assert set(back) == set(original)
    for key, value in original.items():
        assert torch.equal(back[key], value), key


def test_single_scale_model_exchanges_with_the_original_layout():
    """Without multiscale_pred the original still holds the deep-supervision layers."""
    torch.manual_seed(0)
    net = TorchPCTNet({"in_chns": 2, "class_num": 3, "input_size": list(SIZE),
                       "feature_chns": list(FEATURES), "num_heads": list(HEADS)})
    model = PCTNet(2, 3, input_size=SIZE, features=FEATURES, num_heads=HEADS)
    variables, report = load_torch(numpy_state(net), model)
    assert report.ok and any("out_conv3" in k for k in report.ignored)
    state = save_torch(variables, model, None)
    net.load_state_dict({k: torch.from_numpy(np.array(v, order="C")) for k, v in state.items()},
                        strict=True)
    net.eval()
    x = _x(4)
    with torch.no_grad():
        ref = net(to_torch_input(x))
    assert rel_l2(model.apply(variables, jnp.asarray(x)), from_torch_output(ref)) < 1e-4

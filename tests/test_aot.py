"""python -m jaxbrain.aot: the train step of a config compiled for a TPU slice without a TPU
(libtpu compiles for the devices of ``get_topology_desc``), its printed figures consistent
with the program, and a config over a chip's memory reported as not fitting; the scale
hygiene around it (activations pinned to the batch shard, parameters left replicated under
fsdp named, resume without a fresh state)."""

import fcntl
import importlib.util
import json
import os
import sys
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from jaxbrain import aot, parallel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Only one process at a time may load libtpu: one xdist group, and the lock manual runs take.
pytestmark = pytest.mark.xdist_group("libtpu")
TOY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toy_config.py")
FEATURES, ROI = 64, 16


@pytest.fixture(scope="module")
def tpu_lock():
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("ahead-of-time TPU compilation needs libtpu (pip install -e '.[tpu]')")
    with open("/tmp/tpu_compile.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
        fcntl.flock(f, fcntl.LOCK_UN)


def _run(capsys, *args, roi=ROI):
    code = aot.main(["--config", TOY, "--topology", "v5e:2x2",
                     f"--config.model.features={FEATURES}", f"--config.data.roi=({roi},{roi},{roi})",
                     *args])
    return code, capsys.readouterr().out


def test_data_parallel_toy_step_compiles_for_v5e_and_its_figures_agree(tpu_lock, capsys,
                                                                       tmp_path):
    out_json = str(tmp_path / "toy.json")
    code, text = _run(capsys, "--per_chip_batch", "2", "--json", out_json)
    assert code == 0, text
    r = json.load(open(out_json))
    assert r["chips"] == 4 and r["mesh"] == {"data": 4, "fsdp": 1} and r["global_batch"] == 8
    # The toy's parameters: a 3^3 convolution 4 -> F and a 1^3 convolution F -> 3, with biases.
    params = 27 * 4 * FEATURES + FEATURES + FEATURES * 3 + 3
    assert r["parameters"] == params
    # Each chip holds the whole state (params, Adam's two moments) and its quarter of the batch
    # (image float32 with 4 channels, label uint8 with 3 region channels); the state's outputs
    # alias the donated arguments.
    state = 3 * 4 * params
    batch = 2 * ROI**3 * (4 * 4 + 3)
    assert r["argument_bytes"] >= state + batch
    assert state <= r["alias_bytes"] <= r["output_bytes"] <= r["argument_bytes"]
    assert r["total_bytes"] < r["hbm_bytes"] == 16 * 2**30 and r["fits"]
    # FLOPs: forward and backward of the stem convolution are at least twice its forward
    # multiply-adds, at most four times the whole forward (loss and optimizer are tiny).
    forward = 2 * ROI**3 * (27 * 4 * FEATURES + FEATURES * 3)
    assert 2 * forward <= r["flops_per_sample"] <= 4 * forward
    assert r["flops_per_step"] == pytest.approx(r["flops_per_sample"] * 8)
    # Pure data parallelism: gradients are reduced across chips, nothing else is exchanged.
    c = r["collectives"]
    assert c["all-reduce"]["count"] >= 1 and c["all-reduce"]["bytes"] >= 4 * params
    assert all(c[k]["count"] == 0 for k in ("all-gather", "collective-permute", "all-to-all"))
    assert f"per-chip HBM: arguments {r['argument_bytes'] / 2**30:.2f} GiB" in text
    assert "fits" in text and f"all-reduce {c['all-reduce']['count']}" in text
    assert ("samples/s" in text) == (r["step_s"] is not None)


def test_a_step_over_the_chips_memory_is_reported_with_both_sizes(tpu_lock, capsys):
    # 512 crops of 128^3 a chip: the float32 images alone take 16 GiB (XLA's rematerialisation
    # cannot help).
    code, text = _run(capsys, "--per_chip_batch", "512", roi=128)
    assert code == 2
    line = next(l for l in text.splitlines() if l.startswith("does not fit"))
    needs, has = [float(s.split()[0]) for s in line.split("needs ")[1].split(", chip has ")]
    assert needs > has > 15, line


def test_oom_messages_give_both_sizes():
    msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
           "temporaries (16.55G) exceeds available HBM (15.75G)")
    assert aot.parse_oom(msg) == (16.55 * 2**30, 15.75 * 2**30)
    assert aot.parse_oom("Used 20.5G of 15.75G hbm. Exceeded hbm capacity by 4.7G.") == (
        20.5 * 2**30, 15.75 * 2**30)


def test_fsdp_names_every_large_parameter_left_replicated(tpu_lock):
    """A weight whose dimensions the fsdp axis does not divide stays whole on every chip,
    and a warning names it (small ones and divisible ones are not named)."""
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2}, aot.topology_devices("v5e:2x2"))

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
            x = nn.Dense(2048, kernel_init=init, name="even")(x)  # 1024 x 2048: sharded
            x = nn.Dense(1025, kernel_init=init, name="odd")(x)  # 2048 x 1025: 2048 divides
            return nn.Dense(1025, kernel_init=init, name="big_odd")(x)  # 1025 x 1025: whole

    boxed = jax.eval_shape(Net().init, jax.random.key(0), jnp.zeros((1, 1024)))
    shardings = parallel.logical_shardings(boxed, mesh, parallel.RULES["fsdp"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = parallel.replicated_large(boxed["params"], shardings["params"], mesh,
                                          parallel.RULES["fsdp"])
    assert found == ["['big_odd']['kernel'] (1025, 1025)"]
    assert "big_odd" in str(caught[-1].message) and "(1025, 1025)" in str(caught[-1].message)


def test_swin_unetr_step_pins_its_activations_to_the_batch_shard(tpu_lock):
    """The SwinUNETR train step, traced for a data-parallel v5e:2x2 mesh, takes the TPU's
    implementations and constrains the activations at every block boundary to the batch
    axes (only lowered: no compile)."""
    from jaxbrain.training.config import load_config_file
    from jaxbrain.training.data import batch_spec
    from jaxbrain.training.loop import setup_training
    config = load_config_file(os.path.join(os.path.dirname(TOY), "..", "configs",
                                           "brats_swinunetr.py"), "demo")
    config.model.depths, config.data.roi, config.batch_size = (1, 1, 1, 1), (32, 32, 32), 4
    spec = batch_spec(config)
    setup = setup_training(config, spec, devices=aot.topology_devices("v5e:2x2"))
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=parallel.batch_sharding(
        setup.mesh, len(v.shape))) for k, v in spec.items()}
    text = setup.step_fn.lower(setup.abstract_state, batch).as_text()
    pinned = [line for line in text.splitlines() if "sharding_constraint" in line
              and '[{"data", "fsdp"}' in line]
    # patch embedding, 4 stages x (windows, block output) + mergings, 11 encoder/decoder
    # outputs: far more than the input alone; outside the mesh context, none.
    assert len(pinned) >= 20, text[:2000]
    # Traced for the TPU, not for the CPU the compile runs on: XLA's own convolutions and
    # whole-batch window attention, none of the CPU paths' loops.
    assert "stablehlo.while" not in text and "stablehlo.convolution" in text
    x = jnp.zeros((1, 32, 32, 32, 4))
    plain = jax.jit(lambda v: setup.model.apply(v, x)).lower(
        jax.eval_shape(setup.model.init, jax.random.key(0), x)).as_text()
    assert "sharding_constraint" not in plain


def test_resume_restores_without_building_a_fresh_state(tmp_path, monkeypatch):
    """A resumed run takes its state from the checkpoint alone: no initialisation runs."""
    import _toys  # noqa: F401
    from _train_run import toy_config
    from jaxbrain.training import loop
    config = toy_config(total_steps=2, ckpt_every=1, batch_size=2)
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(config, workdir, stop_after=1)

    def refused(*args, **kwargs):
        raise AssertionError("a resumed run initialised a fresh state")

    monkeypatch.setattr(loop, "init_variables", refused)
    monkeypatch.setattr(loop, "initial_variables", refused)
    loop.train_and_evaluate(config, workdir)
    assert loop.Checkpoints(workdir).latest_step() == 2


def test_batch_spec_from_the_config_equals_the_data_pipelines_batches(tmp_path):
    """The batch shapes the ahead-of-time compile uses, from the config alone, are those of
    the batches the training data gives."""
    import _toys  # noqa: F401
    from _train_run import toy_config
    from jaxbrain.training import loop
    from jaxbrain.training.data import batch_spec
    config = toy_config(batch_size=2)
    _, _, train_ds = loop.training_data(config, str(tmp_path))
    assert batch_spec(config) == loop.element_spec(train_ds)

"""Mesh construction and logical-axis placement rules; a multi-process run on localhost."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import jax
from jax.sharding import PartitionSpec as P

from jaxbrain.parallel import RULES, make_mesh, spec_for

sys.path.insert(0, os.path.dirname(__file__))
import _toys  # noqa: E402,F401  (registers toy_conv)
from _train_run import losses, sharded_config  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(__file__), "_train_run.py")


class FakeMesh:
    """Only the shape matters to spec_for; lets the rules be tested with any device count."""

    def __init__(self, **shape):
        self.shape = shape


def test_make_mesh_fills_minus_one_and_names_bad_sizes():
    mesh = make_mesh({"data": -1, "fsdp": 1})
    assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1}
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        make_mesh({"data": -1, "fsdp": -1})
    with pytest.raises(ValueError, match="needs 3 devices"):
        make_mesh({"data": 3}, devices=jax.devices()[:1])


def test_fsdp_rules_shard_divisible_axes_only_and_use_a_mesh_axis_once():
    mesh = FakeMesh(data=2, fsdp=4)
    rules = RULES["fsdp"]
    assert spec_for(("embed", "mlp"), (48, 192), mesh, rules) == P("fsdp", None)
    assert spec_for(("embed", "mlp"), (6, 48), mesh, rules) == P(None, "fsdp")
    assert spec_for(("conv_kernel",) * 3 + ("conv_in", "conv_out"), (3, 3, 3, 4, 6), mesh, rules) == P(None, None, None, None, None)
    assert spec_for(("rel_pos", "heads"), (2197, 24), mesh, rules) == P(None, None)
    assert spec_for(("embed", "mlp"), (48, 192), mesh, RULES["replicate"]) == P(None, None)
    assert spec_for(("embed",), (48,), FakeMesh(data=8), rules) == P(None)  # no fsdp axis in the mesh


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(workdirs: str, steps: int, num: int = 4, devices: int = 2) -> list:
    """``num`` processes of ``devices`` fake CPU devices joined through jax.distributed on a
    free localhost port, training the toy run of each of ``workdirs`` (tests/_train_run.py)."""
    port = _free_port()
    return [subprocess.Popen([sys.executable, SCRIPT, workdirs, str(devices), str(steps),
                              f"localhost:{port}", str(num), str(i)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(num)]


def _finish(procs) -> dict:
    """The first process's printed result (and its stdout) once all have ended well."""
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return dict(json.loads(outs[0][0].strip().splitlines()[-1]), stdout=outs[0][0])


def _final_state(workdir, step):
    """The saved train state, on this process's first device (it was saved over 8)."""
    import orbax.checkpoint as ocp
    here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return ocp.Checkpointer(ocp.StandardCheckpointHandler()).restore(
        os.path.join(workdir, "checkpoints", str(step), "state"),
        args=ocp.args.StandardRestore(fallback_sharding=here))


def test_four_processes_of_two_devices_train_and_resume_exactly(tmp_path):
    """The toy demo with parameters and optimizer state fully sharded (fsdp=2) over 8 fake CPU
    devices in 4 processes of 2: its losses follow the single-device run's, and a run stopped
    after 2 of 4 steps (checkpoint saved as on preemption) and resumed ends bit-identical to
    the uninterrupted one (parameters, optimizer state, step, losses)."""
    from jaxbrain.training.loop import train_and_evaluate
    steps, full, cut = 4, str(tmp_path / "full"), str(tmp_path / "cut")
    # The uninterrupted run, the stopped one and its resumption, one after another in the
    # same processes (each train_and_evaluate builds everything again and the resumption
    # restores state and data position from the checkpoint, as new processes would; one start
    # of the 4 processes keeps the test's time).
    procs = _start(f"{full},{cut}:2,{cut}", steps)
    config = sharded_config(steps)  # the single-device run, meanwhile
    config.update(sharding="replicate", mesh={"data": -1, "fsdp": 1})
    train_and_evaluate(config, str(tmp_path / "one"))
    out = _finish(procs)
    assert out["devices"] == 8
    assert f"stopped: saved step 2 to {cut}" in out["stdout"]
    assert f"resumed from {cut}" in out["stdout"]
    np.testing.assert_allclose(losses(full), losses(str(tmp_path / "one")), rtol=2e-5)
    assert losses(cut) == losses(full) and len(losses(full)) == steps
    assert sorted(os.listdir(os.path.join(cut, "checkpoints"))) == ["2", "4"]
    ref, got = _final_state(full, steps), _final_state(cut, steps)
    assert int(got["step"]) == steps
    ref_leaves, got_leaves = jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got)
    assert len(ref_leaves) == len(got_leaves) > 3
    for a, b in zip(ref_leaves, got_leaves):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

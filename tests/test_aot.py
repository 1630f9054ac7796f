"""python -m jaxbrain.aot: the train step of a config compiled for a TPU slice without a TPU
(libtpu compiles for the devices of ``get_topology_desc``), its printed figures consistent
with the program, and a config over a chip's memory reported as not fitting."""

import fcntl
import json
import os

import pytest

libtpu = pytest.importorskip("libtpu", reason="ahead-of-time TPU compilation needs libtpu "
                             "(pip install -e '.[tpu]')")

from jaxbrain import aot  # noqa: E402

# Only one process at a time may load libtpu: one xdist group, and the lock manual runs take.
pytestmark = pytest.mark.xdist_group("libtpu")
TOY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toy_config.py")
FEATURES, ROI = 64, 16


@pytest.fixture(scope="module")
def tpu_lock():
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

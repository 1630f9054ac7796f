"""bench/gpu.py, the GPU measurement script, checked on the CPU: its dry run (tiny sizes) gives
every benchmark row with numbers on both sides and no error; ``--wheels`` on an empty folder
is a no-op when everything is installed; the wheel download and the device peak table."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu.py")
sys.path.insert(0, os.path.join(ROOT, "bench"))

import gpu  # noqa: E402  (bench/gpu.py: the standard library only at import)


def _table(text: str) -> dict[str, dict[str, str]]:
    """{benchmark label: {column: cell}} of the Markdown table in ``text``."""
    lines = [l for l in text.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == len(header), line
        rows[cells[0]] = dict(zip(header, cells))
    return rows


@pytest.mark.xdist_group("gpu_bench")
def test_dry_run_reports_every_benchmark(tmp_path):
    out = tmp_path / "r.md"
    proc = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    text = out.read_text()
    assert text.strip() in proc.stdout
    assert "machine: jax device cpu" in text and "jax 0." in text and "torch " in text
    rows = _table(text)
    assert set(rows) == {label for _, _, label in gpu.ROWS}
    for key, _, label in gpu.ROWS:
        row = rows[label]
        assert row["error"] == "", row
        for side in ("jaxbrain samples/s", "PyTorch samples/s"):
            assert float(row[side]) > 0, row
        assert row["ratio"].endswith("x") and float(row["ratio"][:-1]) > 0, row
        if key in gpu.OWN_STEP:  # on the CPU: no device memory, no MFU
            for col in ("jaxbrain peak mem", "PyTorch peak mem", "jaxbrain MFU", "PyTorch MFU"):
                assert row[col] == "n/a", (col, row)
            assert float(row["TFLOP/step"]) > 0, row
    raw = json.loads((tmp_path / "r.json").read_text())
    assert {r["key"] for r in raw["records"]} == {k for k, _, _ in gpu.ROWS}


@pytest.mark.xdist_group("gpu_bench")
def test_wheels_from_an_empty_folder_is_a_no_op_when_installed(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--wheels", str(tmp_path), "--install-only"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--no-index" in proc.stderr and "monai einops grain nibabel ml-collections" in proc.stderr
    assert os.listdir(tmp_path) == []


def test_wheel_download_commands_and_peaks():
    nodeps, deps = gpu.download_commands("w", "3.11", gpu.default_platforms())
    for cmd in (nodeps, deps):
        assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
        assert "--only-binary=:all:" in cmd and cmd[cmd.index("--python-version") + 1] == "3.11"
        assert "manylinux_2_28_x86_64" in cmd and "manylinux2014_x86_64" in cmd
    assert "--no-deps" in nodeps and nodeps[-1] == "monai"
    assert "--no-deps" not in deps and deps[-4:] == ["einops", "grain", "nibabel", "ml-collections"]
    assert gpu.install_requirements()[:5] == gpu.WHEEL_PACKAGES
    assert gpu.peak_flops("NVIDIA H100 80GB HBM3") == gpu.peak_flops("NVIDIA H200") == 989e12
    assert gpu.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu.peak_flops("NVIDIA H100 PCIe") is None and gpu.peak_flops("cpu") is None

"""Test session setup: a persistent XLA compilation cache shared by the test processes (and
the training subprocesses they start), so identical programs compile once per session."""

import os

_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The test programs are tiny: compiling them costs far more than running them, and XLA's
# backend optimisation is most of the compile time (a third of the suite's CPU time).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

# With libtpu installed (the tpu extra, for tests/test_aot.py) on a machine without TPU chips,
# JAX would try the TPU first in every test process; the suite runs on the CPU (TPU topologies
# for ahead-of-time compilation are still described by libtpu).
import glob  # noqa: E402
import importlib.util  # noqa: E402

if importlib.util.find_spec("libtpu") and not glob.glob("/dev/accel*") and not glob.glob("/dev/vfio/[0-9]*"):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The PyTorch references the benchmarks use (bench/torch_ssl.py) are shared with the tests.
import sys  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

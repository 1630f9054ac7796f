"""Mesh construction and logical-axis placement rules."""

from __future__ import annotations

import pytest
import jax
from jax.sharding import PartitionSpec as P

from jaxbrain.parallel import RULES, make_mesh, spec_for


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

import jax
import numpy as np
import pytest

from mfm_jax.engine import mesh as mesh_lib


def test_mesh_shape_resolves_rest():
  assert mesh_lib.mesh_shape({"data": -1, "tensor": 2}, 8) == (4, 1, 1, 2)
  assert mesh_lib.mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 1, 2)


@pytest.mark.parametrize("axes,msg", [
    ({"data": -1, "fsdp": -1}, "only one axis"),
    ({"data": 3}, "needs 3 devices"),
    ({"model": 2}, "unknown mesh axis"),
    ({"data": -1, "tensor": 3}, "not divisible"),
    ({"data": 0}, "positive"),
])
def test_mesh_shape_errors(axes, msg):
  with pytest.raises(ValueError, match=msg):
    mesh_lib.mesh_shape(axes, 8)


def test_make_mesh_axes_are_auto():
  mesh = mesh_lib.make_mesh({"data": 4, "tensor": 2})
  assert mesh.axis_names == mesh_lib.MESH_AXES
  assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "context": 1, "tensor": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_rules_reject_unknown_mesh_axis():
  with pytest.raises(ValueError, match="'model'"):
    mesh_lib.rules_from_config([["embed", "model"]])


def test_global_batch_is_sharded_over_data_axes():
  mesh = mesh_lib.make_mesh({"data": 4, "fsdp": 2})
  local = {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}
  out = mesh_lib.global_batch(local, mesh, mesh_lib.DEFAULT_RULES)
  assert out["x"].shape == (16, 3)
  np.testing.assert_array_equal(np.asarray(out["x"]), local["x"])
  assert out["x"].sharding.spec[0] == ("data", "fsdp")
  assert len(out["x"].addressable_shards) == 8
  assert out["x"].addressable_shards[0].data.shape == (2, 3)


def test_global_batch_rejects_scalars():
  mesh = mesh_lib.make_mesh({"data": -1})
  with pytest.raises(ValueError, match="'n'"):
    mesh_lib.global_batch({"n": np.float32(1)}, mesh, mesh_lib.DEFAULT_RULES)

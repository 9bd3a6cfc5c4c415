"""render/cameras.py: the OpenCV convention, the same as the world's cameras."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mfm_jax.data.world import camera as world_camera
from mfm_jax.render import cameras


def _points(n=50, seed=0):
  return np.random.default_rng(seed).uniform(-2.0, 2.0, size=(n, 3))


def test_projection_matches_world_camera():
  eye, target = (3.0, -6.0, 4.0), (0.2, 0.1, 0.5)
  wc = world_camera.Camera.from_fov(55.0, 64, 48, world_camera.look_at(eye, target))
  ours = cameras.from_fov(55.0, 64, 48, cameras.look_at(jnp.asarray(eye), jnp.asarray(target)))
  np.testing.assert_allclose(np.asarray(ours.world_to_camera), wc.world_to_camera, atol=1e-6)
  for k in ("fx", "fy", "cx", "cy"):
    np.testing.assert_allclose(float(getattr(ours, k)), getattr(wc, k), rtol=1e-6)
  pts = _points()
  uv, z = cameras.project(jnp.asarray(pts, jnp.float32), ours)
  np.testing.assert_allclose(np.asarray(uv), wc.project(pts), rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(np.asarray(z), wc.depth(pts), rtol=1e-5, atol=1e-5)
  # from_world gives the same camera.
  conv = cameras.from_world(wc)
  uv2, _ = cameras.project(jnp.asarray(pts, jnp.float32), conv)
  np.testing.assert_allclose(np.asarray(uv2), wc.project(pts), rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(np.asarray(conv.position), wc.position, atol=1e-5)
  np.testing.assert_allclose(np.asarray(conv.intrinsics), wc.intrinsics, atol=1e-5)


def test_world_orbit_cameras_match_rotate_about_z():
  spec = type("Spec", (), dict(camera_eye=(0.0, -7.0, 5.0), camera_target=(0.0, 0.0, 0.3),
                               fov_deg=50.0, width=32, height=32))()
  views = world_camera.orbit_cameras(spec, 4)
  w2c0 = jnp.asarray(views[0].world_to_camera, jnp.float32)
  ours = cameras.rotate_about_z(w2c0, jnp.asarray(spec.camera_target), jnp.arange(4) * 90.0)
  for k in range(4):
    np.testing.assert_allclose(np.asarray(ours[k]), views[k].world_to_camera, atol=1e-5)


def test_convention_axes():
  # A camera at the origin looking along +y (world z up): image right = world +x,
  # image down = world -z, and the target projects to the principal point.
  w2c = cameras.look_at(jnp.zeros(3), jnp.asarray([0.0, 5.0, 0.0]))
  cam = cameras.from_fov(60.0, 20, 10, w2c)
  uv, z = cameras.project(jnp.asarray([[0.0, 5.0, 0.0], [1.0, 5.0, 0.0], [0.0, 5.0, 1.0]]), cam)
  np.testing.assert_allclose(np.asarray(uv[0]), [9.5, 4.5], atol=1e-5)
  assert uv[1, 0] > 9.5 and abs(float(uv[1, 1]) - 4.5) < 1e-5  # right
  assert uv[2, 1] < 4.5  # world up is image up (v decreases)
  np.testing.assert_allclose(np.asarray(z), 5.0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(cam.position), 0.0, atol=1e-6)


def test_orbit_is_batched_and_looks_at_target():
  target = jnp.asarray([0.5, -0.2, 0.3])
  w2c = cameras.orbit(target, 4.0, jnp.linspace(0.0, 360.0, 6, endpoint=False), 30.0)
  assert w2c.shape == (6, 4, 4)
  cam = jax.vmap(lambda m: cameras.from_fov(45.0, 16, 16, m))(w2c)

  def centre(c):
    return cameras.project(target[None], c)

  uv, z = jax.vmap(centre)(cam)
  np.testing.assert_allclose(np.asarray(uv[:, 0]), 7.5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(z[:, 0]), 4.0, atol=1e-5)
  pos = jax.vmap(lambda c: c.position)(cam)
  np.testing.assert_allclose(np.asarray(pos[:, 2] - target[2]), 4.0 * np.sin(np.pi / 6), atol=1e-5)
  # Rotations are orthonormal.
  rot = np.asarray(w2c[:, :3, :3])
  np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape),
                             atol=1e-5)


def test_look_at_parallel_up_raises():
  with pytest.raises(ValueError, match="parallel"):
    cameras.look_at(jnp.zeros(3), jnp.asarray([0.0, 0.0, 3.0]))

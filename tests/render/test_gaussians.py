"""render/gaussians.py against a slow NumPy renderer, an analytic footprint, masks, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gs_reference
from gs_reference import H, W, make_scene
from mfm_jax.render import gaussians


def _render(scene, cam, **kw):
  return gaussians.render(scene["means"], scene["scales"], scene["quats"], scene["opacities"],
                          scene["colors"], cam, width=kw.pop("width", W),
                          height=kw.pop("height", H), features=scene.get("features"), **kw)


def _assert_close(out, ref, atol=1e-5):
  for k in ref:
    scale = max(1.0, float(np.abs(ref[k]).max()))
    np.testing.assert_allclose(np.asarray(out[k]), ref[k], atol=atol * scale, err_msg=k)


@pytest.mark.parametrize("kw", [
    dict(),  # 16-pixel tiles: the 24-row image is padded
    dict(tile_size=8, max_per_tile=20, subtile_size=2, max_per_subtile=20, tile_batch=3,
         antialiased=True),
    dict(tile_size=8, subtile_size=8, max_per_subtile=20, tile_batch=None),
])
def test_matches_numpy_reference(kw):
  scene, cam = make_scene()
  bg = (0.2, 0.3, 0.4)
  out = _render(scene, cam, background=bg, **kw)
  ref = gs_reference.render(**scene, camera=cam, width=W, height=H, background=bg,
                            antialiased=kw.get("antialiased", False))
  assert float(ref["alpha"].max()) > 0.999  # the scene exercises early termination
  assert 0.05 < float((ref["alpha"] > 0).mean()) < 1.0
  _assert_close(out, ref)
  assert out["features"].shape == (H, W, 5)


def test_isotropic_gaussian_is_analytic_footprint():
  # Camera at the origin looking down +z; one isotropic Gaussian on the axis.
  f, z, sigma, o = 40.0, 5.0, 0.25, 0.8
  cam = gaussians.Camera(fx=f, fy=f, cx=16.0, cy=10.0, world_to_camera=jnp.eye(4))
  args = (jnp.asarray([[0.0, 0.0, z]]), jnp.full((1, 3), sigma), jnp.asarray([[1.0, 0, 0, 0]]),
          jnp.asarray([o]), jnp.asarray([[0.5, 1.0, 0.25]]))
  v, u = np.mgrid[0:21, 0:33]
  r2 = (u - 16.0) ** 2 + (v - 10.0) ** 2
  var = (f * sigma / z) ** 2 + gaussians.DILATION
  for antialiased, peak in ((False, o), (True, o * (var - 0.3) / var)):
    out = gaussians.render(*args, cam, width=33, height=21, antialiased=antialiased)
    want = peak * np.exp(-0.5 * r2 / var)
    want = np.where(want >= 1 / 255, want, 0.0)
    np.testing.assert_allclose(np.asarray(out["alpha"]), want, atol=2e-6)
    np.testing.assert_allclose(np.asarray(out["rgb"]), want[..., None] * [0.5, 1.0, 0.25],
                               atol=2e-6)
    np.testing.assert_allclose(np.asarray(out["depth"]), want * z, atol=1e-5)


def test_alive_mask_hides_dead_gaussians():
  scene, cam = make_scene(n=24, seed=1)
  alive = np.ones(24, bool)
  alive[[0, 5, 7, 11, 12, 20]] = False
  render = jax.jit(lambda s, a: _render(s, cam, alive=a))
  masked = render(scene, alive)
  subset = _render({k: v[alive] for k, v in scene.items()}, cam)
  _assert_close(masked, {k: np.asarray(v) for k, v in subset.items()}, atol=1e-6)
  # Dead slots may hold garbage (even NaN-free junk far away) without effect.
  junk = dict(scene, means=np.where(alive[:, None], scene["means"], 1e3).astype(np.float32))
  _assert_close(render(junk, alive), {k: np.asarray(v) for k, v in subset.items()}, atol=1e-6)
  empty = render(scene, np.zeros(24, bool))
  assert float(jnp.abs(empty["alpha"]).max()) == 0.0
  assert float(jnp.abs(empty["rgb"]).max()) == 0.0


def test_tile_overflow_is_reported_and_drops_the_farthest():
  scene, cam = make_scene()
  kw = dict(width=W, height=H, tile_size=8, max_per_tile=6, subtile_size=4, max_per_subtile=2)
  stats = gaussians.tile_overflow(scene["means"], scene["scales"], scene["quats"],
                                  scene["opacities"], cam, **kw)
  assert int(stats["overflow_tiles"]) > 0 and int(stats["max_tile_count"]) > 6
  assert int(stats["overflow_subtiles"]) > 0 and int(stats["max_subtile_count"]) > 2
  assert stats["subtile_counts"].shape == (12, 4)
  ref = gs_reference.render(**scene, camera=cam, width=W, height=H)
  cut = _render(scene, cam, **{k: v for k, v in kw.items() if k not in ("width", "height")})
  assert float(np.abs(np.asarray(cut["rgb"]) - ref["rgb"]).max()) > 1e-2
  # Where neither the tile nor the sub-tile overflows, nothing was dropped.
  one = np.repeat(np.repeat(np.asarray(stats["subtile_counts"]).reshape(3, 4, 2, 2)
                            .transpose(0, 2, 1, 3).reshape(6, 8), 4, 0), 4, 1) <= 2
  tile_ok = np.repeat(np.repeat(np.asarray(stats["tile_counts"]).reshape(3, 4) <= 6, 8, 0), 8, 1)
  same = one & tile_ok
  assert same.any() and (~same).any()
  np.testing.assert_allclose(np.asarray(cut["rgb"])[same], ref["rgb"][same], atol=1e-5)


def test_bad_shapes_name_the_argument():
  scene, cam = make_scene(n=8)
  base = dict(means=scene["means"], scales=scene["scales"], quats=scene["quats"],
              opacities=scene["opacities"], colors=scene["colors"])
  bad = {"means": np.zeros((8, 2)), "scales": np.ones((5, 3)), "quats": np.ones((8, 3)),
         "opacities": np.ones((8, 1)), "colors": np.ones((8, 4))}
  for name, value in bad.items():
    with pytest.raises(ValueError, match=name):
      gaussians.render(**dict(base, **{name: value}), camera=cam, width=W, height=H)
  with pytest.raises(ValueError, match="features"):
    gaussians.render(**base, camera=cam, width=W, height=H, features=np.ones((7, 2)))
  with pytest.raises(ValueError, match="alive"):
    gaussians.render(**base, camera=cam, width=W, height=H, alive=np.ones(9, bool))
  with pytest.raises(ValueError, match="world_to_camera"):
    gaussians.render(**base, camera=cam._replace(world_to_camera=jnp.eye(3)), width=W, height=H)
  with pytest.raises(ValueError, match="width"):
    gaussians.render(**base, camera=cam, width=0, height=H)
  with pytest.raises(TypeError, match="camera"):
    gaussians.render(**base, camera=np.eye(4), width=W, height=H)


def test_bad_values_name_the_item():
  scene, cam = make_scene(n=8)
  base = dict(means=scene["means"], scales=scene["scales"], quats=scene["quats"],
              opacities=scene["opacities"], colors=scene["colors"])
  cases = [("scales", dict(scales=base["scales"] * (np.arange(8) != 2)[:, None])),
           ("quats", dict(quats=np.zeros((8, 4), np.float32))),
           ("opacities", dict(opacities=base["opacities"] + 1.0))]
  for name, change in cases:
    with pytest.raises(ValueError, match=name):
      gaussians.render(**dict(base, **change), camera=cam, width=W, height=H)
  w2c = np.asarray(cam.world_to_camera).copy()
  w2c[0, 3] = np.nan
  with pytest.raises(ValueError, match="camera.world_to_camera"):
    gaussians.render(**base, camera=cam._replace(world_to_camera=w2c), width=W, height=H)

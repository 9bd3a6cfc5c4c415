"""render/gaussians.py: gradients against finite differences; sharded over Gaussians."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mfm_jax.engine import mesh as mesh_lib
from mfm_jax.render import gaussians, raster
from gs_reference import make_scene

INPUTS = ("means", "scales", "quats", "opacities", "colors", "features")


def test_gradients_match_finite_differences():
  w, h = 16, 12
  with jax.enable_x64(True):
    scene32, cam32 = make_scene(n=10, seed=3, num_features=2)
    scene = {k: jnp.asarray(v, jnp.float64) for k, v in scene32.items()}
    scene["opacities"] = jnp.clip(scene["opacities"], 0.0, 0.95)  # away from the 0.99 clamp
    cam = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), cam32)
    cam = cam._replace(fx=cam.fx * 0.5, fy=cam.fy * 0.5, cx=(w - 1) / 2, cy=(h - 1) / 2)
    rng = np.random.default_rng(0)
    weights = {k: jnp.asarray(rng.normal(size=s)) for k, s in
               (("rgb", (h, w, 3)), ("depth", (h, w)), ("alpha", (h, w)), ("features", (h, w, 2)))}

    @jax.jit
    def loss(params):
      out = gaussians.render(params["means"], params["scales"], params["quats"],
                             params["opacities"], params["colors"], cam, width=w, height=h,
                             background=(0.1, 0.2, 0.3), features=params["features"],
                             tile_size=8, max_per_tile=10)
      return sum(jnp.sum(out[k] * weights[k]) for k in weights)

    grads = jax.jit(jax.grad(loss))(scene)
    eps = 1e-6
    for name in INPUTS:
      v = jnp.asarray(rng.normal(size=scene[name].shape))
      plus = loss(dict(scene, **{name: scene[name] + eps * v}))
      minus = loss(dict(scene, **{name: scene[name] - eps * v}))
      fd = float(plus - minus) / (2 * eps)
      ad = float(jnp.vdot(grads[name], v))
      assert abs(ad) > 1e-3, name  # the input matters
      np.testing.assert_allclose(ad, fd, rtol=1e-5, atol=1e-7, err_msg=name)
      assert bool(jnp.all(jnp.isfinite(grads[name]))), name


def test_sharded_over_gaussians_equals_unsharded():
  scene, cam = make_scene(n=32, seed=2)
  scene["scales"][5:7] *= np.asarray([1.0, 0.6, 0.8], np.float32)  # no isotropic ones: their
  # quaternion gradient is 0 up to float32 cancellation noise
  mesh = mesh_lib.make_mesh({"data": -1})
  assert mesh.shape["data"] == 8

  def f(params):
    out = gaussians.render(params["means"], params["scales"], params["quats"],
                           params["opacities"], params["colors"], cam, width=32, height=24,
                           features=params["features"], tile_size=8, max_per_tile=32,
                           tile_batch=None)
    return out, jnp.sum(out["rgb"] * jnp.arange(3.0)) + jnp.sum(out["features"])

  def value_and_grad(params):
    out, _ = f(params)
    return out, jax.grad(lambda p: f(p)[1])(params)

  fn = jax.jit(value_and_grad)
  ref_out, ref_grad = fn({k: jnp.asarray(v) for k, v in scene.items()})
  sharded = {k: jax.device_put(v, NamedSharding(mesh, P("data", *([None] * (v.ndim - 1)))))
             for k, v in scene.items()}
  assert len(sharded["means"].sharding.device_set) == 8
  out, grad = fn(sharded)
  for k in ref_out:
    np.testing.assert_allclose(np.asarray(out[k]), np.asarray(ref_out[k]), atol=1e-6, err_msg=k)
  for k in ref_grad:  # float32 sums in another order: relative to the largest entry
    scale = float(jnp.abs(ref_grad[k]).max())
    np.testing.assert_allclose(np.asarray(grad[k]), np.asarray(ref_grad[k]), atol=1e-5 * scale,
                               err_msg=k)


def test_hand_written_tile_vjp_matches_autodiff():
  with jax.enable_x64(True):
    rng = np.random.default_rng(5)
    p, k = 64, 40
    pix = jnp.asarray(np.stack(np.meshgrid(np.arange(8.0), np.arange(8.0)), -1).reshape(p, 2))
    mean2d = jnp.asarray(rng.uniform(0, 8, (k, 2)))
    sx, sy, rho = rng.uniform(1.0, 3.0, k), rng.uniform(1.0, 3.0, k), rng.uniform(-0.5, 0.5, k)
    cov = np.stack([sx**2, rho * sx * sy, sy**2], -1)
    det = cov[:, 0] * cov[:, 2] - cov[:, 1] ** 2
    conic = jnp.asarray(np.stack([cov[:, 2], -cov[:, 1], cov[:, 0]], -1) / det[:, None])
    opacity = jnp.asarray(rng.uniform(0.05, 1.0, k))  # some clamped at 0.99
    ok = jnp.asarray(rng.uniform(size=k) > 0.1)
    values = jnp.asarray(rng.normal(size=(k, 5)))
    g_out, g_t = jnp.asarray(rng.normal(size=(p, 5))), jnp.asarray(rng.normal(size=p))

    def loss(fn, m, c, o, v):
      out, t = fn(pix, m, c, o, ok, v)[:2]
      return jnp.sum(out * g_out) + jnp.sum(t * g_t)

    args = (mean2d, conic, opacity, values)
    grad = jax.jit(jax.grad(loss, argnums=(1, 2, 3, 4)), static_argnums=0)
    mine, auto = grad(raster.composite, *args), grad(raster.tile_forward, *args)
    out, t = jax.jit(raster.composite)(pix, *args[:3], ok, values)
    assert float(t.min()) < 1e-3  # compositing stops early somewhere
    for name, x, y in zip(("mean2d", "conic", "opacity", "values"), mine, auto):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-9, atol=1e-9,
                                 err_msg=name)

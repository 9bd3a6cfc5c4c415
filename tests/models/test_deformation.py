"""HexPlane field and motion scaffold (DQB / LBS) of models/deformation.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mfm_jax.models import deformation as D


def np_bilinear(plane, uv):
  """Align-corners bilinear lookup with border clamping, one point at a time."""
  c, h, w = plane.shape
  out = np.zeros((len(uv), c))
  for n, (u, v) in enumerate(np.clip(uv, -1, 1)):
    x, y = (u + 1) / 2 * (w - 1), (v + 1) / 2 * (h - 1)
    x0, y0 = min(int(np.floor(x)), w - 2), min(int(np.floor(y)), h - 2)
    fx, fy = x - x0, y - y0
    out[n] = ((1 - fx) * (1 - fy) * plane[:, y0, x0] + fx * (1 - fy) * plane[:, y0, x0 + 1]
              + (1 - fx) * fy * plane[:, y0 + 1, x0] + fx * fy * plane[:, y0 + 1, x0 + 1])
  return out


def test_bilinear_sample_matches_numpy():
  rng = np.random.default_rng(0)
  plane = rng.standard_normal((3, 5, 7)).astype(np.float32)
  uv = rng.uniform(-1.2, 1.2, (50, 2)).astype(np.float32)
  uv[:4] = [[-1, -1], [1, 1], [-1, 1], [0.0, 0.0]]  # corners and centre
  got = np.asarray(D.bilinear_sample(jnp.asarray(plane), jnp.asarray(uv)))
  np.testing.assert_allclose(got, np_bilinear(plane, uv), atol=1e-5)
  # Texel centres hit exactly: u = -1 + 2 j / (W - 1).
  j, i = 4, 2
  got = D.bilinear_sample(jnp.asarray(plane), jnp.asarray([[-1 + 2 * j / 6, -1 + 2 * i / 4]]))
  np.testing.assert_allclose(np.asarray(got)[0], plane[:, i, j], atol=1e-6)


@pytest.mark.parametrize("combine", ["product", "sum"])
def test_hexplane_planes_and_identity_at_init(combine):
  field = D.HexPlaneField(bounds=((-2, -2, 0), (2, 2, 1)), resolutions=(4, 8), time_resolution=3,
                          features=2, hidden=8, combine=combine)
  means = jax.random.uniform(jax.random.key(0), (20, 3), minval=-1.0, maxval=1.0)
  params = field.init(jax.random.key(1), means, 0.3)["params"]
  assert params["plane_8_xt"].shape == (2, 3, 8) and params["plane_4_yz"].shape == (2, 4, 4)
  # Encoding: combine the six planes of each level, concatenate levels (checked with NumPy).
  feats = np.asarray(field.apply({"params": params}, means, 0.3, method=field.encode))
  lo, hi = np.array([-2, -2, 0.0]), np.array([2, 2, 1.0])
  coords = np.concatenate([2 * (np.asarray(means) - lo) / (hi - lo) - 1,
                           np.full((20, 1), 2 * 0.3 - 1)], 1)
  want = []
  for r in (4, 8):
    parts = [np_bilinear(np.asarray(params[f"plane_{r}_{'xyzt'[a]}{'xyzt'[b]}"]), coords[:, (a, b)])
             for a, b in D.PLANES]
    want.append(np.prod(parts, 0) if combine == "product" else np.sum(parts, 0))
  np.testing.assert_allclose(feats, np.concatenate(want, 1), rtol=1e-5, atol=1e-6)
  # Zero-init heads: the identity at every time, and the Gaussians do not move.
  for t in (0.0, 0.5, 1.0):
    d = field.apply({"params": params}, means, t)
    np.testing.assert_array_equal(np.asarray(d["d_xyz"]), 0)
    np.testing.assert_array_equal(np.asarray(d["d_scale"]), 0)
    np.testing.assert_array_equal(np.asarray(d["d_rot"]), np.tile([1.0, 0, 0, 0], (20, 1)))
  quats = jax.random.normal(jax.random.key(2), (20, 4))
  m, q, s = D.apply_deltas(means, quats, jnp.ones((20, 3)), d)
  np.testing.assert_allclose(np.asarray(m), np.asarray(means))
  np.testing.assert_allclose(np.asarray(q), np.asarray(D.quat_normalize(quats)), atol=1e-6)
  # Time matters once the heads and the space-time planes (1 at init) are trained (perturbed).
  p2 = jax.tree.map(lambda x: x, params)
  p2["head_xyz"]["kernel"] = jnp.ones_like(p2["head_xyz"]["kernel"])
  p2["plane_4_xt"] = jax.random.uniform(jax.random.key(3), p2["plane_4_xt"].shape)
  d0, d1 = (field.apply({"params": p2}, means, t)["d_xyz"] for t in (0.0, 1.0))
  assert float(jnp.max(jnp.abs(d0 - d1))) > 0


def rigid(q, tau, p):
  return np.asarray(D.quat_rotate(jnp.asarray(q), jnp.asarray(p))) + tau


def test_dqb_of_one_node_is_its_rigid_motion():
  rng = np.random.default_rng(0)
  pts = rng.standard_normal((30, 3)).astype(np.float32)
  q = np.asarray(D.quat_from_axis_angle(jnp.asarray([0.3, -1.0, 0.5]), 2.0))
  tau = np.array([0.4, -1.2, 2.0], np.float32)
  qs = np.broadcast_to(q, (30, 1, 4))
  taus = np.broadcast_to(tau, (30, 1, 3))
  for mode in ("dqb", "lbs"):
    moved, rot = D.blend(jnp.asarray(pts), jnp.ones((30, 1)), jnp.asarray(qs), jnp.asarray(taus),
                         mode)
    np.testing.assert_allclose(np.asarray(moved), rigid(q, tau, pts), atol=1e-5)
    np.testing.assert_allclose(np.abs(np.asarray(rot) @ q), 1.0, atol=1e-6)
  # The same through the scaffold module: one node rotating about its centre c and moving by u.
  sc = D.MotionScaffold(num_nodes=1, num_frames=2, num_neighbors=1)
  params = sc.init(jax.random.key(0), jnp.asarray(pts), 0.0)["params"]
  c, u = np.array([1.0, 2.0, -1.0], np.float32), np.array([0.5, 0.0, 0.2], np.float32)
  s = sc.param_scale   # stored: (q - identity) / s and u / s
  params = dict(params, nodes=jnp.asarray(c[None]),
                rotations=jnp.asarray(np.stack([np.zeros((1, 4)), [q - [1.0, 0, 0, 0]]]) / s),
                translations=jnp.asarray(np.stack([np.zeros((1, 3)), u[None]]) / s))
  d0 = sc.apply({"params": params}, jnp.asarray(pts), 0.0)
  np.testing.assert_allclose(np.asarray(d0["d_xyz"]), 0, atol=1e-6)  # identity key frame
  d1 = sc.apply({"params": params}, jnp.asarray(pts), 1.0)
  want = rigid(q, 0, pts - c) + c + u
  np.testing.assert_allclose(np.asarray(pts + d1["d_xyz"]), want, atol=1e-5)


def test_dqb_and_lbs_agree_for_small_rotations():
  rng = np.random.default_rng(1)
  n, j = 40, 3
  pts = rng.standard_normal((n, 3)).astype(np.float32)
  axes = rng.standard_normal((n, j, 3))
  q = D.quat_from_axis_angle(jnp.asarray(axes), jnp.asarray(rng.uniform(-0.01, 0.01, (n, j))))
  tau = jnp.asarray(0.05 * rng.standard_normal((n, j, 3)), jnp.float32)
  w = jax.nn.softmax(jnp.asarray(rng.standard_normal((n, j))), -1)
  a, _ = D.blend(jnp.asarray(pts), w, q, tau, "dqb")
  b, _ = D.blend(jnp.asarray(pts), w, q, tau, "lbs")
  assert float(jnp.max(jnp.abs(a - b))) < 1e-3   # the difference is second order in the angles


def test_dqb_preserves_distances_under_a_twist():
  """Two nodes twisted by +-80 degrees about x: LBS collapses the middle ring, DQB keeps it."""
  angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
  ring = np.stack([np.zeros(16), np.cos(angles), np.sin(angles)], -1).astype(np.float32)
  theta = np.deg2rad(80.0)
  q = D.quat_from_axis_angle(jnp.asarray([[1.0, 0, 0]] * 2), jnp.asarray([theta, -theta]))
  qs = jnp.broadcast_to(q, (16, 2, 4))
  tau = jnp.zeros((16, 2, 3))
  w = jnp.full((16, 2), 0.5)

  def dist_error(mode):
    moved = np.asarray(D.blend(jnp.asarray(ring), w, qs, tau, mode)[0])
    d0 = np.linalg.norm(ring[:, None] - ring[None], axis=-1)
    d1 = np.linalg.norm(moved[:, None] - moved[None], axis=-1)
    return np.abs(d1 - d0).max(), np.linalg.norm(moved[:, 1:], axis=-1)

  err_dqb, r_dqb = dist_error("dqb")
  err_lbs, r_lbs = dist_error("lbs")
  np.testing.assert_allclose(r_dqb, 1.0, atol=1e-5)            # rigid: the ring keeps its radius
  np.testing.assert_allclose(r_lbs, np.cos(theta), atol=1e-5)  # candy wrapper: radius cos(theta)
  assert err_dqb < 1e-5 < 0.5 < err_lbs


def test_scaffold_identity_at_init_and_kinds():
  pts = jax.random.normal(jax.random.key(0), (25, 3))
  sc = D.make_deformation("scaffold", num_nodes=8, num_frames=4, num_neighbors=3)
  params = sc.init(jax.random.key(1), pts, 0.0)["params"]
  d = sc.apply({"params": params}, pts, 0.7)
  np.testing.assert_allclose(np.asarray(d["d_xyz"]), 0, atol=1e-5)
  np.testing.assert_allclose(np.abs(np.asarray(d["d_rot"])[:, 0]), 1, atol=1e-6)
  assert float(D.smoothness(params)) == 0.0
  w, idx = D.skinning_weights(pts, params["nodes"], jnp.exp(params["log_sigma"]), 3)
  np.testing.assert_allclose(np.asarray(w.sum(-1)), 1, atol=1e-6)
  dn = np.linalg.norm(np.asarray(pts)[:, None] - np.asarray(params["nodes"])[None], axis=-1)
  np.testing.assert_array_equal(np.sort(np.asarray(idx), 1), np.sort(np.argsort(dn, 1)[:, :3], 1))
  none = D.make_deformation("none")
  d = none.apply(none.init(jax.random.key(0), pts, 0.0), pts, 0.5)
  assert d["d_rot"].shape == (25, 4)
  with pytest.raises(ValueError, match="deformation kind"):
    D.make_deformation("spline")

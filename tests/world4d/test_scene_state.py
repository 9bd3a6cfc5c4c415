"""Fixed-capacity Gaussian state: init, densify / prune in place (world4d/scene.py)."""
import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.world4d import scene

LR = dict(means=2.0, log_scales=5.0, quats=1.0, opacity_logits=50.0, colors=10.0, features=10.0)


def make(n=32, m=20, seed=0):
  rng = np.random.default_rng(seed)
  pts = rng.uniform(-1, 1, (m, 3)).astype(np.float32)
  g, stats = scene.init_gaussians(pts, rng.uniform(0, 1, (m, 3)), np.full(m, 0.05), n, 4, LR)
  return pts, g, stats


def test_init_and_activation():
  pts, g, stats = make()
  assert all(v.shape[0] == 32 for v in g.values()) and g["features"].shape == (32, 4)
  np.testing.assert_array_equal(np.asarray(stats["alive"]), np.arange(32) < 20)
  a = scene.activate(g, LR)
  np.testing.assert_allclose(np.asarray(a["means"][:20]), pts, atol=1e-6)
  np.testing.assert_allclose(np.exp(np.asarray(a["log_scales"][:20])), 0.05, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(a["opacities"][:20]), 0.5, atol=1e-6)


def test_densify_and_prune_keeps_shapes_and_only_fills_dead_slots():
  _, g, stats = make()
  n = 32
  grads = np.zeros((n, 3), np.float32)
  grads[[1, 4, 7, 9]] = [[1e-2, 0, 0], [0, 2e-2, 0], [0, 0, 3e-2], [4e-2, 0, 0]]
  grads[25] = 1.0                                     # a dead slot's gradient is ignored
  stats = scene.accumulate(stats, jnp.asarray(grads))
  assert float(stats["grad_count"][25]) == 0 and float(stats["grad_count"][9]) == 1
  # Make Gaussian 9 big (split) and 2 transparent (pruned); the others are small (clone).
  u = scene.unconstrained(g, LR)
  u["log_scales"] = u["log_scales"].at[9].set(jnp.log(0.5))
  u["opacity_logits"] = u["opacity_logits"].at[2].set(-8.0)
  g = scene.stored(u, LR)
  before = jax.tree.map(np.asarray, (g, stats))
  g2, s2, copy_from = jax.jit(lambda g, s, r: scene.densify_and_prune(
      g, s, r, lr_scale=LR, extent=2.0, grad_threshold=5e-3, percent_dense=0.05))(
          g, stats, jax.random.key(0))
  assert jax.tree.map(jnp.shape, g2) == jax.tree.map(jnp.shape, g)
  assert jax.tree.map(jnp.shape, s2) == jax.tree.map(jnp.shape, stats)
  alive0 = before[1]["alive"] > 0.5
  changed = np.zeros(n, bool)
  for k in scene.KEYS:
    diff = np.asarray(g2[k]) != before[0][k]
    changed |= diff.reshape(n, -1).any(1)
  dead0 = np.flatnonzero(~alive0)
  filled = sorted(set(np.flatnonzero(changed)) - {9})  # 9 (split parent) changes in place
  assert set(filled) <= set(dead0) and len(filled) == 4   # four candidates, four dead slots
  copy_from = np.asarray(copy_from)
  assert sorted(copy_from[filled]) == [1, 4, 7, 9]
  np.testing.assert_array_equal(np.delete(copy_from, filled), np.delete(np.arange(n), filled))
  u2 = scene.unconstrained(g2, LR)
  for d in filled:
    src = copy_from[d]
    if src == 9:   # split: both halves shrink by 1.6 and move off the parent's centre
      for row in (d, 9):
        np.testing.assert_allclose(np.asarray(u2["log_scales"][row]),
                                   np.log(0.5) - np.log(1.6), rtol=1e-5)
    else:          # clone: an exact copy
      for k in scene.KEYS:
        np.testing.assert_array_equal(np.asarray(g2[k][d]), before[0][k][src])
  alive2 = np.asarray(s2["alive"]) > 0.5
  assert alive2[filled].all() and not alive2[2]              # filled slots live, 2 pruned
  assert alive2.sum() == alive0.sum() + 4 - 1
  np.testing.assert_array_equal(np.asarray(s2["grad_accum"]), 0)
  # Capacity full: nothing to fill, nothing written.
  full = dict(stats, alive=jnp.ones(n))
  g3, s3, cf3 = scene.densify_and_prune(g, full, jax.random.key(0), lr_scale=LR, extent=2.0,
                                        grad_threshold=5e-3)
  for k in scene.KEYS:
    np.testing.assert_array_equal(np.asarray(g3[k]), before[0][k])
  np.testing.assert_array_equal(np.asarray(cf3), np.arange(n))
  # densify=False: prune only.
  g4, s4, _ = scene.densify_and_prune(g, stats, jax.random.key(0), lr_scale=LR, extent=2.0,
                                      grad_threshold=5e-3, densify=False)
  assert (np.asarray(s4["alive"]) > 0.5).sum() == alive0.sum() - 1


def test_backproject_and_voxel_downsample():
  w2c = np.eye(4, dtype=np.float32)
  w2c[:3, 3] = [0.0, 0.0, 2.0]                         # camera at z = -2 looking along +z
  depth = np.full((4, 5), 3.0, np.float32)
  rgb = np.random.default_rng(0).uniform(0, 1, (4, 5, 3)).astype(np.float32)
  pts, cols, foot = scene.backproject(depth, rgb, 10.0, 10.0, 2.0, 1.5, w2c)
  assert pts.shape == (20, 3)
  np.testing.assert_allclose(pts[:, 2], 1.0, atol=1e-6)   # camera z 3 -> world z 1
  np.testing.assert_allclose(pts[0, :2], [(0 - 2.0) / 10 * 3, (0 - 1.5) / 10 * 3], atol=1e-6)
  np.testing.assert_allclose(foot, 0.3, atol=1e-6)
  p2, c2 = scene.voxel_downsample(pts + 1.0, cols, 100.0)  # one voxel holds everything
  assert p2.shape == (1, 3)
  np.testing.assert_allclose(p2[0], pts.mean(0) + 1.0, atol=1e-5)
  np.testing.assert_allclose(c2[0], cols.mean(0), atol=1e-6)
  p3, _ = scene.voxel_downsample(pts, cols, 1e-3)          # tiny voxels keep every point
  assert p3.shape == pts.shape

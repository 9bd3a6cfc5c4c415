"""Attention-energy trajectory guidance (Mojito): energy, box <-> token mapping, guided sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mfm_jax.diffusion import attention_guidance as ag
from mfm_jax.diffusion import samplers
from mfm_jax.models import dit as dit_lib


def _np_energy(maps, weights):
  e = np.zeros(maps.shape[0])
  for b in range(maps.shape[0]):
    for t in range(maps.shape[1]):
      e[b] += (1.0 - (maps[b, t] * weights[b, t]).sum() / maps[b, t].sum()) ** 2
  return e


def test_energy_against_numpy_and_limits():
  rng = np.random.default_rng(0)
  maps = rng.random((3, 2, 16)).astype(np.float32)
  weights = rng.random((3, 2, 16)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(ag.attention_energy(jnp.asarray(maps),
                                                            jnp.asarray(weights))),
                             _np_energy(maps, weights), rtol=1e-5)
  box = np.zeros((1, 2, 16), np.float32)
  box[..., [5, 6]] = 1.0
  inside = np.zeros((1, 2, 16), np.float32)
  inside[..., [5, 6]] = [0.3, 0.7]
  outside = np.zeros((1, 2, 16), np.float32)
  outside[..., [0, 9]] = 0.5
  assert float(ag.attention_energy(jnp.asarray(inside), jnp.asarray(box))[0]) == pytest.approx(0.0, abs=1e-6)
  assert float(ag.attention_energy(jnp.asarray(outside), jnp.asarray(box))[0]) == pytest.approx(2.0, abs=1e-6)


def test_box_token_mapping_on_a_hand_made_grid():
  # grid (T'=2, H'=2, W'=4), temporal patch 2 -> 4 frames. Cells are 0.25 wide, 0.5 tall.
  boxes = np.array([[0.0, 0.0, 0.25, 0.5],      # frame 0: exactly cell (0, 0)
                    [0.0, 0.0, 0.5, 0.5],       # frame 1: cells (0, 0), (0, 1)
                    [0.5, 0.25, 1.0, 1.0],      # frame 2: right half, y from 0.25
                    [0.5, 0.25, 1.0, 1.0]], np.float32)
  w = ag.token_box_weights(boxes, (2, 2, 4), 2)
  assert w.shape == (2, 8)
  want0 = np.zeros((2, 4))
  want0[0, 0] = 1.0              # in both frames
  want0[0, 1] = 0.5              # in one of the two frames
  want1 = np.zeros((2, 4))
  want1[0, 2:] = 0.5             # half of the cell height (y in [0.25, 0.5])
  want1[1, 2:] = 1.0
  np.testing.assert_allclose(w[0], want0.ravel(), atol=1e-6)
  np.testing.assert_allclose(w[1], want1.ravel(), atol=1e-6)
  np.testing.assert_allclose(np.asarray(ag.token_box_weights(jnp.asarray(boxes), (2, 2, 4), 2)),
                             w, atol=1e-6)
  with pytest.raises(ValueError, match="T=6"):
    ag.token_box_weights(boxes, (3, 2, 4), 2)


def test_centers_to_boxes_clips():
  b = ag.centers_to_boxes(np.array([[0.5, 0.5], [0.05, 0.9]]), 0.2)
  np.testing.assert_allclose(b, [[0.4, 0.4, 0.6, 0.6], [0.0, 0.8, 0.15, 1.0]], atol=1e-6)


def _tiny():
  model = dit_lib.VideoDiT(out_channels=3, width=32, depth=2, num_heads=2, patch_size=(2, 4, 4))
  x = jax.random.normal(jax.random.key(0), (2, 4, 16, 16, 3))
  text = jax.random.normal(jax.random.key(1), (2, 5, 16))
  params = model.init(jax.random.key(2), x, jnp.zeros((2,)), text)["params"]
  # Random (non-zero) weights everywhere, so the maps depend on x and the output is non-trivial.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  params = jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, l.shape) for k, l in
                                     zip(keys, leaves)])
  grid = (2, 4, 4)
  boxes = ag.centers_to_boxes(jnp.tile(jnp.array([[0.7, 0.3]]), (2, 4, 1)), 0.4)
  weights = ag.token_box_weights(boxes, grid, 2)
  token = jnp.array([1, 3])

  def model_fn(x, t):
    return model.apply({"params": params}, x, t, text)

  def energy_fn(x, t):
    _, st = model.apply({"params": params}, x, t, text, mutable=["intermediates"])
    maps = ag.cross_attention_maps(st["intermediates"], (0, 1))
    return ag.attention_energy(ag.subject_maps(maps, token, grid), weights)
  return model_fn, energy_fn, x


def test_one_guidance_step_lowers_energy():
  _, energy_fn, x = _tiny()
  t = jnp.full((2,), 700.0)
  e0 = energy_fn(x, t)
  g = jax.grad(lambda z: energy_fn(z, t).sum())(x)
  step = 0.02 / jnp.abs(g).max()
  e1 = energy_fn(x - step * g, t)
  drop = np.asarray(e0 - e1)
  assert np.all(drop > 0), (e0, e1)
  # And a step up the gradient raises it (the gradient's sign is right, not luck).
  assert np.all(np.asarray(energy_fn(x + step * g, t)) > np.asarray(e0))


def test_guided_sampling_eta_zero_equals_sampler_and_guidance_changes_it():
  model_fn, energy_fn, x = _tiny()
  settings = dict(name="flow_euler", num_inference_steps=4)

  @jax.jit
  def run(x, eta):
    return ag.guided_sample(model_fn, energy_fn, x, eta=eta, guidance_steps=2, n_inner=2,
                            **settings)
  ref = jax.jit(lambda x: samplers.sample(model_fn, x, **settings))(x)
  np.testing.assert_array_equal(np.asarray(run(x, 0.0)), np.asarray(ref))
  guided = np.asarray(run(x, 5.0))
  assert np.abs(guided - np.asarray(ref)).max() > 1e-3


def test_guided_sampling_other_sampler_eta_zero():
  model_fn, energy_fn, x = _tiny()
  settings = dict(name="euler", num_inference_steps=3, prediction_type="epsilon")
  out = jax.jit(lambda x: ag.guided_sample(model_fn, energy_fn, x, eta=0.0, guidance_steps=1,
                                           **settings))(x)
  ref = jax.jit(lambda x: samplers.sample(model_fn, x, **settings))(x)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=1e-6)


def test_missing_layer_is_a_clear_error():
  with pytest.raises(KeyError, match="block_5"):
    ag.cross_attention_maps({"block_0": {}}, (5,))

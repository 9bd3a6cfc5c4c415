"""Discffusion's matcher (``mfm_jax/diffusion/matcher.py``): the noise bank, the sown
cross-attention logits of a real DiT, the LSE score against numpy, candidate batching under a
shared noise, and the hinge loss over the hardest negative."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from mfm_jax.diffusion import matcher, objectives
from mfm_jax.models import dit

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
B, VIDEO, LT, DT = 2, (2, 8, 8, 3), 5, 16
SMALL = dict(out_channels=3, width=32, depth=3, num_heads=4, mlp_ratio=2.0, patch_size=(1, 4, 4))


def test_noise_bank_is_fixed_midpoints():
  bank = matcher.noise_bank(3, 4, (2, 3), "flow")
  np.testing.assert_allclose(bank.t, [125.0, 375.0, 625.0, 875.0])
  assert bank.noise.shape == (4, 2, 3)
  np.testing.assert_array_equal(bank.noise, matcher.noise_bank(3, 4, (2, 3), "flow").noise)
  assert not np.allclose(bank.noise, matcher.noise_bank(4, 4, (2, 3), "flow").noise)
  ddpm = matcher.noise_bank(0, 2, (1,), "epsilon", lo=0.2, hi=0.6, num_train_timesteps=1000)
  np.testing.assert_allclose(ddpm.t, [np.round(0.3 * 999), np.round(0.5 * 999)])
  sub = matcher.subset(bank, jnp.array([2, 0]))
  np.testing.assert_allclose(sub.t, [625.0, 125.0])
  np.testing.assert_array_equal(sub.noise[1], bank.noise[0])
  with pytest.raises(ValueError, match="lo < hi"):
    matcher.noise_bank(0, 2, (1,), "flow", lo=0.5, hi=0.5)
  with pytest.raises(ValueError, match=">= 1"):
    matcher.bank_levels(0)
  with pytest.raises(ValueError, match="objective"):
    matcher.noise_bank(0, 2, (1,), "score")


def test_layer_scores_against_numpy_ignore_padding():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 4, 5, 6)).astype(np.float32)       # [Ly, B, N, Lq, Lk]
  mask = np.arange(6)[None] < np.array([[2], [6], [4]])
  logits[:, 0, ..., 2:] = 1e4                # padding of row 0 must not count
  got = np.asarray(matcher.layer_scores(jnp.asarray(logits), jnp.asarray(mask)))
  assert got.shape == (3, 2)
  for b in range(3):
    for l in range(2):
      ref = logsumexp(logits[l, b][..., mask[b]].astype(np.float64), axis=-1).mean()
      np.testing.assert_allclose(got[b, l], ref, rtol=1e-5)
  # gradients stay finite with -inf on the masked keys
  g = jax.grad(lambda x: matcher.layer_scores(x, jnp.asarray(mask)).sum())(jnp.asarray(logits))
  assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g[:, 0, ..., 2:]).max()) == 0.0


def _dit_and_params(scan):
  model = dit.VideoDiT(**SMALL, scan_blocks=scan)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(B, *VIDEO)).astype(np.float32)
  text = rng.normal(size=(B, LT, DT)).astype(np.float32)
  mask = np.arange(LT)[None] < np.array([[3], [5]])
  t = np.array([100.0, 600.0], np.float32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), x, t, text, mask)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.2, s.shape), s.dtype),
                        nn.meta.unbox(abstract["params"]))
  return model, params, (x, t, text, mask)


def test_cross_logits_of_a_dit_scan_and_unrolled_agree():
  model, params, args = _dit_and_params(False)
  scanned = dit.VideoDiT(**SMALL, scan_blocks=True)
  apply = functools.partial(model.apply, mutable=["attn_logits"])
  _, state = jax.jit(apply, compiler_options=FAST)({"params": params}, *args)
  logits = matcher.cross_logits(state["attn_logits"])
  assert logits.shape == (3, B, 4, 8, LT)                  # blocks, batch, heads, Lq, Lk
  # block order: the stack's layer i is block_i's logits (not its self-attention's)
  (blk1,) = state["attn_logits"]["block_1"]["cross_attn"]["logits"]
  np.testing.assert_array_equal(logits[1], blk1)
  (self1,) = state["attn_logits"]["block_1"]["attn"]["logits"]
  assert self1.shape[-1] != LT
  stacked = dit.stack_blocks(params, SMALL["depth"])
  _, st2 = jax.jit(functools.partial(scanned.apply, mutable=["attn_logits"]),
                   compiler_options=FAST)({"params": stacked}, *args)
  np.testing.assert_allclose(matcher.cross_logits(st2["attn_logits"]), logits, rtol=1e-4,
                             atol=1e-4)
  with pytest.raises(ValueError, match="no sown 'cross_attn'"):
    matcher.cross_logits({"block_0": {"attn": {"logits": (blk1,)}}})


def test_candidate_scores_pair_order_and_shared_noise():
  rng = np.random.default_rng(2)
  x0 = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)     # B = 2 videos
  weights = jnp.asarray(rng.normal(size=(6, 2)), jnp.float32)   # one per (video, caption) pair
  bank = matcher.noise_bank(0, 3, (3, 4), "flow")

  def score_fn(x_t, t):   # [P, Ly = 2]: a pair's weights times sums of x_t, plus t
    return weights * jnp.sum(x_t, axis=(1, 2))[:, None] + t[:, None] / 1000.0

  got = np.asarray(matcher.candidate_scores(score_fn, x0, 3, bank, "flow"))
  assert got.shape == (3, 2, 3, 2)                              # [K, B, C, Ly]
  for k in range(3):
    for b in range(2):
      xt = objectives.add_noise(x0[b:b + 1], bank.noise[k][None], bank.t[k:k + 1], "flow")
      for c in range(3):
        ref = weights[b * 3 + c] * jnp.sum(xt) + bank.t[k] / 1000.0
        np.testing.assert_allclose(got[k, b, c], ref, rtol=1e-5, atol=1e-5)
  red = np.asarray(matcher.reduce_scores(jnp.asarray(got), layers=(1,)))
  np.testing.assert_allclose(red, got[..., 1].mean(0), rtol=1e-6)
  np.testing.assert_allclose(matcher.reduce_scores(jnp.asarray(got)), got.mean((0, 3)),
                             rtol=1e-6)


def test_hinge_loss_takes_the_hardest_valid_negative():
  scores = jnp.array([[1.0, 0.2, 0.95, 3.0],
                      [0.0, -1.0, -2.0, 5.0],
                      [2.0, 9.0, 9.0, 9.0]])
  valid = jnp.array([[True, True, False], [True, True, False], [False, False, False]])
  loss, hardest = matcher.hinge_loss(scores, valid, margin=0.1)
  np.testing.assert_allclose(loss, [0.05, 0.0, 0.0], atol=1e-6)
  np.testing.assert_array_equal(hardest[:2], [2, 1])
  loss_all, hardest_all = matcher.hinge_loss(scores, None, margin=0.1)
  np.testing.assert_allclose(loss_all, [2.1, 5.1, 7.1], atol=1e-6)
  np.testing.assert_array_equal(hardest_all, [3, 3, 1])
  g = jax.grad(lambda s: matcher.hinge_loss(s, valid, 0.1)[0].sum())(scores)
  np.testing.assert_allclose(g, [[-1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
  with pytest.raises(ValueError, match="C >= 2"):
    matcher.hinge_loss(jnp.zeros((3, 1)))

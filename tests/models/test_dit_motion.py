"""VideoDiT with motion_levels: zero-initialised level embedding, then the level changes the output."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mfm_jax.models import dit as dit_lib


def test_motion_levels_zero_init_and_effect():
  kw = dict(out_channels=3, width=32, depth=1, num_heads=2, patch_size=(2, 4, 4))
  x = jax.random.normal(jax.random.key(0), (2, 4, 8, 8, 3))
  t = jnp.array([10.0, 500.0])
  text = jax.random.normal(jax.random.key(1), (2, 3, 16))
  plain, ctrl = dit_lib.VideoDiT(**kw), dit_lib.VideoDiT(**kw, motion_levels=3)
  p0 = nn.meta.unbox(plain.init(jax.random.key(2), x, t, text)["params"])
  p1 = nn.meta.unbox(ctrl.init(jax.random.key(2), x, t, text)["params"])
  assert p1["motion_embed"].shape == (4, 32) and not np.any(np.asarray(p1["motion_embed"]))
  assert "motion_embed" not in p0
  rest = {k: v for k, v in p1.items() if k != "motion_embed"}
  jax.tree.map(np.testing.assert_array_equal, rest, p0)   # other params unchanged
  # Make the final layer non-zero so the output depends on the conditioning.
  p0 = jax.tree.map(lambda a: a + 0.05, p0)
  p1 = {**p0, "motion_embed": p1["motion_embed"]}
  ref = plain.apply({"params": p0}, x, t, text)
  for level in (None, jnp.array([0, 3]), jnp.array([2, 1])):
    np.testing.assert_array_equal(ctrl.apply({"params": p1}, x, t, text, motion_level=level), ref)
  table = jax.random.normal(jax.random.key(3), (4, 32))
  p2 = {**p1, "motion_embed": table}
  a = ctrl.apply({"params": p2}, x, t, text, motion_level=jnp.array([0, 0]))
  b = ctrl.apply({"params": p2}, x, t, text, motion_level=jnp.array([1, 0]))
  assert np.abs(np.asarray(a[0] - b[0])).max() > 1e-4
  np.testing.assert_array_equal(a[1], b[1])   # rows are independent

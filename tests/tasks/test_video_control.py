"""configs/video_control.py:smoke end to end in-process: levels from centres, jitted train steps,
evaluation with intensity adherence and guidance off / on."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from mfm_jax import tasks
from mfm_jax.data import motion


def _config(tmp_path):
  import importlib.util
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  spec = importlib.util.spec_from_file_location("vc", os.path.join(root, "configs",
                                                                   "video_control.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("smoke,levels=2")
  c.motion.edge_examples = 8
  c.diffusion.num_inference_steps = 2
  c.guidance.steps, c.guidance.eta = 1, 1.0
  return c


def test_video_control_smoke(tmp_path):
  c = _config(tmp_path)
  task = tasks.get(c.task)(c)
  assert len(task.edges) == 1
  it = task.make_iterator("train", 4, 0, 0, 1)
  batch = next(it)
  lv = np.asarray(task.levels_of(batch))
  want = motion.motion_level(motion.centers_motion(batch["centers"], batch["obj_mask"]),
                             task.edges)
  np.testing.assert_array_equal(lv, want)
  params = nn.meta.unbox(task.init(jax.random.key(0)))
  opt = optax.adam(1e-3)
  state = opt.init(params)

  @jax.jit
  def step(params, state, batch, rng):
    (loss, _), g = jax.value_and_grad(task.loss, has_aux=True)(params, batch, rng)
    upd, state = opt.update(g, state, params)
    return optax.apply_updates(params, upd), state, loss, g
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  losses = []
  for i in range(3):   # adaLN-Zero + zero final layer: the level's gradient appears at step 3
    params, state, loss, g = step(params, state, batch, jax.random.key(i))
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  assert np.abs(np.asarray(g["dit"]["motion_embed"])).max() > 0   # the level is trained
  res = task.evaluate(params, 3, str(tmp_path))
  assert "eval/intensity_spearman" in res   # nan when 2 tiny clips tie: not checked for value
  for k in ("eval/guidance_off_subject_error",
            "eval/guidance_on_subject_error", "eval/motion_at_level_0", "eval/motion_at_level_1"):
    assert k in res and np.isfinite(res[k]), (k, res)
  assert (tmp_path / "samples" / "control_000003.json").exists()

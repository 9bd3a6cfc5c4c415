"""tools/torch_dit (PyTorch) computes the same train step as the JAX video-diffusion task.

On the ``configs/video_gen.py:smoke`` sizes with random non-zero params (the task's init plus
noise, so the zero-initialised adaLN gates, cross-attention outputs and final layer are all
exercised): forward (full and factorized attention), the rectified-flow loss, every gradient,
and three clipped AdamW steps with the warmup + cosine schedule. JAX jits use ``FAST`` compiler
options (no LLVM optimisation: numerics unchanged, compiles several times faster).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from configs import video_gen
from mfm_jax import tasks
from mfm_jax.diffusion import objectives
from mfm_jax.engine import optim
from mfm_jax.models import dit as dit_lib
from tools import torch_dit

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
jit = functools.partial(jax.jit, compiler_options=FAST)
CAPTIONS = ["a small red cube slides left and hits a blue sphere", "",
            "a green cylinder " * 12]  # the last one is truncated to max_text_len


@functools.lru_cache
def _jax_setup(attention, seed=0):
  """(config, task, params, inputs); cached: callers must not mutate them."""
  config = video_gen.get_config("smoke")
  config.model.attention = attention
  task = tasks.get(config.task)(config)
  params = nn.meta.unbox(jit(task.init)(jax.random.key(seed)))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda p: np.asarray(p + rng.normal(0, 0.05, p.shape), np.float32),
                        params)
  ids, mask = task.tokenizer.encode(CAPTIONS)
  ids = np.concatenate([ids, np.zeros_like(ids[:1])])  # + a row with no real token at all
  mask = np.concatenate([mask, np.zeros_like(mask[:1])])
  x0 = rng.uniform(-1, 1, (len(ids),) + task.video_shape).astype(np.float32)
  noise = rng.normal(size=x0.shape).astype(np.float32)
  sigma = np.array([0.0, 0.3, 0.77, 1.0], np.float32)
  return config, task, params, (ids, mask, x0, noise, sigma)


def _setup(attention):
  """The cached JAX side plus a fresh torch model loaded with its params."""
  config, task, params, inputs = _jax_setup(attention)
  model = torch_dit.load_jax_params(torch_dit.VideoDiffusion(config), params)
  return config, task, params, model, inputs


def _t(a):
  return torch.from_numpy(np.asarray(a))


@pytest.mark.parametrize("attention", ["full", "factorized"])
def test_forward_matches_jax(attention):
  _, task, params, model, (ids, mask, x0, noise, sigma) = _setup(attention)
  t = sigma * 1000
  want = jit(lambda p, i, m, x, t: task.denoiser(p, i, m)(x, t))(params, ids, mask, noise, t)
  with torch.no_grad():
    got = model(_t(noise), _t(t), _t(ids).long(), _t(mask)).numpy()
  assert np.std(want) > 0.1  # every branch contributes: not the all-zero output of init
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_loss_grads_and_optimizer_match_jax():
  config, task, params, model, (ids, mask, x0, noise, sigma) = _setup("factorized")

  def jax_loss(p):
    per_ex, _ = objectives.loss(task.denoiser(p, ids, mask), x0, jax.random.key(0), "flow",
                                timesteps=sigma * 1000, noise=noise, **task._diffusion_kwargs())
    return jnp.mean(per_ex)

  want_loss, jax_grads = jit(jax.value_and_grad(jax_loss))(params)
  loss = torch_dit.flow_loss(model, _t(x0), _t(noise), _t(sigma), _t(ids).long(), _t(mask))
  loss.backward()
  np.testing.assert_allclose(loss.item(), want_loss, rtol=1e-5)
  want_grads = torch_dit.jax_to_torch_state(model, jax_grads)
  for name, p in model.named_parameters():  # each leaf to 1e-4 of its own largest entry
    want = want_grads[name]
    assert float((p.grad - want).abs().max()) <= 1e-4 * float(want.abs().max()) + 1e-9, name

  # Three clipped AdamW steps (lr 0, lr/2, lr: warmup 2) on the same (JAX) gradients.
  opt_cfg = config.optimizer.copy_and_resolve_references()
  opt_cfg.weight_decay = 0.1  # exercise the ndim>=2 decay mask
  tx, _ = optim.make_optimizer(opt_cfg, config.total_steps)
  opt, sched = torch_dit.make_optimizer(model, opt_cfg, config.total_steps)
  state, new = jit(tx.init)(params), params

  @jit
  def update(state, p):
    updates, state = tx.update(jax_grads, state, p)
    return state, optax.apply_updates(p, updates)

  for _ in range(3):
    state, new = update(state, new)
    for name, p in model.named_parameters():
      p.grad = want_grads[name].clone()
    torch_dit.apply_update(list(model.parameters()), opt, sched, opt_cfg.clip_norm)
  before, after = (torch_dit.jax_to_torch_state(model, p) for p in (params, new))
  for name, p in model.named_parameters():
    np.testing.assert_allclose(p.detach().numpy(), after[name].numpy(), atol=1e-6, rtol=0,
                               err_msg=name)
  assert max(float((after[n] - before[n]).abs().max()) for n in after) > 1e-4  # it moved


def test_schedule_matches_optax():
  config = video_gen.get_config()
  for schedule in ("cosine", "linear", "constant"):
    config.optimizer.schedule = schedule
    _, sched = optim.make_optimizer(config.optimizer, config.total_steps)
    for step in (0, 1, 50, 99, 100, 101, 700, 1499, 1500, 2000):
      assert torch_dit.lr_at(config.optimizer, config.total_steps, step) == pytest.approx(
          float(sched(step)), rel=1e-5, abs=1e-9), (schedule, step)


def test_load_errors_name_the_key():
  config = video_gen.get_config("smoke")
  task = tasks.get(config.task)(config)
  model = torch_dit.VideoDiffusion(config)
  abstract = nn.meta.unbox(jax.eval_shape(task.init, jax.random.key(0)))
  params = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), abstract)
  torch_dit.load_jax_params(model, params)  # the full tree loads
  del params["dit"]["block_1"]["mlp"]["fc2"]["bias"]
  params["dit"]["extra"] = np.zeros(3)
  with pytest.raises(KeyError, match=r"missing \['dit/block_1/mlp/fc2/bias'\].*dit/extra"):
    torch_dit.load_jax_params(model, params)
  params = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), abstract)
  params["text"]["block_0"]["attn"]["key"]["kernel"] = np.zeros((32, 4, 8), np.float32)
  with pytest.raises(ValueError, match="text/block_0/attn/key/kernel"):
    torch_dit.load_jax_params(model, params)
  # The scan_blocks layout (blocks stacked on a leading axis) loads into the same modules.
  params = jax.tree.map(lambda s: np.random.default_rng(0).normal(size=s.shape), abstract)
  stacked = dict(params, dit=dit_lib.stack_blocks(params["dit"], config.model.depth))
  want = torch_dit.jax_to_torch_state(model, params)
  for name, value in torch_dit.jax_to_torch_state(model, stacked).items():
    np.testing.assert_array_equal(value, want[name], err_msg=name)


def test_time_train_step_runs():
  config = video_gen.get_config("smoke")
  config.batch_size = 2
  times = torch_dit.time_train_step(config, steps=1, warmup=1)
  assert len(times) == 1 and times[0] > 0

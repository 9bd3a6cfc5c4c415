"""Tests for mfm_jax.models.peft: config, LoRA / KAdaptation in layers.Attention, shared slow
factors under nn.scan, the PEViT 50,176 count, masks, and subspace training (Fastfood ``P``)."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mfm_jax.engine import optim
from mfm_jax.models import layers, peft

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
jit = functools.partial(jax.jit, compiler_options=FAST)
KADAPT = peft.PeftConfig(method="kadaptation", kadapt_n=4, kadapt_scale=3.0)


def _rand(seed, shape, std=1.0):
  return (std * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def _random_like(abstract, seed=0, std=0.2):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: rng.normal(0, std, a.shape).astype(np.float32),
                      nn.meta.unbox(abstract))


def _base(params):
  """The un-adapted part of an attention's params (drops ``peft_*``)."""
  return {k: v for k, v in params.items() if not k.startswith("peft_")}


def _shared(cfg, seed=None):
  sf = peft.SharedFactors(cfg)
  p = sf.init(jax.random.key(0)).get("params", {})
  p = nn.meta.unbox(p) if seed is None else _random_like(p, seed, 0.5)
  return sf.apply({"params": p})


class _Tower(nn.Module):
  """SharedFactors + ``depth`` EncoderBlocks, unrolled or ``nn.scan``-ed (+ remat)."""
  cfg: peft.PeftConfig | None
  depth: int
  heads: int
  scan: bool = False

  @nn.compact
  def __call__(self, x):
    shared = peft.SharedFactors(self.cfg, name="peft_shared")()
    if self.scan:
      block = layers.remat(layers.EncoderBlock, "full", prevent_cse=False)
      stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True,
                                                                     "dropout": True},
                      in_axes=(nn.broadcast,) * 3, length=self.depth,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(self.heads, scanned=True, peft=self.cfg, name="blocks")(x, None, None, shared)
      return x
    for i in range(self.depth):
      x = layers.EncoderBlock(self.heads, peft=self.cfg, name=f"block_{i}")(x, None, None, shared)
    return x


def test_config_from_dict_validates_and_is_hashable():
  cfg = peft.PeftConfig.from_dict({"method": "kadaptation", "targets": ["query", "value"]})
  assert cfg.targets == ("query", "value") and hash(cfg) == hash(peft.PeftConfig(
      method="kadaptation"))
  assert peft.PeftConfig.from_dict(None).method == "none"
  with pytest.raises(ValueError, match="unknown key.*'rank'"):
    peft.PeftConfig.from_dict({"method": "lora", "rank": 4})
  for bad in ({"method": "adapter"}, {"targets": ("qkv",)}, {"targets": ()},
              {"lora_rank": 0}, {"kadapt_dropout": 1.0}, {"kadapt_fast_init": "normal"},
              {"share_fast_qv": True, "targets": ("query",)}):
    with pytest.raises(ValueError, match="PeftConfig"):
      peft.PeftConfig(**bad)


def test_kron_delta_equals_explicit_kron_sum():
  slow, u, v = _rand(0, (4, 4, 4)), _rand(1, (4, 6, 2)), _rand(2, (4, 2, 3))
  ref = sum(jnp.kron(slow[i], u[i] @ v[i]) for i in range(4))
  np.testing.assert_allclose(peft.kron_delta(slow, u, v), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", [KADAPT, peft.PeftConfig(method="lora", lora_rank=2,
                                                         targets=peft.PROJECTIONS)])
def test_adapters_are_zero_at_init(cfg):
  x = _rand(0, (2, 5, 32))
  shared = _shared(cfg)
  attn, base = layers.Attention(4, peft=cfg), layers.Attention(4)
  params = nn.meta.unbox(jit(attn.init)(jax.random.key(1), x, shared=shared)["params"])
  assert any(k.startswith("peft_") for k in params)
  y = jit(lambda p: attn.apply({"params": p}, x, shared=shared))(params)
  y0 = jit(lambda p: base.apply({"params": p}, x))(_base(params))
  np.testing.assert_allclose(y, y0, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("share", [False, True])
def test_kadaptation_equals_merged_kernels_before_head_split(share):
  cfg = peft.PeftConfig(method="kadaptation", kadapt_n=4, kadapt_scale=3.0, share_fast_qv=share)
  x, shared = _rand(0, (2, 5, 32)), _shared(cfg, seed=3)
  attn = layers.Attention(4, peft=cfg)
  params = _random_like(jax.eval_shape(attn.init, jax.random.key(0), x, shared=shared)["params"])
  assert ("peft_value_u" in params) is not share
  y = jit(lambda p: attn.apply({"params": p}, x, shared=shared))(params)

  merged = _base(params)
  for t in ("query", "value"):
    f = "query" if share else t
    u, v = params[f"peft_{f}_u"], params[f"peft_{f}_v"]
    dw = sum(jnp.kron(shared[t][i], u[i] @ v[i]) for i in range(4))  # [D, N*Dh]
    merged[t] = {"kernel": params[t]["kernel"] + 3.0 * dw.reshape(32, 4, 8),
                 "bias": params[t]["bias"] + params["peft_bias"].reshape(4, 8)}
  y_ref = jit(lambda p: layers.Attention(4).apply({"params": p}, x))(merged)
  np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)


def test_lora_equals_merged_kernel_on_all_projections():
  cfg = peft.PeftConfig(method="lora", lora_rank=2, lora_alpha=4.0, targets=peft.PROJECTIONS)
  x = _rand(0, (2, 5, 32))
  attn = layers.Attention(4, peft=cfg)
  params = _random_like(jax.eval_shape(attn.init, jax.random.key(0), x)["params"])
  y = jit(lambda p: attn.apply({"params": p}, x))(params)
  merged = _base(params)
  for t in peft.PROJECTIONS:
    w = params[t]["kernel"]
    dw = params[f"peft_{t}_lora_a"] @ params[f"peft_{t}_lora_b"] * 2.0
    merged[t] = dict(params[t], kernel=w + dw.reshape(w.shape))
  y_ref = jit(lambda p: layers.Attention(4).apply({"params": p}, x))(merged)
  np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)


def test_kadaptation_dropout_only_with_a_dropout_rng_and_needs_shared():
  cfg = peft.PeftConfig(method="kadaptation", kadapt_n=4, kadapt_dropout=0.5)
  x, shared = _rand(0, (2, 5, 32)), _shared(cfg, seed=3)
  attn = layers.Attention(4, peft=cfg)
  params = _random_like(jax.eval_shape(attn.init, jax.random.key(0), x, shared=shared)["params"])
  f = jit(lambda p, r: attn.apply({"params": p}, x, shared=shared, rngs=r))
  y_eval, y_eval2 = f(params, {}), f(params, {})
  y_train = f(params, {"dropout": jax.random.key(1)})
  np.testing.assert_array_equal(y_eval, y_eval2)
  assert np.abs(np.asarray(y_train) - np.asarray(y_eval)).max() > 1e-3
  with pytest.raises(ValueError, match="SharedFactors"):
    attn.init(jax.random.key(0), x)


def test_pevit_reference_count_is_50176_unrolled_and_scanned():
  cfg = peft.PeftConfig(method="kadaptation", kadapt_n=32, kadapt_fast_rank=1,
                        kadapt_slow_rank=1, targets=("query", "value"))
  x = jnp.zeros((1, 2, 768))
  counts = []
  for scan in (False, True):
    tower = _Tower(cfg, depth=12, heads=12, scan=scan)
    params = jax.eval_shape(tower.init, jax.random.key(0), x)["params"]
    counts.append(peft.count_params(params, peft.trainable_mask(params, cfg)))
  assert counts[0] == counts[1]
  trainable, total = counts[0]
  assert trainable == 50_176 == peft.kadaptation_param_count(768, 12, cfg)
  assert total - trainable == _full_count(12, 768)
  shared_fast = dataclasses.replace(cfg, share_fast_qv=True)
  assert peft.kadaptation_param_count(768, 12, shared_fast) == 50_176 - 12 * 1536


def _full_count(depth, d):
  attn = 4 * (d * d + d)
  mlp = d * 4 * d + 4 * d + 4 * d * d + d
  return depth * (attn + mlp + 4 * d)


def test_scanned_tower_shares_slow_factors_and_matches_unrolled():
  cfg = peft.PeftConfig(method="kadaptation", kadapt_n=4, kadapt_scale=2.0)
  x = _rand(0, (2, 5, 32))
  unrolled, scanned = _Tower(cfg, 3, 4), _Tower(cfg, 3, 4, scan=True)
  params = _random_like(jax.eval_shape(unrolled.init, jax.random.key(0), x)["params"])
  blocks = [params[f"block_{i}"] for i in range(3)]
  stacked = {"peft_shared": params["peft_shared"],
             "blocks": jax.tree.map(lambda *a: jnp.stack(a), *blocks)}
  abstract = nn.meta.unbox(jax.eval_shape(scanned.init, jax.random.key(0), x)["params"])
  assert jax.tree.structure(abstract) == jax.tree.structure(stacked)
  assert set(params["peft_shared"]) == {f"peft_slow_{t}_{s}" for t in ("query", "value")
                                        for s in "ab"}
  y = jit(lambda p: unrolled.apply({"params": p}, x))(params)
  y_scan = jit(lambda p: scanned.apply({"params": p}, x))(stacked)
  np.testing.assert_allclose(y, y_scan, rtol=1e-4, atol=1e-4)

  # gradients reach the shared slow factors and the per-block fast factors through the scan
  def loss(p):
    return jnp.sum(scanned.apply({"params": p}, x) ** 2)
  g = jit(jax.grad(loss))(stacked)
  assert np.abs(g["peft_shared"]["peft_slow_query_a"]).max() > 0
  assert np.abs(g["blocks"]["attn"]["peft_value_v"]).max() > 0


def test_trainable_mask_with_head_and_optimizer():
  cfg = peft.PeftConfig(method="lora", lora_rank=2)
  params = {"tower": {"attn": {"query": {"kernel": jnp.ones((4, 4))},
                               "peft_query_lora_a": jnp.ones((4, 2))}},
            "head": {"kernel": jnp.ones((4, 3))}}
  mask = peft.trainable_mask(params, cfg, head=("head",))
  assert mask == {"tower": {"attn": {"query": {"kernel": False}, "peft_query_lora_a": True}},
                  "head": {"kernel": True}}
  assert peft.count_params(params, mask) == (20, 36)
  assert not any(jax.tree.leaves(peft.trainable_mask(params, peft.PeftConfig())))
  ocfg = optim.default_config()
  ocfg.update(dict(warmup_steps=0, schedule="constant"))
  tx, _ = optim.make_optimizer(ocfg, 10, mask)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(jnp.abs(updates["tower"]["attn"]["query"]["kernel"]).max()) == 0.0
  assert float(jnp.abs(updates["head"]["kernel"]).max()) > 0.0


# --- subspace --------------------------------------------------------------------------------
def _flat(tree):
  return jnp.concatenate([a.reshape(-1) for a in jax.tree.leaves(tree)])


@jit
def _columns(sub):
  return jax.vmap(lambda t: _flat(sub.project(t)))(jnp.eye(sub.dim)).T  # [D, d]


@jit
def _project(sub, t):
  return _flat(sub.project(t))


def test_subspace_zero_is_theta0_linear_and_unit_columns():
  theta0 = {"a": _rand(0, (64, 32)), "b": _rand(1, (2048,)).astype(jnp.bfloat16),
            "step": jnp.zeros((), jnp.int32)}
  sub = peft.Subspace(theta0, dim=100, seed=3)
  out = jit(lambda s, t: s.expand(t))(sub, sub.init())  # a pytree argument of jit
  for k in theta0:
    np.testing.assert_array_equal(out[k], theta0[k])
    assert out[k].dtype == theta0[k].dtype
  x, y = _rand(2, (100,)), _rand(3, (100,))
  np.testing.assert_allclose(_project(sub, 2 * x - 3 * y),
                             2 * _project(sub, x) - 3 * _project(sub, y),
                             rtol=1e-4, atol=1e-4)
  p = _columns(sub)  # D = 4096 = 32 blocks of L = 128: unit columns exactly
  assert p.shape == (4097, 100) and not np.any(p[4096])  # the int leaf "step" is outside
  p = p[:4096]
  np.testing.assert_allclose(jnp.linalg.norm(p, axis=0), 1.0, rtol=1e-5)
  assert np.linalg.svd(np.asarray(p), compute_uv=False).min() > 0.5  # well conditioned
  ragged = peft.Subspace({"w": jnp.zeros((3000,))}, dim=100, seed=0)  # truncated last block
  assert abs(float(jnp.mean(jnp.sum(_columns(ragged) ** 2, axis=0))) - 1.0) < 0.05


def test_subspace_local_is_block_diagonal_with_unit_columns():
  theta0 = {"a": jnp.zeros((4096,)), "b": jnp.zeros((64, 16))}
  sub = peft.Subspace(theta0, dim=50, seed=0, local=True)
  assert sub.leaf_dims == (40, 10)
  p = _columns(sub)
  np.testing.assert_allclose(jnp.linalg.norm(p, axis=0), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(p[4096:, :40], 0.0)
  np.testing.assert_array_equal(p[:4096, 40:], 0.0)
  masked = peft.Subspace(theta0, dim=10, mask={"a": False, "b": True})
  assert not np.any(_project(masked, jnp.ones(10))[:4096])
  with pytest.raises(ValueError, match="dim"):
    peft.Subspace({"w": jnp.zeros((8,))}, dim=9)


def test_subspace_gradients_flow_to_theta_d():
  theta0 = {"a": _rand(0, (32, 16)), "b": _rand(1, (512,))}
  w = {"a": _rand(2, (32, 16)), "b": _rand(3, (512,))}
  for local in (False, True):
    sub = peft.Subspace(theta0, dim=20, seed=1, local=local)
    loss = lambda t: sum(jnp.sum(wi * pi) for wi, pi in  # noqa: E731
                         zip(jax.tree.leaves(w), jax.tree.leaves(sub.expand(t))))
    g = jit(jax.grad(loss))(sub.init())
    np.testing.assert_allclose(g, _columns(sub).T @ _flat(w), rtol=1e-4, atol=1e-4)


def test_subspace_memory_does_not_scale_with_d_times_big_d():
  big = 1 << 22  # D = 4.2M, d = 4096: a dense P would be 64 GiB
  theta0 = {"w": jnp.zeros((big,)), "b": jnp.zeros((1000,))}
  sub = peft.Subspace(theta0, dim=4096, seed=0)
  f = jit(lambda s, t: s.expand(t)).lower(sub, sub.init()).compile()
  mem = f.memory_analysis()
  if mem is not None:
    assert mem.temp_size_in_bytes < 64 * (big + 1000)
  theta_d = jnp.asarray(_rand(0, (4096,)))
  out = f(sub, theta_d)
  norm = float(jnp.sqrt(jnp.sum(out["w"] ** 2) + jnp.sum(out["b"] ** 2)))
  assert abs(norm / float(jnp.linalg.norm(theta_d)) - 1.0) < 0.05  # P nearly an isometry

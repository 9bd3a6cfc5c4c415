"""The text-to-video DiT train step of ``tasks/video_diffusion.py`` in plain PyTorch (CPU, f32).

A reference implementation for ``tools/bench.py --vs-torch``: the byte-level ``TextEncoder``
and the ``VideoDiT`` (tubelet embed, 3-D sin-cos positions, timestep + pooled-text adaLN-Zero,
full or factorized self-attention, masked cross-attention to text, MLP, final layer,
unpatchify), the rectified-flow loss with condition dropout, backward, global-norm clipping and
``torch.optim.AdamW`` with the optax warmup + cosine schedule. Written the way a PyTorch user
would: ``nn.Linear`` (fused q/k/v projections), ``nn.LayerNorm`` and
``F.scaled_dot_product_attention``.

Sameness is tested, not asserted: ``load_jax_params`` (in ``torch_dit_params``, re-exported
here) copies a JAX param tree (``task.init``) into the modules through an explicit key table
(``key_table``) with a shape check on every leaf, and ``tests/tools/test_torch_dit.py`` checks
the forward, loss, every gradient and three optimizer steps against JAX.

  times = torch_dit.time_train_step(config, steps=10, warmup=3, compile=True)  # seconds/step
"""
from __future__ import annotations

# pylint: disable=redefined-builtin  (``compile=`` is the API tools/bench.py calls)
import math
import os
import time
from typing import Any

import numpy as np

# Spinning OpenMP waits made a step ~10x slower while another job held one of the 2 cores; libgomp
# reads this when torch loads (so only if this module imports torch first). ACTIVE to compare.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from mfm_jax import tasks
from tools.torch_dit_params import jax_to_torch_state, key_table, load_jax_params  # noqa: F401

EPS = 1e-6  # LayerNorm epsilon of mfm_jax.models.layers


class Attention(nn.Module):
  """Multi-head self- (fused qkv) or cross-attention (q + fused kv) with a key padding mask."""

  def __init__(self, dim: int, num_heads: int, context_dim: int | None = None):
    super().__init__()
    self.num_heads, self.head_dim = num_heads, dim // num_heads
    self.cross = context_dim is not None
    if self.cross:
      self.q = nn.Linear(dim, dim)
      self.kv = nn.Linear(context_dim, 2 * dim)
    else:
      self.qkv = nn.Linear(dim, 3 * dim)
    self.out = nn.Linear(dim, dim)

  def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """x: [B, Lq, D]; context: [B, Lk, Dc]; mask: [B, Lk] bool, True = attend -> [B, Lq, D].

    A row whose mask has no True key attends to nothing (output = out bias), as in JAX.
    """
    b, lq, d = x.shape
    n, dh = self.num_heads, self.head_dim
    if self.cross:
      q = self.q(x).view(b, lq, n, dh).transpose(1, 2)
      k, v = self.kv(context).view(b, context.shape[1], 2, n, dh).permute(2, 0, 3, 1, 4)
    else:
      q, k, v = self.qkv(x).view(b, lq, 3, n, dh).permute(2, 0, 3, 1, 4)  # 3 x [B, N, L, Dh]
    attn_mask = any_key = None
    if mask is not None:
      any_key = mask.any(-1)
      attn_mask = (mask | ~any_key[:, None])[:, None, None, :]
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, N, Lq, Dh]
    if any_key is not None:
      o = o * any_key[:, None, None, None]
    return self.out(o.transpose(1, 2).reshape(b, lq, d))


class Mlp(nn.Module):
  """Linear -> GELU (tanh) -> Linear: [..., Din] -> [..., Dout]."""

  def __init__(self, dim: int, hidden: int, out: int):
    super().__init__()
    self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, out)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class EncoderBlock(nn.Module):
  """Pre-LN block: ``x + Attn(LN(x))``, ``x + Mlp(LN(x))``; x: [B, L, D], mask: [B, L]."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
    super().__init__()
    self.norm1, self.norm2 = nn.LayerNorm(dim, eps=EPS), nn.LayerNorm(dim, eps=EPS)
    self.attn = Attention(dim, num_heads)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)

  def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    x = x + self.attn(self.norm1(x), mask=mask)
    return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
  """Byte ids [B, L] + mask [B, L] -> (tokens [B, L/p, D], mean-pooled [B, D], mask [B, L/p]).

  With ``patch = p > 1`` the embeddings of p consecutive ids are concatenated and projected
  (``patch_proj``) to one token, which is real if any of its ids is.
  """

  def __init__(self, vocab_size: int, width: int, depth: int, num_heads: int, max_len: int,
               patch: int = 1, mlp_ratio: float = 4.0):
    super().__init__()
    self.patch = patch
    self.embedding = nn.Embedding(vocab_size, width)
    self.patch_proj = nn.Linear(patch * width, width) if patch > 1 else None
    self.pos_embedding = nn.Parameter(0.01 * torch.randn(max_len, width))
    self.blocks = nn.ModuleList(EncoderBlock(width, num_heads, mlp_ratio)
                                for _ in range(depth))
    self.final_norm = nn.LayerNorm(width, eps=EPS)

  def forward(self, ids: torch.Tensor, mask: torch.Tensor):
    b, l = ids.shape
    x = self.embedding(ids)
    if self.patch_proj is not None:
      l //= self.patch
      mask = mask.reshape(b, l, self.patch).any(-1)
      x = self.patch_proj(x.reshape(b, l, -1))
    x = x + self.pos_embedding[:l]
    for block in self.blocks:
      x = block(x, mask)
    x = self.final_norm(x)
    m = mask.to(x.dtype)
    pooled = (x * m[..., None]).sum(1) / m.sum(1).clamp(min=1.0)[:, None]
    return x, pooled, mask


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
  return F.layer_norm(x, x.shape[-1:], eps=EPS)


class DiTBlock(nn.Module):
  """adaLN-Zero DiT block on [B, L, D] tokens of a (T', H', W') grid; c: [B, D]."""

  def __init__(self, dim: int, num_heads: int, grid: tuple[int, int, int], mlp_ratio: float,
               attention: str, cross_attention: bool):
    super().__init__()
    if attention not in ("full", "factorized"):
      raise ValueError(f"attention must be 'full' or 'factorized', got {attention!r}")
    self.grid = grid
    self.branches = ("attn",) if attention == "full" else ("spatial_attn", "temporal_attn")
    self.adaln = nn.Linear(dim, 3 * (len(self.branches) + 1) * dim)
    self.attn = nn.ModuleDict({name: Attention(dim, num_heads) for name in self.branches})
    self.cross_attention = cross_attention
    if cross_attention:
      self.norm_cross = nn.LayerNorm(dim, eps=EPS)
      self.cross_attn = Attention(dim, num_heads, context_dim=dim)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)

  def forward(self, x, c, ctx, mask):
    b, l, d = x.shape
    t, h, w = self.grid
    mods = self.adaln(F.silu(c))[:, None].chunk(3 * (len(self.branches) + 1), dim=-1)
    for i, name in enumerate(self.branches):
      shift, scale, gate = mods[3 * i:3 * i + 3]
      y = _layer_norm(x) * (1 + scale) + shift
      if name == "attn":
        y = self.attn[name](y)
      elif name == "spatial_attn":  # [B*T', H'W', D]
        y = self.attn[name](y.reshape(b * t, h * w, d)).reshape(b, l, d)
      else:  # temporal: [B*H'W', T', D]
        y = y.reshape(b, t, h * w, d).transpose(1, 2).reshape(b * h * w, t, d)
        y = self.attn[name](y).reshape(b, h * w, t, d).transpose(1, 2).reshape(b, l, d)
      x = x + gate * y
    if self.cross_attention:
      x = x + self.cross_attn(self.norm_cross(x), ctx, mask=mask)
    shift, scale, gate = mods[-3:]
    return x + gate * self.mlp(_layer_norm(x) * (1 + scale) + shift)


def sincos_3d(dim: int, grid: tuple[int, int, int]) -> np.ndarray:
  """[T', H', W', dim] table: channels [time | height | width], ``[sin, cos]`` halves."""
  def one(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.outer(pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  d_hw = 2 * (dim // 6)
  tt, hh, ww = np.meshgrid(*(np.arange(g) for g in grid), indexing="ij")
  emb = np.concatenate([one(dim - 2 * d_hw, tt), one(d_hw, hh), one(d_hw, ww)], axis=1)
  return emb.reshape(*grid, dim).astype(np.float32)


class VideoDiT(nn.Module):
  """x: [B, T, H, W, C], t: [B] in [0, 1000], text: [B, Lt, Dt], mask: [B, Lt], pooled: [B, Dt]
  -> [B, T, H, W, out_channels]."""

  def __init__(self, *, video_shape, out_channels, width, depth, num_heads, patch_size,
               text_dim, mlp_ratio=4.0, attention="full", cross_attention=True, freq_dim=256):
    super().__init__()
    t, h, w, c = video_shape
    self.patch = tuple(patch_size)
    pt, ph, pw = self.patch
    self.grid = (t // pt, h // ph, w // pw)
    self.patch_embed = nn.Linear(pt * ph * pw * c, width)
    pos = torch.from_numpy(sincos_3d(width, self.grid)).reshape(1, -1, width)
    self.register_buffer("pos_embed", pos, persistent=False)
    half = freq_dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    self.register_buffer("freqs", freqs, persistent=False)
    self.t_embed = Mlp(freq_dim, width, width)  # fc2(silu(fc1)) -- activation set in forward
    self.pooled_fc1, self.pooled_fc2 = nn.Linear(text_dim, width), nn.Linear(width, width)
    self.text_proj = Mlp(text_dim, width, width) if cross_attention else None
    self.blocks = nn.ModuleList(
        DiTBlock(width, num_heads, self.grid, mlp_ratio, attention, cross_attention)
        for _ in range(depth))
    self.final_adaln = nn.Linear(width, 2 * width)
    self.final_proj = nn.Linear(width, pt * ph * pw * out_channels)

  def forward(self, x, t, text, mask, pooled):
    b, tt, h, w, c = x.shape
    (pt, ph, pw), (gt, gh, gw) = self.patch, self.grid
    p = x.reshape(b, gt, pt, gh, ph, gw, pw, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
    tok = self.patch_embed(p.reshape(b, gt * gh * gw, -1)) + self.pos_embed
    args = t.float()[:, None] * self.freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    cond = self.t_embed.fc2(F.silu(self.t_embed.fc1(emb)))
    cond = cond + self.pooled_fc2(F.silu(self.pooled_fc1(pooled)))
    ctx = self.text_proj(text) if self.text_proj is not None else None
    for block in self.blocks:
      tok = block(tok, cond, ctx, mask)
    shift, scale = self.final_adaln(F.silu(cond))[:, None].chunk(2, dim=-1)
    y = self.final_proj(_layer_norm(tok) * (1 + scale) + shift)
    y = y.reshape(b, gt, gh, gw, pt, ph, pw, -1).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return y.reshape(b, tt, h, w, -1)


class VideoDiffusion(nn.Module):
  """Text encoder + DiT: ``forward(x_t, t, ids, mask)`` is ``task.denoiser(params, ids, mask)``."""

  def __init__(self, config):
    super().__init__()
    task = tasks.get(config.task)(config)  # sizes exactly as the task decodes them
    tx, dit, a = task.text, task.dit, task.dit_args
    if tx.causal or tx.pooling != "mean" or dit.pos_embed != "sincos":
      raise ValueError("torch_dit implements the mean-pooled bidirectional text encoder and "
                       "the sin-cos DiT positions only")
    self.tokenizer = task.tokenizer
    self.text = TextEncoder(tx.vocab_size, tx.width, tx.depth, tx.num_heads, tx.max_len,
                            patch=getattr(tx, "patch", 1), mlp_ratio=tx.mlp_ratio)
    self.dit = VideoDiT(video_shape=task.video_shape, text_dim=tx.width,
                        mlp_ratio=dit.mlp_ratio, **a)
    self.register_buffer("null_ids", torch.from_numpy(np.array(task.null_ids)).long(),
                         persistent=False)
    self.register_buffer("null_mask", torch.from_numpy(np.array(task.null_mask)),
                         persistent=False)
    for name, p in self.named_parameters():  # DiT init: Xavier kernels, zero adaLN / final
      if p.ndim == 2 and "embedding" not in name:
        nn.init.xavier_uniform_(p)
      elif name.endswith("bias"):
        nn.init.zeros_(p)
      if any(k in name for k in ("adaln", "final_proj", "cross_attn.out")):
        nn.init.zeros_(p)

  def forward(self, x_t, t, ids, mask):
    """x_t: [B, T, H, W, 3]; t: [B]; ids: [B, L] long; mask: [B, L] bool -> [B, T, H, W, 3]."""
    tokens, pooled, token_mask = self.text(ids, mask)
    return self.dit(x_t, t, tokens, token_mask, pooled)


def flow_loss(model: VideoDiffusion, x0, noise, sigma, ids, mask, num_train_timesteps=1000):
  """Rectified flow, mean over the batch: x_t = (1 - s) x0 + s noise, target noise - x0.

  x0, noise: [B, T, H, W, 3]; sigma: [B] in [0, 1]; the model gets t = sigma * N.
  """
  t = sigma * num_train_timesteps
  s = (t / num_train_timesteps).view(-1, *([1] * (x0.ndim - 1)))
  pred = model((1 - s) * x0 + s * noise, t, ids, mask)
  return (pred - (noise - x0)).square().mean()


# --- optimizer and train step -------------------------------------------------------------------
def lr_at(cfg, total_steps: int, step: int) -> float:
  """``mfm_jax.engine.optim.make_schedule`` (optax) as a Python function of the step."""
  warmup = int(min(cfg.warmup_steps, max(total_steps - 1, 0)))
  if step < warmup:
    return cfg.lr * step / warmup
  decay_steps = max(total_steps - warmup, 1)
  frac = min(step - warmup, decay_steps) / decay_steps
  if cfg.schedule == "cosine":
    a = cfg.end_lr_factor
    return cfg.lr * ((1 - a) * 0.5 * (1 + math.cos(math.pi * frac)) + a)
  if cfg.schedule == "linear":
    return cfg.lr + (cfg.lr * cfg.end_lr_factor - cfg.lr) * frac
  if cfg.schedule == "constant":
    return cfg.lr
  raise ValueError(f"unknown schedule {cfg.schedule!r}")


def make_optimizer(model: VideoDiffusion, cfg, total_steps: int):
  """AdamW with the weight-decay mask of the JAX leaves (``ndim>=2`` / all / none) + schedule.

  Returns ``(optimizer, lr_scheduler)``; call ``scheduler.step()`` after ``optimizer.step()``.
  """
  if cfg.name != "adamw":
    raise ValueError(f"torch_dit implements adamw only, config has {cfg.name!r}")
  kind = cfg.get("decay_mask", "ndim>=2")
  table, groups = key_table(model), ([], [])
  for name, p in model.named_parameters():
    decay = kind == "all" or (kind == "ndim>=2" and min(len(s) for _, s in table[name][0]) >= 2)
    groups[decay].append(p)
  opt = torch.optim.AdamW(
      [{"params": groups[0], "weight_decay": 0.0},
       {"params": groups[1], "weight_decay": cfg.weight_decay}],
      lr=cfg.lr, betas=(cfg.get("b1", 0.9), cfg.get("b2", 0.999)), eps=cfg.get("eps", 1e-8),
      fused=True)
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda step: lr_at(cfg, total_steps, step) / cfg.lr)
  return opt, sched


def make_train_step(model: VideoDiffusion, config, compile: bool = False):
  """``step(video [B,T,H,W,3], ids [B,L], mask [B,L]) -> loss`` (a float tensor).

  Condition dropout, sigma (``config.diffusion.time_sampling``) and the noise are drawn eagerly
  with torch's RNG; ``flow_loss`` (forward, and the backward through AOTAutograd) is
  ``torch.compile``d when ``compile``; clipping and the fused AdamW step are eager. No EMA:
  ``tools/bench.py`` times the JAX step without one.
  """
  dc = config.diffusion
  sampling = dc.get("time_sampling", "uniform")
  if dc.objective != "flow" or sampling not in ("uniform", "logit_normal"):
    raise ValueError(f"torch_dit implements objective='flow' with uniform or logit_normal "
                     f"sigma only, config has {dc.objective!r}, {sampling!r}")
  opt, sched = make_optimizer(model, config.optimizer, config.total_steps)
  loss_fn = torch.compile(flow_loss) if compile else flow_loss  # text encoder + DiT + loss
  params, clip = list(model.parameters()), config.optimizer.clip_norm

  def step(video, ids, mask):
    b = video.shape[0]
    drop = torch.rand(b) < dc.cond_dropout
    ids = torch.where(drop[:, None], model.null_ids, ids)
    mask = torch.where(drop[:, None], model.null_mask, mask)
    sigma = torch.rand(b) if sampling == "uniform" else torch.sigmoid(torch.randn(b))
    loss = loss_fn(model, video, torch.randn_like(video), sigma, ids, mask,
                   dc.num_train_timesteps)
    loss.backward()
    apply_update(params, opt, sched, clip)
    return loss.detach()

  return step


def apply_update(params: list[torch.Tensor], opt, sched, clip_norm: float) -> None:
  """Global-norm clipping (``clip_norm`` > 0), the AdamW step, the schedule step, zero grads."""
  if clip_norm and clip_norm > 0:
    torch.nn.utils.clip_grad_norm_(params, clip_norm, foreach=True)
  opt.step()
  sched.step()
  opt.zero_grad(set_to_none=True)


def synthetic_batch(model: VideoDiffusion, config, seed: int = 0):
  """Random video [B, T, H, W, 3] in [-1, 1] and captions of 40..335 bytes (as the world's)."""
  d, b = config.data, config.batch_size
  rng = np.random.default_rng(seed)
  video = rng.uniform(-1, 1, (b, d.num_frames, d.resolution, d.resolution, 3))
  texts = ["".join(rng.choice(list("abcdefgh ij"), rng.integers(40, 336))) for _ in range(b)]
  ids, mask = model.tokenizer.encode(texts)
  return (torch.from_numpy(video.astype(np.float32)), torch.from_numpy(ids).long(),
          torch.from_numpy(mask))


def time_train_step(config, steps: int = 20, warmup: int = 3, compile: bool = False,
                    params: Any = None, seed: int = 0) -> list[float]:
  """Seconds per train step (``steps`` of them) at the config's shapes, after ``warmup`` steps.

  With ``compile`` the first warm-up step compiles (excluded from the times); a compiler
  failure is re-raised as a RuntimeError that says so. ``params``: an optional JAX tree to load.
  """
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(seed)
  if config.model.get("dtype", "float32") != "float32":  # the JAX side may run bfloat16
    print(f"torch_dit: runs float32 (config dtype {config.model.dtype!r})")
  model = VideoDiffusion(config)
  model = model if params is None else load_jax_params(model, params)
  step = make_train_step(model, config, compile=compile)
  batch = synthetic_batch(model, config, seed)
  try:
    for _ in range(max(warmup, 1 if compile else 0)):
      step(*batch)
  except Exception as e:  # pylint: disable=broad-except
    if compile:
      raise RuntimeError(f"torch.compile failed on this machine ({type(e).__name__}: {e}); "
                         "the eager timings above stand alone") from e
    raise
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    step(*batch)
    times.append(time.perf_counter() - t)
  return times

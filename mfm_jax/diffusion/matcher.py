"""Diffusion as a matcher (Discffusion, He et al., TMLR 2024): an image / video - text score read
from the cross-attention of a text-conditioned denoiser, and the hinge loss that trains it.

The score of a video ``x0`` and a caption ``c`` (token mask ``m``), exactly as computed here:

  1. a fixed noise bank of K entries ``(t_k, eps_k)`` (:func:`noise_bank`): model timesteps at the
     midpoints of K equal bins of the noise-level range ``[lo, hi]`` (a fraction of the schedule:
     sigma for ``flow``, the DDPM step index / (N - 1) otherwise) and one standard-normal noise per
     entry, drawn once from a seed and shared by every video and every caption, so candidates are
     compared under the same noise;
  2. ``x_k = add_noise(x0, eps_k, t_k)`` (``objectives.add_noise``); one denoiser forward pass
     ``model(x_k, t_k | c)`` with the ``attn_logits`` collection mutable;
  3. the sown cross-attention logits ``A[l, n, q, j]`` (layer l, head n, video token q, text
     token j; scaled by 1/sqrt(head dim), before the softmax) give per layer
     ``s_l = mean_{n, q} LSE_{j: m_j} A[l, n, q, j]`` -- the log of the softmax denominator over
     the caption's real tokens (padding excluded by ``m``; BOS / EOS count as tokens);
  4. ``score(x0, c) = mean_k mean_l s_l`` (layers: every cross-attention, or a chosen subset).

Higher is a better match. Matching ranks the C candidate captions of a video by this score;
:func:`candidate_scores` runs the ``B * C`` (video, caption) pairs in video-major order and
returns ``[K, B, C, Ly]`` so that per-timestep and per-layer accuracies can be read off.

Training (:func:`hinge_loss`): ``max(0, margin - s(x, c+) + max_{c-} s(x, c-))`` over the valid
negatives (the hardest one). All functions are pure and jittable; the model enters as a
``score_fn(x_t, t) -> [P, Ly]`` built by the task (it applies the DiT and calls
:func:`layer_scores` on the sown logits).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from mfm_jax.diffusion import objectives

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


class NoiseBank(NamedTuple):
  """t: [K] float32 model timesteps; noise: [K, *shape] float32 standard normal."""
  t: jax.Array
  noise: jax.Array


def bank_levels(num: int, lo: float = 0.0, hi: float = 1.0) -> jax.Array:
  """[K] noise levels in (lo, hi): the midpoints of K equal bins."""
  if num < 1:
    raise ValueError(f"noise bank size must be >= 1, got {num}")
  if not 0.0 <= lo < hi <= 1.0:
    raise ValueError(f"noise bank range must satisfy 0 <= lo < hi <= 1, got ({lo}, {hi})")
  return lo + (hi - lo) * (jnp.arange(num, dtype=jnp.float32) + 0.5) / num


def noise_bank(seed: int, num: int, shape: Sequence[int], objective: str, *,
               lo: float = 0.0, hi: float = 1.0, num_train_timesteps: int = 1000) -> NoiseBank:
  """The fixed bank: K timesteps (see the module docstring) and K noises of ``shape``.

  Args:
    seed: the noises are ``normal(key(seed), [K, *shape])``.
    num: K.
    shape: one video's shape, e.g. (T, H, W, C).
    objective: ``flow`` (t = sigma * N) or a DDPM objective (t = round(level * (N - 1))).
    lo, hi: the noise-level range.
    num_train_timesteps: N.
  """
  objectives._check_objective(objective)  # pylint: disable=protected-access
  levels = bank_levels(num, lo, hi)
  if objective == "flow":
    t = levels * num_train_timesteps
  else:
    t = jnp.round(levels * (num_train_timesteps - 1))
  noise = jax.random.normal(jax.random.key(seed), (num, *shape), jnp.float32)
  return NoiseBank(t.astype(jnp.float32), noise)


def cross_logits(collection: Mapping[str, Any], name: str = "cross_attn") -> jax.Array:
  """Stacks the sown logits of every attention module called ``name``.

  Args:
    collection: the ``attn_logits`` collection of an ``apply(..., mutable=["attn_logits"])``:
      ``{"block_i": {name: {"logits": ([B, N, Lq, Lk],)}}}`` or, with scanned blocks,
      ``{"blocks": {name: {"logits": ([D, B, N, Lq, Lk],)}}}``.
    name: the module name (self-attention logits are skipped).

  Returns:
    [Ly, B, N, Lq, Lk] in block order.
  """
  found = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(collection):
    keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
    if name in keys:
      found.append((keys, leaf))
  if not found:
    raise ValueError(f"no sown '{name}' logits in the attn_logits collection (keys "
                     f"{sorted(collection)}); was the collection mutable, with cross-attention?")

  def order(item):
    top = item[0][0]
    return int(top.rsplit("_", 1)[1]) if top.startswith("block_") else -1

  found.sort(key=order)
  parts = [leaf if leaf.ndim == 5 else leaf[None] for _, leaf in found]
  return jnp.concatenate(parts, axis=0)


def layer_scores(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Per-layer LSE scores.

  Args:
    logits: [Ly, B, N, Lq, Lk] cross-attention logits (masked keys may hold anything).
    mask: [B, Lk] bool, True = a real text token (at least one per row).

  Returns:
    [B, Ly]: ``mean_{n, q} logsumexp_{j: mask} logits[l, b, n, q, j]``.
  """
  logits = logits.astype(jnp.float32)
  keep = mask.astype(bool)[None, :, None, None, :]
  lse = jax.nn.logsumexp(jnp.where(keep, logits, -jnp.inf), axis=-1)   # [Ly, B, N, Lq]
  return jnp.mean(lse, axis=(2, 3)).T


def candidate_scores(score_fn: ScoreFn, x0: jax.Array, num_candidates: int, bank: NoiseBank,
                     objective: str, **schedule: Any) -> jax.Array:
  """Scores of every (video, candidate caption) pair at every bank entry.

  Args:
    score_fn: ``(x_t [P, ...], t [P]) -> [P, Ly]`` with P = B * C pairs in video-major order
      (pair ``b * C + c`` is video b with its candidate c); the task binds the captions.
    x0: [B, ...] clean videos.
    num_candidates: C.
    bank: the entries to use (all, or a subset for a training step).
    objective, **schedule: as ``objectives.add_noise``.

  Returns:
    [K, B, C, Ly]; the score of the module docstring is its mean over K and Ly.
  """
  b, c = x0.shape[0], int(num_candidates)
  x = jnp.repeat(x0, c, axis=0)

  def one(entry):
    t_k, eps = entry
    t = jnp.full((b * c,), t_k, jnp.float32)
    xt = objectives.add_noise(x, jnp.broadcast_to(eps, x.shape), t, objective, **schedule)
    s = score_fn(xt, t)
    return s.reshape(b, c, s.shape[-1])

  return jax.lax.map(one, (bank.t, bank.noise))


def subset(bank: NoiseBank, index: jax.Array) -> NoiseBank:
  """The bank entries at ``index`` [k] (e.g. drawn per training step)."""
  return NoiseBank(bank.t[index], bank.noise[index])


def reduce_scores(scores: jax.Array, layers: Sequence[int] | None = None) -> jax.Array:
  """[K, B, C, Ly] -> [B, C]: the mean over bank entries and the chosen layers (None = all)."""
  if layers:
    scores = scores[..., jnp.asarray(list(layers))]
  return jnp.mean(scores, axis=(0, 3))


def hinge_loss(scores: jax.Array, valid: jax.Array | None = None,
               margin: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Hinge over the hardest negative.

  Args:
    scores: [B, C] with the positive caption in column 0.
    valid: [B, C - 1] bool, which negatives count (None = all); a row with none gives loss 0.
    margin: the wanted gap between the positive and the hardest negative.

  Returns:
    (loss [B] = max(0, margin - s_pos + max_valid s_neg), hardest negative index [B] in 1..C-1).
  """
  if scores.ndim != 2 or scores.shape[1] < 2:
    raise ValueError(f"hinge_loss: scores must be [B, C >= 2], got {scores.shape}")
  neg = scores[:, 1:]
  if valid is None:
    valid = jnp.ones(neg.shape, bool)
  neg = jnp.where(valid, neg, -jnp.inf)
  hardest = jnp.max(neg, axis=1)
  loss = jnp.where(jnp.any(valid, axis=1),
                   jax.nn.relu(margin - scores[:, 0] + hardest), 0.0)
  return loss, jnp.argmax(neg, axis=1) + 1

"""CLIP-style score of videos (or images) against captions, with the project's two-tower encoder.

  score(v, c) = 100 * max(cos(f_v, f_c), 0)

f_v: the vision tower's embedding of the video (or image), f_c the text tower's embedding of the
caption, both from a ``contrastive`` checkpoint (``configs/encoder_pretrain.py``; a ``video``
run for clips: a ``VideoViT`` over tubelets). Inputs are resampled to the encoder's frames and
resolution first (``frechet.resample_video``; an image encoder sees the middle frame). The same
encoder is the project's feature extractor for Fréchet distances (``ClipEncoder.embed_videos``).

``clip_score(a, b)`` on given embeddings [N, E] is the per-pair formula (not normalised inputs
are normalised here); ``ClipEncoder(path).score(videos, captions)`` gives the per-pair scores.
"""
from __future__ import annotations

import numpy as np

from mfm_jax.eval import frechet


def clip_score(pixel_features, text_features) -> np.ndarray:
  """[N, E], [N, E] -> [N] 100 * max(cos, 0) of each pair (rows are L2-normalised here)."""
  a = np.asarray(pixel_features, np.float64)
  b = np.asarray(text_features, np.float64)
  if a.ndim != 2 or a.shape != b.shape:
    raise ValueError(f"clip_score: need two [N, E] arrays of one shape, got {a.shape} and "
                     f"{b.shape}")
  na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
  if (na == 0).any() or (nb == 0).any():
    raise ValueError("clip_score: a feature vector is all zeros (no direction)")
  cos = np.einsum("ne,ne->n", a, b) / (na * nb)
  return 100.0 * np.maximum(cos, 0.0)


class ClipEncoder:
  """The two towers of a ``contrastive`` checkpoint (run workdir / checkpoints / step folder).

  ``embed_videos(videos [N, T, H, W, 3] float in [-1, 1]) -> [N, E]`` and
  ``embed_texts(captions) -> [N, E]`` (L2-normalised), ``score(videos, captions) -> [N]``.
  """

  def __init__(self, path: str, batch_size: int = 16):
    import jax  # pylint: disable=g-import-not-at-top
    from mfm_jax.eval import checkpoints  # pylint: disable=g-import-not-at-top
    from mfm_jax.tasks import encoders  # pylint: disable=g-import-not-at-top
    loaded = checkpoints.load(path, "contrastive")
    self.task, self.path, self.batch_size = loaded.task, loaded.path, batch_size
    self.params = loaded.params[encoders.CLIP_KEY]
    self.shape = encoders.pixel_shape(loaded.config.data)
    self.name = f"clip:{loaded.path}"
    model = self.task.model
    self._pix = jax.jit(lambda p, x: encoders.encode_pixels(model, p, x))
    self._txt = jax.jit(lambda p, i, m: encoders.encode_text(model, p, i, m))

  def _batched(self, fn, *arrays) -> np.ndarray:
    out, n, b = [], len(arrays[0]), self.batch_size
    for s in range(0, n, b):
      chunk = [a[s:s + b] for a in arrays]
      pad = b - len(chunk[0])
      if pad:
        chunk = [np.concatenate([c, np.repeat(c[-1:], pad, 0)]) for c in chunk]
      out.append(np.asarray(fn(self.params, *chunk))[:b - pad])
    return np.concatenate(out).astype(np.float64)

  def prepare(self, videos) -> np.ndarray:
    """Videos [N, T, H, W, 3] -> the encoder's pixels [N, (K,) R, R, 3] float32."""
    if len(self.shape) == 4:
      k, r = self.shape[0], self.shape[1]
      return frechet.resample_video(videos, k, r)
    v = np.asarray(videos, np.float32)
    mid = v[:, v.shape[1] // 2][:, None]
    return frechet.resample_video(mid, 1, self.shape[0])[:, 0]

  def embed_videos(self, videos) -> np.ndarray:
    return self._batched(self._pix, self.prepare(videos))

  def embed_texts(self, captions) -> np.ndarray:
    ids, mask = self.task.tokenizer.encode(list(captions))
    return self._batched(self._txt, np.asarray(ids), np.asarray(mask))

  def score(self, videos, captions) -> np.ndarray:
    """[N] CLIP-style scores of video i against caption i."""
    if len(videos) != len(captions):
      raise ValueError(f"clip score: {len(videos)} videos but {len(captions)} captions")
    return clip_score(self.embed_videos(videos), self.embed_texts(captions))

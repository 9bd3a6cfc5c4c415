"""Decoder heads of a rasterised feature field (MorphoSim's per-Gaussian features).

Each Gaussian carries a feature f [F] that the rasteriser composites like colour into a feature
image [H, W, F]; `FeatureHeads` decodes it per pixel with one small MLP per teacher:
  instance: logits over instance ids [..., num_ids] (trained with cross-entropy on the world);
  text: an embedding [..., text_dim] (trained towards the teacher's embedding of the object's
    description: cosine distance).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn

Array = Any


class FeatureHeads(nn.Module):
  """Per-pixel heads over rasterised features.

  Attributes:
    num_ids: instance classes (0 = background); 0 disables the head.
    text_dim: teacher embedding width; 0 disables the head.
    hidden: hidden width of each head.
  """
  num_ids: int = 8
  text_dim: int = 64
  hidden: int = 64

  @nn.compact
  def __call__(self, feats: Array) -> dict:
    """feats [..., F] -> dict(instance [..., num_ids], text [..., text_dim]) (enabled heads)."""
    out = {}
    for name, width in (("instance", self.num_ids), ("text", self.text_dim)):
      if width:
        h = nn.relu(nn.Dense(self.hidden, name=f"{name}_hidden")(feats))
        out[name] = nn.Dense(width, name=f"{name}_out")(h)
    return out

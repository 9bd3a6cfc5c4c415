"""What the encoder tasks (``contrastive``, ``classify``) share: the two-tower model from
``config.model``, the tokenizer and the batch's pixel field.

``config.model`` (:func:`default_model_config`)::

  vision: width, depth, num_heads, mlp_dim, patch, pooling (cls | mean), pre_norm,
          attention (joint | factorized; videos), temporal_depth, tubelet_t (videos)
  text:   width, depth, num_heads, mlp_dim
  embed_dim, loss (clip | siglip), activation, scan_blocks, remat_policy, dtype
  hf:     "" or a transformers ``CLIPModel.save_pretrained`` folder: the architecture (sizes,
          activations, projections) comes from its config.json instead, so a checkpoint written by
          ``tools/convert_checkpoint.py --under clip`` restores through ``config.init_from``.

The task's params keep the CLIP params under ``"clip"`` (the layout ``--under clip`` writes).
With ``data.num_frames > 1`` the vision tower is a ``VideoViT`` (tubelets ``(tubelet_t, p, p)``).
"""
from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import ml_collections

from mfm_jax.data import image_text
from mfm_jax.data import tokenizer as tokenizer_lib
from mfm_jax.models import clip as clip_lib
from mfm_jax.models import peft as peft_lib
from mfm_jax.models.vit import ViT, VideoViT

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CLIP_KEY = "clip"


def default_model_config() -> ml_collections.ConfigDict:
  """A small two-tower model that trains on 2 CPU cores in minutes (32 x 32 world frames)."""
  return ml_collections.ConfigDict(dict(
      vision=dict(width=128, depth=4, num_heads=4, mlp_dim=512, patch=8, pooling="cls",
                  pre_norm=True, attention="joint", temporal_depth=2, tubelet_t=2),
      text=dict(width=64, depth=2, num_heads=4, mlp_dim=256),
      embed_dim=64, loss="clip", activation="gelu_tanh", scan_blocks=False,
      remat_policy="none", dtype="float32", hf=""))


def pixel_key(data_config) -> str:
  return "image" if int(data_config.num_frames) == 1 else "video"


def pixel_shape(data_config) -> tuple[int, ...]:
  """Shape of one example's pixels: [R, R, 3] or [K, R, R, 3]."""
  r = int(data_config.resolution)
  return (r, r, 3) if pixel_key(data_config) == "image" else (int(data_config.num_frames), r, r, 3)


def make_tokenizer(data_config):
  return image_text.make_tokenizer(data_config)


def text_pooling(tokenizer) -> tuple[str, int]:
  """(CLIPText pooling, eos id): HF's end-of-text rule for CLIP BPE, else the last real token."""
  if isinstance(tokenizer, tokenizer_lib.CLIPTokenizer):
    return "eot", int(tokenizer.eos_id)
  return "last", int(tokenizer.eos_id)


def build_clip(config: ml_collections.ConfigDict, tokenizer,
               vision_peft: peft_lib.PeftConfig | None = None) -> clip_lib.CLIP:
  """The CLIP module of ``config.model`` (or of ``config.model.hf``) for ``config.data``.

  ``vision_peft``: adapters in the vision tower's attentions (None: none).
  """
  m, d = config.model, config.data
  dtype = DTYPES[m.dtype]
  pooling, eos = text_pooling(tokenizer)
  video = pixel_key(d) == "video"
  if m.hf:
    from mfm_jax.convert import hf_clip  # pylint: disable=g-import-not-at-top
    hf = hf_clip.model_from_config(hf_clip.read_config(m.hf), scan_blocks=m.scan_blocks,
                                   remat_policy=m.remat_policy, dtype=dtype)
    if video:
      raise ValueError("config.model.hf: HF CLIP towers are image towers (data.num_frames=1)")
    if tokenizer.vocab_size > hf.text.vocab_size or d.max_text_len > hf.text.max_len:
      raise ValueError(f"config.model.hf: the tokenizer ({tokenizer.vocab_size} ids, length "
                       f"{d.max_text_len}) exceeds the HF text tower ({hf.text.vocab_size}, "
                       f"{hf.text.max_len})")
    return clip_lib.CLIP(hf.vision.clone(peft=vision_peft), hf.text.clone(pooling=pooling),
                         embed_dim=hf.embed_dim,
                         logit_scale_init=hf.logit_scale_init, dtype=dtype)
  v, t = m.vision, m.text
  common = dict(activation=m.activation, scan_blocks=m.scan_blocks,
                remat_policy=m.remat_policy, dtype=dtype)
  vkw = dict(width=v.width, depth=v.depth, num_heads=v.num_heads, mlp_dim=v.mlp_dim,
             image_size=d.resolution, pooling=v.pooling, pre_norm=v.pre_norm, peft=vision_peft,
             **common)
  if video:
    vision = VideoViT(tubelet=(v.tubelet_t, v.patch, v.patch), num_frames=d.num_frames,
                      attention=v.attention, temporal_depth=v.temporal_depth, **vkw)
  else:
    vision = ViT(patch_size=v.patch, **vkw)
  vocab = -(-tokenizer.vocab_size // 64) * 64   # padded: the table shards and survives new words
  text = clip_lib.CLIPText(vocab_size=vocab, width=t.width, depth=t.depth,
                           num_heads=t.num_heads, mlp_dim=t.mlp_dim, max_len=d.max_text_len,
                           eos_token_id=eos, pooling=pooling, **common)
  siglip = m.loss == "siglip"
  if m.loss not in ("clip", "siglip"):
    raise ValueError(f"config.model.loss={m.loss!r}: use clip or siglip")
  return clip_lib.CLIP(vision, text, embed_dim=m.embed_dim,
                       logit_scale_init=math.log(10.0) if siglip else math.log(1 / 0.07),
                       logit_bias_init=-10.0 if siglip else None, dtype=dtype)


def init_clip(model: clip_lib.CLIP, config, rng) -> Any:
  """Boxed CLIP params for one dummy example of ``config.data``."""
  d = config.data
  pixels = jnp.zeros((1,) + pixel_shape(d), jnp.float32)
  ids = jnp.zeros((1, d.max_text_len), jnp.int32)
  return model.init(rng, pixels, ids, jnp.ones(ids.shape, bool))["params"]


def encode_text(model, clip_params, ids, mask):
  """[B, L] ids -> [B, E] L2-normalised text embeddings."""
  return clip_lib.l2_normalize(model.apply({"params": clip_params}, ids, mask,
                                           method=model.encode_text))


def encode_pixels(model, clip_params, pixels, rngs=None):
  """[B, (K,) R, R, 3] -> [B, E] L2-normalised image / clip embeddings."""
  return clip_lib.l2_normalize(model.apply({"params": clip_params}, pixels,
                                           method=model.encode_image, rngs=rngs or {}))


def dtype_of(config) -> Any:
  return DTYPES[config.model.dtype]

"""Text teachers for language edits of a fitted 4D scene: a query phrase -> embedding(s) in the
space the fit's text head was trained towards.

The fit (`tasks/fit4d.py`) trains its text head towards ``teacher(description of the pixel's
instance)``, with ``model.text_teacher``:

  "random"           a fixed random unit vector per description (CRC32-seeded; offline);
  "module:function"  any function mapping a list of descriptions to [n, D], e.g.
                     ``mfm_jax.world4d.teachers:clip_from_env`` (the project's CLIP text tower,
                     checkpoint folder from the environment variable MFM_CLIP_CHECKPOINT).

A query must be embedded by the *same* teacher, or cosine similarities mean nothing. Two query
teachers, both behind ``QueryTeacher.embed(target) -> (embeddings [Q, D], description ids)``:

  WorldTeacher  (default; deterministic) resolves the query's attributes (`commands.Target`)
                against the clip's object descriptions ("large purple matte sphere": a target
                matches when every attribute it names equals the description's) and returns the
                fit's own teacher embedding of each matching description, i.e. exactly the
                vectors the fit used as feature targets. Works for any teacher, including
                "random", whose vectors carry no meaning outside the table. A singular target
                that matches several objects, or none, is an error listing the descriptions.
  ClipQueryTeacher  embeds the query text itself with the CLIP text tower (any phrasing, no
                vocabulary), for fits trained with a CLIP teacher; refuses a fit whose teacher
                is not CLIP (different spaces).

Both take ``negatives`` (phrases, e.g. ("background",)), embedded by the same teacher; selection
then scores by relevancy against them (`edits.relevancy`) instead of plain cosine. Needed for
the world CLIP's text tower, whose space is anisotropic (cosine 0.6-0.8 between "background"
and the object descriptions: a cosine threshold of 0.5 selects every Gaussian).
"""
from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np

from mfm_jax.world4d import commands

Embed = Callable[[Sequence[str]], np.ndarray]
NON_OBJECTS = ("background", "nothing")
CLIP_ENV = "MFM_CLIP_CHECKPOINT"


def description_attributes(description: str) -> dict[str, str]:
  """Canonical attributes of a world description ('large purple matte sphere')."""
  return dict(commands.parse_target(description).attributes)


def match(target: commands.Target, descriptions: Sequence[str]) -> list[int]:
  """Ids (indices into descriptions) of the objects the target names (module docstring)."""
  out = []
  for i, d in enumerate(descriptions):
    if d in NON_OBJECTS:
      continue
    attrs = description_attributes(d)
    if all(attrs.get(k) == v for k, v in target.attributes.items()):
      out.append(i)
  return out


def _negatives(embed: Embed, negatives: Sequence[str]) -> np.ndarray | None:
  """[K, D] embeddings of the negative phrases (None when there are none)."""
  negatives = [str(n) for n in negatives if str(n).strip()]
  return np.asarray(embed(negatives), np.float32) if negatives else None


class WorldTeacher:
  """Deterministic query teacher: the fit's teacher embedding of the matching descriptions.
  ``negatives`` (phrases, e.g. ("background",)): `apply.select` then scores by relevancy
  against them (`edits.relevancy`) instead of plain cosine."""

  def __init__(self, descriptions: Sequence[str], embed: Embed, negatives: Sequence[str] = ()):
    self.descriptions = list(descriptions)
    self.table = np.asarray(embed(self.descriptions), np.float32)   # [num_ids, D]
    self.negatives = _negatives(embed, negatives)

  def embed(self, target: commands.Target) -> tuple[np.ndarray, list[int]]:
    ids = match(target, self.descriptions)
    objects = [d for d in self.descriptions if d not in NON_OBJECTS]
    if not ids:
      raise ValueError(f"no object of the scene matches {target.text!r}; the scene has "
                       f"{objects}")
    if len(ids) > 1 and not target.plural:
      raise ValueError(f"{target.text!r} is ambiguous: it matches "
                       f"{[self.descriptions[i] for i in ids]}; name one (or say 'all ...')")
    return self.table[ids], ids


class ClipQueryTeacher:
  """Embeds the query phrase with a CLIP text tower (``embed`` maps texts to [n, D]);
  ``negatives`` as for WorldTeacher. The description ids it returns (by attribute match) only
  label the measurements; the selection uses the embedding alone."""

  def __init__(self, embed: Embed, descriptions: Sequence[str] = (),
               negatives: Sequence[str] = ()):
    self.fn = embed
    self.descriptions = list(descriptions)
    self.negatives = _negatives(embed, negatives)

  def embed(self, target: commands.Target) -> tuple[np.ndarray, list[int]]:
    ids = match(target, self.descriptions) if self.descriptions else []
    return np.asarray(self.fn([target.text]), np.float32), ids


def _tuples(x):
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config.json a training run wrote into its workdir (lists as tuples)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir}: no config.json (not a training workdir?)")
  with open(path) as f:
    return ml_collections.ConfigDict(_tuples(json.load(f)))


def clip_text_embedder(workdir: str) -> Embed:
  """The text tower of a contrastive run (``tasks/contrastive``; its workdir) as texts -> [n, E]
  L2-normalised embeddings (the newest checkpoint's params under ``clip``)."""
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from mfm_jax.engine import checkpoint  # pylint: disable=g-import-not-at-top
  from mfm_jax.tasks import encoders  # pylint: disable=g-import-not-at-top
  config = read_config(workdir)
  tok = encoders.make_tokenizer(config.data)
  model = encoders.build_clip(config, tok)
  _, state = checkpoint.read_latest_state(os.path.join(workdir, "checkpoints"))
  params = nn.meta.unbox(state["params"])
  params = params.get(encoders.CLIP_KEY, params)
  return embedder_from_model(model, params, tok)


def embedder_from_model(model, clip_params, tokenizer) -> Embed:
  """texts -> [n, E] with a CLIP module, its params and the tokenizer it was trained with
  (``tokenizer.encode(texts) -> (ids [n, L], mask [n, L])``)."""
  from mfm_jax.tasks import encoders  # pylint: disable=g-import-not-at-top
  fn = jax.jit(lambda p, ids, mask: encoders.encode_text(model, p, ids, mask))

  def embed(texts: Sequence[str]) -> np.ndarray:
    ids, mask = tokenizer.encode(list(texts))
    return np.asarray(fn(clip_params, ids, mask), np.float32)
  return embed


def clip_from_env(descriptions: Sequence[str]) -> np.ndarray:
  """A fit4d teacher (``model.text_teacher='mfm_jax.world4d.teachers:clip_from_env'``): the CLIP
  text tower of the contrastive run in $MFM_CLIP_CHECKPOINT; ``model.text_dim`` must equal its
  embed_dim."""
  path = os.environ.get(CLIP_ENV)
  if not path:
    raise ValueError(f"text_teacher clip_from_env: set {CLIP_ENV} to a contrastive run's workdir")
  return clip_text_embedder(path)(list(descriptions))


def query_teacher(fit_config, descriptions: Sequence[str], clip_checkpoint: str | None = None,
                  negatives: Sequence[str] = ()):
  """The query teacher for a fit (module docstring): CLIP when ``clip_checkpoint`` is given (the
  fit must have a CLIP teacher), else the WorldTeacher over the fit's own teacher; with
  ``negatives``, selection by relevancy against those phrases."""
  from mfm_jax.tasks import fit4d  # pylint: disable=g-import-not-at-top
  m = fit_config.model
  if clip_checkpoint:
    if "clip" not in str(m.text_teacher):
      raise ValueError(f"--clip-checkpoint: the fit's text head was trained towards the "
                       f"{m.text_teacher!r} teacher, not CLIP; a CLIP query embedding lives in "
                       f"another space (refit with text_teacher="
                       f"'mfm_jax.world4d.teachers:clip_from_env', or drop the checkpoint)")
    return ClipQueryTeacher(clip_text_embedder(clip_checkpoint), descriptions, negatives)
  return WorldTeacher(descriptions, fit4d.make_text_teacher(m.text_teacher, int(m.text_dim)),
                      negatives)

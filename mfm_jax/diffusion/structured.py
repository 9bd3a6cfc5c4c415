"""Structured cross-attention values (StructureDiffusion, Feng et al., ICLR 2023), training-free.

The full prompt P and each of its noun phrases N_1..N_n are encoded *separately* by the text
encoder. Each phrase's token features are written into a copy of P's sequence at the phrase's
token positions (the paper's alignment: positions outside the phrase keep P's features), giving
n + 1 sequences aligned with P: ``W_0 = enc(P)``, ``W_i = align(enc(N_i), enc(P))``. The
denoiser's cross-attention then takes its keys from ``W_0`` and averages its values over the
sequences, ``O = softmax(Q K(W_0)^T) * mean_i V(W_i)`` (``VideoDiT(text_values=...)``), so
each attribute word carries the features it has in its own phrase, not those mixed in by the
rest of the prompt.

Two steps, both pure:

* :func:`plan` (host, NumPy): captions + an extractor (``data/noun_phrases.py``) -> the phrase
  ids to encode and, for every (caption, sequence, position), which phrase token fills it;
* :func:`text_values` (jittable): ``encode_fn`` + the plan -> ``[B, S, Lt, Dt]``.

Captions have different numbers of phrases; a plan has ``S = 1 + max_b n_b`` sequences and fills
caption b's unused slots with copies of ``W_0``, so the DiT's uniform mean over S weighs the full
prompt more there. For the paper's exact weights run captions with equal ``counts`` together
(:func:`group_by_count`) and keep the first ``count`` sequences.

Token positions: ``WordTokenizer`` id ``1 + w`` is word w; ``ByteTokenizer`` id ``1 + o`` is byte
o of the UTF-8 caption. The text encoder must keep one token per id (``TextEncoder.patch == 1``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mfm_jax.data import tokenizer as tokenizer_lib

EncodeFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def _word_bytes(caption: str) -> list[tuple[int, int]]:
  """[start, end) byte offsets in the UTF-8 caption of each ``split_words`` word."""
  low = caption.lower()
  if len(low) != len(caption):
    raise ValueError(f"caption changes length when lower-cased: {caption!r}")
  return [(len(caption[:m.start()].encode()), len(caption[:m.end()].encode()))
          for m in tokenizer_lib._WORD.finditer(low)]


def phrase_tokens(tok, caption: str, span: tuple[int, int]) -> tuple[str, int, int]:
  """A word span -> (text to encode alone, first token id position in the caption, length).

  Args:
    tok: a ``WordTokenizer`` or ``ByteTokenizer``.
    caption: the full prompt.
    span: [start, end) word indices into ``split_words(caption)``.
  """
  words = tokenizer_lib.split_words(caption)
  a, b = span
  if not 0 <= a < b <= len(words):
    raise ValueError(f"phrase span {span} out of range for {len(words)} words of {caption!r}")
  if isinstance(tok, tokenizer_lib.WordTokenizer):
    return " ".join(words[a:b]), 1 + a, b - a
  if isinstance(tok, tokenizer_lib.ByteTokenizer):
    offsets = _word_bytes(caption)
    lo, hi = offsets[a][0], offsets[b - 1][1]
    return caption.encode()[lo:hi].decode(), 1 + lo, hi - lo
  raise TypeError(f"structured text values need a WordTokenizer or ByteTokenizer, got "
                  f"{type(tok).__name__} (its token positions are not mapped)")


@dataclasses.dataclass(frozen=True)
class Plan:
  """Host-side arrays of a structured batch (B captions, P phrases, S sequences, L = max_len).

  Attributes:
    ids, mask: [B, L] the full prompts, as ``tok.encode(captions)``.
    phrase_ids, phrase_mask: [P, L] the phrases, each encoded alone (P >= 1; a dummy "" row
      when no caption has a phrase).
    src_phrase: [B, S, L] int32, the phrase whose token fills (b, s, l); -1 = the full prompt's.
    src_pos: [B, S, L] int32, that token's position in the phrase's own sequence.
    counts: [B] int32, 1 + the number of phrases kept for each caption.
    phrases: per caption, the phrase texts kept.
  """
  ids: np.ndarray
  mask: np.ndarray
  phrase_ids: np.ndarray
  phrase_mask: np.ndarray
  src_phrase: np.ndarray
  src_pos: np.ndarray
  counts: np.ndarray
  phrases: list[list[str]]


def plan(tok, captions: Sequence[str], extractor, records: Sequence[dict] | None = None,
         max_phrases: int | None = None) -> Plan:
  """Phrases of each caption and where their tokens go (see :class:`Plan`).

  Args:
    tok: the task's tokenizer (``WordTokenizer`` or ``ByteTokenizer``).
    captions: B full prompts.
    extractor: ``extractor(caption, record) -> [(start, end)]`` word spans
      (``data/noun_phrases.py``).
    records: B world records for extractors that read them, or None.
    max_phrases: keep at most this many phrases per caption (the first ones); None = all.
  """
  if records is not None and len(records) != len(captions):
    raise ValueError(f"plan: {len(records)} records for {len(captions)} captions")
  ids, mask = tok.encode(list(captions))
  length = ids.shape[1]
  texts, where = [], []     # where: per caption, [(phrase index, dst, n)]
  for b, caption in enumerate(captions):
    spans = extractor(caption, None if records is None else records[b])
    if max_phrases is not None:
      spans = spans[:max_phrases]
    kept = []
    for span in spans:
      text, dst, n = phrase_tokens(tok, caption, span)
      if dst + n > length - 1 or 1 + n > length - 1:   # cut off by truncation: skip
        continue
      kept.append((len(texts), dst, n))
      texts.append(text)
    where.append(kept)
  counts = np.array([1 + len(w) for w in where], np.int32)
  s = int(counts.max()) if len(captions) else 1
  src_phrase = np.full((len(captions), s, length), -1, np.int32)
  src_pos = np.zeros((len(captions), s, length), np.int32)
  for b, kept in enumerate(where):
    for k, (p, dst, n) in enumerate(kept):
      src_phrase[b, 1 + k, dst:dst + n] = p
      src_pos[b, 1 + k, dst:dst + n] = np.arange(1, 1 + n)   # after the phrase's own BOS
  phrase_ids, phrase_mask = tok.encode(texts or [""])
  return Plan(ids=ids, mask=mask, phrase_ids=phrase_ids, phrase_mask=phrase_mask,
              src_phrase=src_phrase, src_pos=src_pos, counts=counts,
              phrases=[[texts[p] for p, _, _ in kept] for kept in where])


def text_values(encode_fn: EncodeFn, ids, mask, phrase_ids, phrase_mask, src_phrase,
                src_pos) -> jax.Array:
  """The aligned value sequences ``[B, S, Lt, Dt]`` (sequence 0 = the full prompt's tokens).

  Args:
    encode_fn: ``(ids [N, L], mask [N, L]) -> (tokens [N, L, Dt], pooled)``, e.g.
      ``functools.partial(task.encode_text, params)``.
    ids, mask: [B, L]; phrase_ids, phrase_mask: [P, L]; src_phrase, src_pos: [B, S, L]
      (the fields of a :class:`Plan`).
  """
  full, _ = encode_fn(jnp.asarray(ids), jnp.asarray(mask))
  parts, _ = encode_fn(jnp.asarray(phrase_ids), jnp.asarray(phrase_mask))
  if full.shape[1] != ids.shape[1]:
    raise ValueError(f"text_values: the encoder maps {ids.shape[1]} ids to {full.shape[1]} "
                     "tokens; structured values need one token per id (text patch = 1)")
  src_phrase, src_pos = jnp.asarray(src_phrase), jnp.asarray(src_pos)
  picked = parts[jnp.maximum(src_phrase, 0), src_pos]             # [B, S, L, Dt]
  return jnp.where((src_phrase >= 0)[..., None], picked, full[:, None])


def plan_values(encode_fn: EncodeFn, p: Plan) -> jax.Array:
  """:func:`text_values` of a :class:`Plan`."""
  return text_values(encode_fn, p.ids, p.mask, p.phrase_ids, p.phrase_mask, p.src_phrase,
                     p.src_pos)


def group_by_count(counts) -> dict[int, np.ndarray]:
  """count -> indices of the captions with that many sequences (for exact uniform weights)."""
  counts = np.asarray(counts)
  return {int(c): np.flatnonzero(counts == c) for c in np.unique(counts)}

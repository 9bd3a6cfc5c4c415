"""Structured cross-attention values: token alignment for word and byte tokenizers, the values
against a loop reference, and the task's sampler with values (copies of the prompt == plain)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import video_gen
from mfm_jax import tasks
from mfm_jax.data import noun_phrases as nps
from mfm_jax.data import tokenizer as tokenizer_lib
from mfm_jax.data.world import path_captions
from mfm_jax.diffusion import structured

CAPTIONS = ["a large red sphere moves from the back left to the front center; "
            "a small blue cube stays at the middle right.",
            "a small green cube stays at the front left."]
WORDS = tokenizer_lib.WordTokenizer(path_captions.vocabulary(), 40)
BYTES = tokenizer_lib.ByteTokenizer(160)


def _encode(ids, mask, dim=6):
  """A context-dependent fake encoder: each token's embedding + the mean over the sequence."""
  table = jnp.asarray(np.random.default_rng(0).normal(size=(300, dim)), jnp.float32)
  e = table[ids] * mask[..., None]
  ctx = e.sum(1, keepdims=True) / mask.sum(1)[:, None, None]
  return e + ctx, ctx[:, 0]


@pytest.mark.parametrize("tok", [WORDS, BYTES], ids=["words", "bytes"])
def test_plan_aligns_phrase_tokens_with_the_prompt(tok):
  p = structured.plan(tok, CAPTIONS, nps.ChunkParser())
  assert p.phrases[0] == ["a large red sphere", "the back left", "the front center",
                          "a small blue cube", "the middle right"]
  assert p.phrases[1] == ["a small green cube", "the front left"]
  np.testing.assert_array_equal(p.counts, [6, 3])
  assert p.src_phrase.shape == (2, 6, tok.max_len)
  assert (p.src_phrase[:, 0] == -1).all()            # sequence 0 is the full prompt
  assert (p.src_phrase[1, 3:] == -1).all()           # padding slots copy the prompt
  fill = p.src_phrase >= 0
  b, _, pos = np.nonzero(fill)
  # Every filled position holds, in the phrase's own encoding, the prompt's own id there.
  np.testing.assert_array_equal(p.ids[b, pos], p.phrase_ids[p.src_phrase[fill], p.src_pos[fill]])
  # Each phrase sequence fills exactly its phrase's tokens.
  n = p.phrase_mask.sum(1) - 2                         # without BOS / EOS
  np.testing.assert_array_equal(fill.sum(-1)[0, 1:], n[:5])


def test_text_values_match_a_loop_reference():
  p = structured.plan(WORDS, CAPTIONS, nps.ChunkParser(objects_only=True))
  vals = np.asarray(jax.jit(structured.text_values, static_argnums=0)(
      _encode, p.ids, p.mask, p.phrase_ids, p.phrase_mask, p.src_phrase, p.src_pos))
  full = np.asarray(_encode(jnp.asarray(p.ids), jnp.asarray(p.mask))[0])
  part = np.asarray(_encode(jnp.asarray(p.phrase_ids), jnp.asarray(p.phrase_mask))[0])
  assert vals.shape == (2, 3, WORDS.max_len, 6)
  ref = np.repeat(full[:, None], 3, 1)
  ref[0, 1, 1:5] = part[0, 1:5]          # "a large red sphere": words 0-3 -> tokens 1-4
  ref[0, 2, 15:19] = part[1, 1:5]        # "a small blue cube": words 14-17 (13 is ";")
  ref[1, 1, 1:5] = part[2, 1:5]
  np.testing.assert_allclose(vals, ref, atol=1e-6)
  assert not np.allclose(part[0, 1:5], full[0, 1:5])     # the alignment changes the features


def test_truncated_phrases_are_dropped_and_errors():
  short = tokenizer_lib.WordTokenizer(path_captions.vocabulary(), 13)   # words 0-10 fit
  p = structured.plan(short, CAPTIONS[:1], nps.ChunkParser())
  assert p.phrases == [["a large red sphere", "the back left"]]   # the rest is cut off
  with pytest.raises(ValueError, match="out of range"):
    structured.phrase_tokens(WORDS, "a red cube", (1, 9))
  with pytest.raises(TypeError, match="WordTokenizer or ByteTokenizer"):
    structured.phrase_tokens(object(), "a red cube", (0, 3))
  patched = lambda ids, mask: (jnp.zeros((ids.shape[0], ids.shape[1] // 4, 2)), None)
  with pytest.raises(ValueError, match="text patch = 1"):
    structured.plan_values(patched, p)
  np.testing.assert_array_equal(structured.group_by_count([3, 1, 3])[3], [0, 2])


def test_task_sampling_with_structured_values():
  config = video_gen.get_config("smoke")
  task = tasks.get(config.task)(config)
  abstract = jax.eval_shape(task.init, jax.random.key(0))
  rng = np.random.default_rng(0)     # random weights: the zero-initialised DiT ignores its text
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.2, s.shape), s.dtype), abstract)
  p = structured.plan(task.tokenizer, CAPTIONS, nps.ChunkParser(objects_only=True))
  ids, mask = jnp.asarray(p.ids), jnp.asarray(p.mask)
  noise = jax.random.normal(jax.random.key(1), (2,) + task.video_shape)
  plain = np.asarray(task.sample(params, ids, mask, noise))
  encode = lambda i, m: task.encode_text(params, i, m)
  full = encode(ids, mask)[0]
  copies = np.asarray(task.sample(params, ids, mask, noise, text_values=jnp.stack([full] * 3, 1)))
  np.testing.assert_allclose(copies, plain, atol=2e-5)
  values = structured.plan_values(encode, p)
  got = np.asarray(task.sample(params, ids, mask, noise, text_values=values))
  assert got.shape == plain.shape and np.isfinite(got).all()
  assert np.abs(got - plain).max() > 1e-3

"""ByteTokenizer: ids, padding, truncation, the empty prompt, decoding."""
import numpy as np
import pytest

from mfm_jax.data import tokenizer as tok_lib


def test_round_trip_and_layout():
  tok = tok_lib.ByteTokenizer(16)
  assert tok.vocab_size == 259
  ids, mask = tok.encode(["ab", "héllo"])
  assert ids.shape == (2, 16) and ids.dtype == np.int32
  assert mask.dtype == np.bool_
  np.testing.assert_array_equal(
      ids[0, :5], [tok_lib.BOS, ord("a") + 3, ord("b") + 3, tok_lib.EOS,
                   tok_lib.PAD])
  np.testing.assert_array_equal(mask[0], np.arange(16) < 4)
  assert mask[1].sum() == len("héllo".encode()) + 2
  assert ids.max() < tok.vocab_size
  assert tok.decode(ids) == ["ab", "héllo"]
  assert tok.decode(ids[1]) == "héllo"


def test_single_string_is_a_batch_of_one():
  tok = tok_lib.ByteTokenizer(8)
  ids, mask = tok.encode("hi")
  assert ids.shape == (1, 8) and mask.shape == (1, 8)
  np.testing.assert_array_equal(ids[0], tok.encode_one("hi"))


def test_empty_caption_is_bos_eos():
  tok = tok_lib.ByteTokenizer(6)
  ids, mask = tok.encode("")
  np.testing.assert_array_equal(ids[0], [tok_lib.BOS, tok_lib.EOS, 0, 0, 0, 0])
  np.testing.assert_array_equal(mask[0], [1, 1, 0, 0, 0, 0])
  assert tok.decode(ids[0]) == ""


def test_truncation_keeps_eos():
  tok = tok_lib.ByteTokenizer(5)
  ids, mask = tok.encode("abcdefgh")
  np.testing.assert_array_equal(ids[0], [tok_lib.BOS, 100, 101, 102,
                                         tok_lib.EOS])
  assert mask.all()
  assert tok.decode(ids[0]) == "abc"
  # A cut inside a multi-byte character still decodes.
  ids, _ = tok_lib.ByteTokenizer(4).encode("éé")
  assert tok.decode(ids[0]) == "é"


def test_errors():
  with pytest.raises(ValueError, match="max_len"):
    tok_lib.ByteTokenizer(1)
  with pytest.raises(TypeError, match="expected str"):
    tok_lib.ByteTokenizer(8).encode([b"bytes"])
  with pytest.raises(ValueError, match="shape"):
    tok_lib.ByteTokenizer(8).decode(np.zeros((1, 2, 3), np.int32))


def test_word_tokenizer_round_trip_unknown_and_truncation():
  from mfm_jax.data import tokenizer as tl
  tok = tl.WordTokenizer.from_texts(["a red cube moves up-right.", "a blue sphere"], max_len=8)
  assert tok.vocab == sorted(set(tok.vocab)) and "up" in tok.vocab and "-" in tok.vocab
  assert tok.vocab_size == len(tok.vocab) + 4
  ids, mask = tok.encode(["A red cube moves up-right.", "a green sphere", ""])
  assert ids.shape == (3, 8) and ids.dtype == np.int32
  assert tok.decode(ids[0]) == "a red cube moves up -"      # 6 of 8 words: truncated, EOS kept
  assert ids[0, -1] == tl.EOS and mask[0].all()
  assert tok.decode(ids[1]) == "a <unk> sphere" and ids[1, 2] == tl.UNK
  np.testing.assert_array_equal(ids[2][:3], [tl.BOS, tl.EOS, tl.PAD])
  assert mask[2].sum() == 2
  with pytest.raises(ValueError, match="duplicate"):
    tl.WordTokenizer(["a", "a"], 4)


def test_pipeline_word_tokenizer_vocabulary_is_the_train_captions(tmp_path):
  from mfm_jax.data import pipeline
  cfg = pipeline.default_data_config()
  cfg.data_dir = str(tmp_path)
  cfg.tokenizer, cfg.max_text_len = "words", 80
  tok = pipeline.make_tokenizer(cfg)
  ex = pipeline.load_examples(cfg, "validation", 4)
  for e in ex:
    assert tl_words(e["caption"]) == tok.decode(e["text_ids"])
  cfg.tokenizer = "letters"
  with pytest.raises(ValueError, match="letters"):
    pipeline.make_tokenizer(cfg)


def tl_words(text):
  from mfm_jax.data import tokenizer as tl
  return " ".join(tl.split_words(text))

"""mfm_jax.data.tokenizer.CLIPTokenizer == transformers' CLIPTokenizer on a tiny vocab / merges
written here (byte-level alphabet with ``</w>`` word ends, a few merges, the two specials)."""
import json
import os

import numpy as np
import pytest
import transformers

from mfm_jax.data.tokenizer import CLIPTokenizer

MERGES = ["t h", "th e</w>", "c a", "ca t</w>", "r e", "e d</w>", "r ed</w>", "o g</w>",
          "d og</w>", "p h", "ph o", "pho t", "phot o</w>", "o f</w>", "i n",
          "in g</w>"]
TEXTS = ["A photo of the cat.", "the   DOG's red-dog 42 café!!", "", "cat " * 40,
         "<|endoftext|> the\tthing", "Ünïcode ☃ naïve"]


def _byte_alphabet():
  """GPT-2 / CLIP bytes_to_unicode: 256 printable stand-ins for the bytes."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1)))
  cs, n = bs[:], 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return [chr(c) for c in cs]


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("clip_bpe"))
  chars = _byte_alphabet()
  tokens = (chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in MERGES]
            + ["<|startoftext|>", "<|endoftext|>"])
  with open(os.path.join(path, "vocab.json"), "w") as f:
    json.dump({t: i for i, t in enumerate(tokens)}, f)
  with open(os.path.join(path, "merges.txt"), "w") as f:
    f.write("#version: 0.2\n" + "\n".join(MERGES) + "\n")
  return path


@pytest.mark.parametrize("max_len", [16, 77])
def test_matches_transformers(vocab_dir, max_len):
  ours = CLIPTokenizer.from_dir(vocab_dir, max_len=max_len)
  ids, mask = ours.encode(TEXTS)
  hf = transformers.CLIPTokenizer.from_pretrained(vocab_dir)
  ref = hf(TEXTS, padding="max_length", max_length=max_len, truncation=True, return_tensors="np")
  assert ids.shape == mask.shape == (len(TEXTS), max_len)
  assert ids.dtype == np.int32 and mask.dtype == bool
  np.testing.assert_array_equal(ids, ref["input_ids"])
  np.testing.assert_array_equal(mask, ref["attention_mask"].astype(bool))
  assert ours.decode(ids[:2]) == hf.batch_decode(ref["input_ids"][:2], skip_special_tokens=True)
  assert ours.eos_id == ours.pad_id == hf.eos_token_id and ours.bos_id == hf.bos_token_id


def test_specials_truncation_and_errors(vocab_dir):
  tok = CLIPTokenizer.from_dir(vocab_dir, max_len=8)
  ids, mask = tok.encode("cat " * 20)  # a str is a batch of one; truncation keeps the EOS
  assert ids.shape == (1, 8) and mask.all()
  assert ids[0, 0] == tok.bos_id and ids[0, -1] == tok.eos_id
  ids, mask = tok.encode([""])
  assert list(ids[0, :2]) == [tok.bos_id, tok.eos_id] and mask[0].sum() == 2
  assert tok.encode([])[0].shape == (0, 8)
  assert tok.decode(tok.encode("The cat")[0][0]) == "the cat"
  with pytest.raises(TypeError, match="expected str"):
    tok.encode([3])
  with pytest.raises(FileNotFoundError, match="merges.txt"):
    CLIPTokenizer(os.path.join(vocab_dir, "vocab.json"), os.path.join(vocab_dir, "merges.txt.x"))

"""Tokenizers: byte-level (any text), word-level (a closed vocabulary, e.g. the world's) and CLIP
BPE (pretrained CLIP text towers).

Byte-level tokenizer: UTF-8 bytes plus pad / bos / eos.

Ids: PAD = 0, BOS = 1, EOS = 2, byte b -> b + 3, so vocab_size = 259.
A caption becomes [BOS, bytes..., EOS, PAD...] of fixed length `max_len`;
longer captions are truncated, keeping the EOS. The empty caption "" encodes
to [BOS, EOS, PAD...]: the unconditional prompt of classifier-free guidance.

Written by hand (20 lines): the world's captions are ASCII and a byte
vocabulary needs no trained merges, so the `tokenizers` library would add a
dependency and a vocabulary file for nothing. CLIP's BPE, which does need trained
merges, runs on the `tokenizers` library (:class:`CLIPTokenizer`).
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

PAD, BOS, EOS = 0, 1, 2
_OFFSET = 3


class ByteTokenizer:
  """UTF-8 byte tokenizer with fixed-length, padded output."""

  pad_id = PAD
  bos_id = BOS
  eos_id = EOS
  vocab_size = 256 + _OFFSET

  def __init__(self, max_len: int):
    if max_len < 2:
      raise ValueError(f"{type(self).__name__}: max_len must be >= 2 (BOS and EOS), "
                       f"got {max_len}")
    self.max_len = int(max_len)

  def encode_one(self, text: str) -> np.ndarray:
    """One string -> ids [L] int32 (L = max_len)."""
    if not isinstance(text, str):
      raise TypeError(f"ByteTokenizer.encode: expected str, got "
                      f"{type(text).__name__}: {text!r}")
    body = np.frombuffer(text.encode("utf-8"), np.uint8)[:self.max_len - 2]
    ids = np.full(self.max_len, PAD, np.int32)
    ids[0] = BOS
    ids[1:1 + len(body)] = body.astype(np.int32) + _OFFSET
    ids[1 + len(body)] = EOS
    return ids

  def encode(self, texts: str | Sequence[str]):
    """Encodes a string or a list of strings.

    Args:
      texts: a str (treated as a batch of one) or a sequence of B strs.

    Returns:
      ids: [B, L] int32 and mask: [B, L] bool (True on BOS..EOS), L = max_len.
    """
    if isinstance(texts, str):
      texts = [texts]
    ids = np.stack([self.encode_one(t) for t in texts]) if len(texts) else (
        np.zeros((0, self.max_len), np.int32))
    return ids, ids != PAD

  def decode(self, ids):
    """ids [L] -> str, or [B, L] -> list of str; special ids are dropped.

    A caption cut inside a multi-byte character decodes with U+FFFD there.
    """
    ids = np.asarray(ids)
    if ids.ndim == 2:
      return [self.decode(row) for row in ids]
    if ids.ndim != 1:
      raise ValueError(f"ByteTokenizer.decode: ids must be [L] or [B, L], "
                       f"got shape {ids.shape}")
    body = []
    for i in ids.tolist():
      if i == EOS:
        break
      if i >= _OFFSET:
        body.append(i - _OFFSET)
    return bytes(body).decode("utf-8", errors="replace")


_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
UNK = 3


def split_words(text: str) -> list[str]:
  """Lower-cased words and single punctuation marks: "Moves up-right." -> moves up - right ."""
  return _WORD.findall(text.lower())


class WordTokenizer(ByteTokenizer):
  """Word-level tokenizer over a fixed vocabulary (``ByteTokenizer``'s interface and ``encode``).

  Ids: PAD = 0, BOS = 1, EOS = 2, UNK = 3, vocabulary word i -> i + 4. For a closed-vocabulary
  source like the procedural world (44 words) it gives the text encoder words instead of bytes
  to learn, at a fifth of the sequence length. Build the vocabulary with :meth:`from_texts`.
  """

  unk_id = UNK

  def __init__(self, vocab: Sequence[str], max_len: int):
    super().__init__(max_len)
    if len(set(vocab)) != len(vocab):
      raise ValueError("WordTokenizer: the vocabulary has duplicate words")
    self.vocab = list(vocab)
    self._ids = {w: i + 4 for i, w in enumerate(self.vocab)}
    self.vocab_size = len(self.vocab) + 4

  @classmethod
  def from_texts(cls, texts: Iterable[str], max_len: int) -> "WordTokenizer":
    return cls(sorted({w for t in texts for w in split_words(t)}), max_len)

  def encode_one(self, text: str) -> np.ndarray:
    """One string -> ids [L] int32 (L = max_len); truncation keeps the EOS."""
    if not isinstance(text, str):
      raise TypeError(f"WordTokenizer.encode: expected str, got {type(text).__name__}: {text!r}")
    body = [self._ids.get(w, UNK) for w in split_words(text)][:self.max_len - 2]
    ids = np.full(self.max_len, PAD, np.int32)
    ids[0] = BOS
    ids[1:1 + len(body)] = body
    ids[1 + len(body)] = EOS
    return ids

  def decode(self, ids):
    """ids [L] -> str (words joined by spaces), or [B, L] -> list of str."""
    ids = np.asarray(ids)
    if ids.ndim == 2:
      return [self.decode(row) for row in ids]
    words = []
    for i in ids.tolist():
      if i == EOS:
        break
      if i == UNK:
        words.append("<unk>")
      elif i >= 4:
        words.append(self.vocab[i - 4])
    return " ".join(words)


# HF CLIPTokenizer's pre-tokenizer split: specials, English contractions, letter runs, single
# digits, runs of other non-space characters.
_CLIP_SPLIT = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
               r"|[^\s\p{L}\p{N}]+")


class CLIPTokenizer:
  """CLIP's byte-level BPE from local ``vocab.json`` / ``merges.txt`` (the `tokenizers` library).

  The same pipeline as transformers' ``CLIPTokenizer``: NFC, whitespace runs -> one space,
  lower case; split on ``_CLIP_SPLIT``; byte-level alphabet; BPE with ``</w>`` word ends; then
  ``[BOS] ... [EOS]`` and padding with the pad token (``<|endoftext|>``, so pad id == eos id)
  to ``max_len``; longer texts are truncated keeping the EOS. ``encode`` equals
  ``CLIPTokenizer(texts, padding="max_length", max_length=max_len, truncation=True)``.
  """

  def __init__(self, vocab_file: str, merges_file: str, max_len: int = 77,
               bos_token: str = "<|startoftext|>", eos_token: str = "<|endoftext|>",
               pad_token: str = "<|endoftext|>"):
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    if max_len < 2:
      raise ValueError(f"CLIPTokenizer: max_len must be >= 2 (BOS and EOS), got {max_len}")
    for f in (vocab_file, merges_file):
      if not os.path.isfile(f):
        raise FileNotFoundError(f"CLIPTokenizer: no file {f}")
    vocab, merges = BPE.read_file(vocab_file, merges_file)
    for t in (bos_token, eos_token, pad_token):
      if t not in vocab:
        raise ValueError(f"CLIPTokenizer: special token {t!r} is not in {vocab_file}")
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                        end_of_word_suffix="</w>", fuse_unk=False, unk_token=eos_token))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(sorted({bos_token, eos_token, pad_token}))
    self.bos_id, self.eos_id, self.pad_id = (vocab[bos_token], vocab[eos_token],
                                             vocab[pad_token])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos_token} $A {eos_token}",
        special_tokens=[(bos_token, self.bos_id), (eos_token, self.eos_id)])
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(length=max_len, pad_id=self.pad_id, pad_token=pad_token)
    self.max_len = int(max_len)
    self.vocab_size = tok.get_vocab_size()
    self._tok = tok

  @classmethod
  def from_dir(cls, path: str, **kwargs) -> "CLIPTokenizer":
    """From a folder holding ``vocab.json`` and ``merges.txt`` (e.g. an HF CLIP checkpoint)."""
    return cls(os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"), **kwargs)

  def encode(self, texts: str | Sequence[str]):
    """texts: a str or B strs -> ids [B, L] int32, mask [B, L] bool (True on BOS..EOS)."""
    if isinstance(texts, str):
      texts = [texts]
    for t in texts:
      if not isinstance(t, str):
        raise TypeError(f"CLIPTokenizer.encode: expected str, got {type(t).__name__}: {t!r}")
    if not len(texts):
      return np.zeros((0, self.max_len), np.int32), np.zeros((0, self.max_len), bool)
    enc = self._tok.encode_batch(list(texts))
    ids = np.asarray([e.ids for e in enc], np.int32)
    mask = np.asarray([e.attention_mask for e in enc], bool)
    return ids, mask

  def decode(self, ids):
    """ids [L] -> str, or [B, L] -> list of str; specials dropped, ``</w>`` -> space."""
    ids = np.asarray(ids)
    if ids.ndim == 2:
      return [self.decode(row) for row in ids]
    text = self._tok.decode(ids.tolist(), skip_special_tokens=True)
    return text.replace("</w>", " ").strip()

"""The project's VQA model (task ``vqa``, ``configs/vqa_graph.py``) as a benchmark adapter.

``VqaAdapter(path)`` loads a ``vqa`` checkpoint (run workdir, checkpoints folder or step folder;
``eval/checkpoints.py``) and answers a multiple-choice question about a clip:
``answer(frames, question, options) -> option index`` and, in the adapter shape of
``eval/adapters.py``, ``adapter(QuestionClip(frames, question, options), prompt) -> letter``
(the evaluation CLI builds the ``QuestionClip``: the model scores the question and each option
itself, so it needs them apart, not the benchmark's prompt text).

Inputs as in training (``data/world_qa_pipeline.Preprocess``): the frames (uint8 [T, H, W, 3])
are centre-cropped to a square, the model's ``data.num_frames`` are taken with stride
T // num_frames from frame 0 and resized to ``data.resolution`` in [-1, 1]; the question and the
options are tokenised with the run's word vocabulary (words outside it map to UNK). A benchmark
clip carries no scene graph, so the object nodes are empty (``obj_mask`` all False) and only the
``layout`` adjacency channel (self loops, neighbouring words and tubelets) is set: the model sees
what any VLM sees, video and text. Numbers on the world export are therefore those of the model
without its ground-truth object graph (lower than ``vqa/step_N.txt`` for a graph run).
A question with more than 4 options is an error (the model scores exactly 4).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from mfm_jax.eval import answers


@dataclasses.dataclass
class QuestionClip:
  """What the VQA adapter needs of one question: frames [T, H, W, 3] uint8, the question, the
  option texts in label order."""
  frames: np.ndarray
  question: str
  options: Sequence[str]


class VqaAdapter:
  """A ``vqa`` checkpoint answering benchmark questions (module docstring)."""

  needs_question = True

  def __init__(self, path: str, labels: Sequence[str] = answers.UPPER):
    import jax  # pylint: disable=g-import-not-at-top
    from mfm_jax.data import world_qa_pipeline as qa  # pylint: disable=g-import-not-at-top
    from mfm_jax.eval import checkpoints  # pylint: disable=g-import-not-at-top
    loaded = checkpoints.load(path, "vqa")
    self.task, self.params, self.step = loaded.task, loaded.params, loaded.step
    self.name = f"vqa:{loaded.path}"
    self.labels = tuple(labels)
    self._qa = qa
    self._predict = jax.jit(lambda p, b: self.task.logits(p, b))

  def inputs(self, frames, question: str, options: Sequence[str]) -> dict:
    """One example's model inputs (batch of 1), as ``world_qa_pipeline`` builds them."""
    from mfm_jax.data import pipeline as video_pipeline  # pylint: disable=g-import-not-at-top
    from mfm_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
    from mfm_jax.data import video_io  # pylint: disable=g-import-not-at-top
    qa, d = self._qa, self.task.config.data
    if len(options) != qa.NUM_OPTIONS:
      raise ValueError(f"the vqa model scores {qa.NUM_OPTIONS} options, got {len(options)}")
    raw = np.asarray(frames)
    if raw.ndim != 4 or raw.shape[-1] != 3:
      raise ValueError(f"vqa adapter: need frames [T, H, W, 3], got shape {raw.shape}")
    side = min(raw.shape[1:3])
    raw = video_io.center_crop(raw, (side, side))
    if raw.shape[0] < d.num_frames:   # too few frames: repeat to the model's count
      raw = raw[np.minimum(np.arange(d.num_frames) * raw.shape[0] // d.num_frames,
                           raw.shape[0] - 1)]
    idx = video_pipeline.frame_indices(raw.shape[0], d.num_frames)
    video = video_pipeline.resize_video(raw[idx].astype(np.float32) / 127.5 - 1.0, d.resolution)
    q_tok, o_tok = self.task.tokenizers
    q_ids = q_tok.encode_one(question)
    o_ids = np.stack([o_tok.encode_one(str(t)) for t in options])
    k = self.task.num_objects
    pt, ph, pw = d.tubelet
    vid_obj = np.zeros((d.num_frames // pt, d.resolution // ph, d.resolution // pw, k), bool)
    obj_mask = np.zeros(k, bool)
    q_mask, o_mask = q_ids != tok_lib.PAD, o_ids != tok_lib.PAD
    adj = qa.adjacency(vid_obj, obj_mask, np.zeros((len(q_ids), k), bool), q_mask,
                       np.zeros(o_ids.shape + (k,), bool), o_mask, {})
    ex = {"video": video.astype(np.float32), "obj_attr": np.zeros((k, 4), np.int32),
          "obj_mask": obj_mask, "question_ids": q_ids, "question_mask": q_mask,
          "option_ids": o_ids, "option_mask": o_mask, "adjacency": adj}
    return {key: v[None] for key, v in ex.items()}

  def logits(self, frames, question: str, options: Sequence[str]) -> np.ndarray:
    """[4] option logits."""
    return np.asarray(self._predict(self.params, self.inputs(frames, question, options)))[0]

  def answer(self, frames, question: str, options: Sequence[str]) -> int:
    """The chosen option's index (0..3)."""
    return int(np.argmax(self.logits(frames, question, options)))

  def __call__(self, clip: QuestionClip, prompt: str) -> str:
    del prompt
    if not isinstance(clip, QuestionClip):
      raise TypeError(f"the vqa adapter needs a QuestionClip (frames, question, options), got "
                      f"{type(clip).__name__}")
    return self.labels[self.answer(clip.frames, clip.question, clip.options)]

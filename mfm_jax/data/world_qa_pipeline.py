"""grain pipeline of multiple-choice video questions over the world_qa TFDS source.

One example is one MMWorld-schema question of a clip (a world_qa record has 0-5 of them, in its
``mmworld`` JSON), with the clip's video, its object nodes and a graph adjacency over the tokens
of ``mfm_jax.models.graph`` (order: video tubelets | object nodes | question | options), computed
on the host from the record's scene graph and instance masks. Static shapes: fixed token
capacities (``question_len``, ``option_len``, K objects) with masks.

  QuestionSource(split)            random access to (record, question) pairs, index built once
  -> MapDataset.source -> (train) .shuffle(seed).repeat()
  -> .map(Preprocess)              video, tokens, object attributes, adjacency
  -> .batch(B, drop_remainder)[shard_index::shard_count] -> .to_iter_dataset()

As ``mfm_jax.data.pipeline``: process i of P takes the global batches i, i+P, ... (the global
order does not depend on P), iterators are checkpointable (``get_state`` / ``set_state``), and
batches do not depend on ``worker_count``.

Batch fields (B examples, K objects, C = 4 channels, L tokens):
  video [B, T, R, R, 3] f32 in [-1, 1]     obj_attr [B, K, 4] int32 (colour, shape, size, material)
  obj_mask [B, K] bool                     question_ids / question_mask [B, Lq] int32 / bool
  option_ids / option_mask [B, 4, Lo]      adjacency [B, C, L, L] bool (CHANNELS)
  answer [B] int32 (0..3)                  qtype [B] int32 (index into TYPES)
  qindex [B] int32 (position in the split's question list, for per-question reports)

Adjacency channels (``adjacency``; the graph model gates each per head):
  layout       self loops; words next to each other in one segment (question, each option);
               tubelets next to each other in space (4-neighbours) or time (same place)
  grounding    tokens of the same object: tubelets its instance mask covers (> min_cover of the
               tubelet), its object node, and the question / option words that name it (its
               colour word, and the shape word after it)
  relation     tokens of objects i, j with a scene-graph relation left_of / behind / near (either
               direction); between two tubelets only when it holds in their (common) time step
  interaction  the same for moving_towards / collides_with
"""
from __future__ import annotations

import functools
import json

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from mfm_jax.data import pipeline as video_pipeline
from mfm_jax.data import tokenizer as tokenizer_lib
from mfm_jax.data.world import sim

TYPES = ("Explanation", "Counterfactual Thinking", "Future Prediction",
         "Temporal Understanding", "Attribution Understanding")
CHANNELS = ("layout", "grounding", "relation", "interaction")
RELATIONS = {"left_of": 2, "behind": 2, "near": 2, "moving_towards": 3, "collides_with": 3}
NUM_OPTIONS = 4
LABELS = ("a", "b", "c", "d")
_USED = ("video", "instance", "obj_mask", "color_ids", "shape_ids", "size_ids", "material_ids",
         "scene_graph")


def default_data_config() -> ml_collections.ConfigDict:
  """The data config of the vqa task (every field documented)."""
  c = ml_collections.ConfigDict()
  c.name = "world_qa"            # the TFDS dataset (questions live in world_qa only)
  c.builder_config = "smoke"     # smoke / small / full
  c.data_dir = ml_collections.config_dict.placeholder(str)
  c.view = 0                     # the camera view (world_qa has one)
  c.num_frames = 8               # frames kept (stride from frame 0)
  c.resolution = 32              # output H = W
  c.tubelet = (2, 8, 8)          # the model's tubelet: video tokens for the adjacency
  c.question_len = 24            # word tokens incl. BOS / EOS
  c.option_len = 12
  c.min_cover = 0.0              # grounding: a tubelet shows an object above this pixel fraction
  c.worker_count = 0
  c.read_threads = 2
  return c


def attr_sizes() -> tuple[int, int, int, int]:
  """Values per object attribute: colour, shape, size (<= 3), material."""
  return (len(sim.COLOR_NAMES), len(sim.SHAPE_NAMES), 3, len(sim.MATERIAL_NAMES))


def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


@functools.lru_cache(maxsize=8)
def _records(builder_config: str, data_dir: str | None, split: str, light: bool):
  """The world_qa data source of a split (built on first use); heavy fields skipped."""
  from mfm_jax.data.world import builder_v2  # pylint: disable=g-import-not-at-top
  builder = builder_v2.get_builder("world_qa", builder_config, data_dir)
  if not builder.is_prepared():
    builder.download_and_prepare()
  keep = ("mmworld", "video_id") if light else _USED
  skip = {k: tfds.decode.SkipDecoding() for k in builder.info.features.keys() if k not in keep}
  return builder.as_data_source(split, decoders=skip)


@functools.lru_cache(maxsize=8)
def question_index(builder_config: str, data_dir: str | None, split: str) -> tuple[dict, ...]:
  """Every MMWorld-type question of a split, record-major, as dicts:
  ``record, number, id ("<video_id>/<number>"), video_id, type, question, options [4],
  answer (0..3)`` plus the MMWorld record fields the scorer reads."""
  src = _records(builder_config, data_dir, split, True)
  out = []
  for r in range(len(src)):
    rec = json.loads(_text(src[r]["mmworld"]))
    for n, q in enumerate(rec["questions"]):
      if q["type"] not in TYPES:
        continue
      out.append({"record": r, "number": n, "id": f"{rec['video_id']}/{n}",
                  "video_id": rec["video_id"], "discipline": rec["discipline"],
                  "subdiscipline": rec["subdiscipline"], "type": q["type"],
                  "question": q["question"], "options": [q["options"][k] for k in LABELS],
                  "answer": LABELS.index(q["correct_answer_label"]),
                  **{k: q[k] for k in ("requires_domain_knowledge", "requires_audio",
                                       "requires_visual", "question_only")}})
  return tuple(out)


def make_tokenizers(data_config):
  """(question, option) WordTokenizers over the words of the train split's questions and
  options (the same vocabulary on every process and restart)."""
  qs = question_index(data_config.builder_config, data_config.data_dir, "train")
  texts = [q["question"] for q in qs] + [o for q in qs for o in q["options"]]
  vocab = sorted({w for t in texts for w in tokenizer_lib.split_words(t)})
  return (tokenizer_lib.WordTokenizer(vocab, data_config.question_len),
          tokenizer_lib.WordTokenizer(vocab, data_config.option_len))


class QuestionSource:
  """Random access to (record, question) pairs of a split: ``src[i]`` is the record's fields
  plus ``question`` (the dict of ``question_index``) and ``qindex``."""

  def __init__(self, data_config, split: str):
    self.records = _records(data_config.builder_config, data_config.data_dir, split, False)
    self.questions = question_index(data_config.builder_config, data_config.data_dir, split)
    self.view = int(data_config.get("view", 0))

  def __len__(self) -> int:
    return len(self.questions)

  def __getitem__(self, index) -> dict:
    q = self.questions[int(index)]
    out = dict(self.records[q["record"]])
    for key in ("video", "instance"):
      out[key] = np.asarray(out[key])[self.view]
    out["question"] = q
    out["qindex"] = np.int32(index)
    return out


def word_objects(words: list[str], colors: list[str], shapes: list[str], length: int
                 ) -> np.ndarray:
  """[length, K] bool: token p (= word p - 1 after BOS) names object k (its colour word, and
  the shape word right after it). ``colors`` / ``shapes``: per object, "" for no object."""
  out = np.zeros((length, len(colors)), bool)
  body = words[:length - 2]
  for p, w in enumerate(body):
    for k, c in enumerate(colors):
      if c and w == c:
        out[p + 1, k] = True
        if p + 1 < len(body) and body[p + 1] == shapes[k]:
          out[p + 2, k] = True
  return out


def relation_steps(graph: dict, num_objects: int, steps: int, frames_per_step: int
                   ) -> dict[int, np.ndarray]:
  """Channel -> [T', K, K] bool: a relation of the scene graph holds (either direction) in some
  frame of step t' (original frames [t' f, (t' + 1) f); later frames count to the last step)."""
  out = {c: np.zeros((steps, num_objects, num_objects), bool) for c in set(RELATIONS.values())}
  for rel in graph["relations"]:
    c = RELATIONS.get(rel["predicate"])
    if c is None:
      continue
    i, j = rel["subject"], rel["object"]
    for first, last in rel["spans"]:
      t0 = min(first // frames_per_step, steps - 1)
      t1 = min(last // frames_per_step, steps - 1)
      out[c][t0:t1 + 1, i, j] = out[c][t0:t1 + 1, j, i] = True
  return out


def _lift(g: np.ndarray, rel: np.ndarray) -> np.ndarray:
  """g: [L, K] bool, rel: [K, K] bool -> [L, L] bool (tokens of related objects)."""
  g = g.astype(np.float32)
  return (g @ rel.astype(np.float32) @ g.T) > 0


def adjacency(video_objects: np.ndarray, obj_mask: np.ndarray, question_objects: np.ndarray,
              question_mask: np.ndarray, option_objects: np.ndarray, option_mask: np.ndarray,
              relations: dict[int, np.ndarray]) -> np.ndarray:
  """The [C, L, L] bool graph channels (module docstring) of one example.

  Args:
    video_objects: [T', H', W', K] bool, tubelet (t', h, w) shows object k.
    obj_mask: [K] bool.
    question_objects, question_mask: [Lq, K] / [Lq] (from ``word_objects`` and the tokenizer).
    option_objects, option_mask: [O, Lo, K] / [O, Lo].
    relations: channel (2, 3) -> [T', K, K] bool (``relation_steps``).
  """
  t, h, w, k = video_objects.shape
  o, lo = option_mask.shape
  lv, lq = t * h * w, question_mask.shape[0]
  n = lv + k + lq + o * lo
  real = np.concatenate([np.ones(lv, bool), obj_mask, question_mask, option_mask.reshape(-1)])
  g = np.concatenate([video_objects.reshape(lv, k), np.eye(k, dtype=bool) & obj_mask[:, None],
                      question_objects, option_objects.reshape(o * lo, k)]) & real[:, None]
  adj = np.zeros((len(CHANNELS), n, n), bool)

  lay = adj[0]
  np.fill_diagonal(lay, True)
  grid = np.arange(lv).reshape(t, h, w)
  for a, b in ((grid[1:], grid[:-1]), (grid[:, 1:], grid[:, :-1]), (grid[:, :, 1:],
                                                                   grid[:, :, :-1])):
    lay[a.ravel(), b.ravel()] = lay[b.ravel(), a.ravel()] = True
  starts = [lv + k] + [lv + k + lq + i * lo for i in range(o)]
  for start, m in zip(starts, [question_mask] + list(option_mask)):
    idx = start + np.flatnonzero(m[:-1] & m[1:])
    lay[idx, idx + 1] = lay[idx + 1, idx] = True

  adj[1] = _lift(g, np.eye(k, dtype=bool))
  for c, steps in relations.items():
    full = _lift(g, steps.any(0))
    per = h * w
    full[:lv, :lv] = False
    for s in range(t):
      sl = slice(s * per, (s + 1) * per)
      full[sl, sl] = _lift(g[sl], steps[s])
    adj[c] = full
  return adj & real[None, :, None] & real[None, None, :]


class Preprocess(grain.transforms.Map):
  """One (record, question) -> model example (picklable for grain workers)."""

  def __init__(self, data_config, tokenizers):
    self.num_frames, self.resolution = int(data_config.num_frames), int(data_config.resolution)
    self.tubelet = tuple(int(x) for x in data_config.tubelet)
    self.min_cover = float(data_config.get("min_cover", 0.0))
    self.q_tok, self.o_tok = tokenizers

  def _video_objects(self, instance: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    pt, ph, pw = self.tubelet
    inst = instance[idx]
    onehot = (inst[..., None] == np.arange(1, k + 1, dtype=inst.dtype)).astype(np.float32)
    cover = video_pipeline.resize_video(onehot, self.resolution)          # [T, R, R, K]
    t, r = cover.shape[:2]
    cover = cover.reshape(t // pt, pt, r // ph, ph, r // pw, pw, k).mean((1, 3, 5))
    return cover > self.min_cover

  def map(self, element: dict) -> dict:
    q = element["question"]
    raw = np.asarray(element["video"])
    idx = video_pipeline.frame_indices(raw.shape[0], self.num_frames)
    video = video_pipeline.resize_video(raw[idx].astype(np.float32) / 127.5 - 1.0,
                                        self.resolution)
    obj_mask = np.asarray(element["obj_mask"], bool)
    k = obj_mask.shape[0]
    ids = [np.asarray(element[f], np.int64) for f in ("color_ids", "shape_ids", "size_ids",
                                                      "material_ids")]
    attr = np.stack([np.clip(a, 0, s - 1) for a, s in zip(ids, attr_sizes())], -1)
    attr = np.where(obj_mask[:, None], attr, 0).astype(np.int32)
    colors = [sim.COLOR_NAMES[c] if m else "" for c, m in zip(ids[0], obj_mask)]
    shapes = [sim.SHAPE_NAMES[s] if m else "" for s, m in zip(ids[1], obj_mask)]

    q_ids = self.q_tok.encode_one(q["question"])
    o_ids = np.stack([self.o_tok.encode_one(t) for t in q["options"]])
    q_obj = word_objects(tokenizer_lib.split_words(q["question"]), colors, shapes, len(q_ids))
    o_obj = np.stack([word_objects(tokenizer_lib.split_words(t), colors, shapes, o_ids.shape[1])
                      for t in q["options"]])
    vid_obj = self._video_objects(np.asarray(element["instance"]), idx, k)
    stride = idx[1] - idx[0] if len(idx) > 1 else raw.shape[0]
    rel = relation_steps(json.loads(_text(element["scene_graph"])), k, vid_obj.shape[0],
                         int(stride) * self.tubelet[0])
    adj = adjacency(vid_obj, obj_mask, q_obj, q_ids != tokenizer_lib.PAD, o_obj,
                    o_ids != tokenizer_lib.PAD, rel)
    return {"video": video.astype(np.float32), "obj_attr": attr, "obj_mask": obj_mask,
            "question_ids": q_ids, "question_mask": q_ids != tokenizer_lib.PAD,
            "option_ids": o_ids, "option_mask": o_ids != tokenizer_lib.PAD, "adjacency": adj,
            "answer": np.int32(q["answer"]), "qtype": np.int32(TYPES.index(q["type"])),
            "qindex": np.int32(element["qindex"])}


def make_dataset(data_config, split: str, batch_size: int, seed: int, shard_index: int = 0,
                 shard_count: int = 1, tokenizers=None) -> grain.IterDataset:
  """The grain IterDataset behind ``make_iterator`` (same arguments)."""
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
  if data_config.name != "world_qa":
    raise ValueError(f"the vqa pipeline reads world_qa (scene graphs, masks, MMWorld-schema "
                     f"questions), got data.name={data_config.name!r}")
  ds = grain.MapDataset.source(QuestionSource(data_config, split))
  if len(ds) < batch_size * shard_count:
    raise ValueError(f"split {split!r} of world_qa/{data_config.builder_config} has {len(ds)} "
                     f"questions: too few for {shard_count} shard(s) of batch_size={batch_size}")
  if split.startswith("train"):
    ds = ds.shuffle(seed=seed).repeat(None)
  prep = Preprocess(data_config, tokenizers or make_tokenizers(data_config))
  ds = ds.map(prep).batch(batch_size, drop_remainder=True)[shard_index::shard_count]
  it = ds.to_iter_dataset(read_options=grain.ReadOptions(
      num_threads=data_config.get("read_threads", 2), prefetch_buffer_size=2))
  if data_config.worker_count > 0:
    video_pipeline._ensure_flags_parsed()  # pylint: disable=protected-access
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_config.worker_count))
  return it


def make_iterator(data_config, split: str, batch_size: int, seed: int, shard_index: int = 0,
                  shard_count: int = 1, tokenizers=None) -> grain.DatasetIterator:
  """A checkpointable iterator of per-process batches (train: infinite, reshuffled each epoch;
  otherwise one pass of full batches)."""
  return iter(make_dataset(data_config, split, batch_size, seed, shard_index, shard_count,
                           tokenizers))


def all_examples(data_config, split: str, batch_size: int, tokenizers=None):
  """Every question of a split once, in order, as batches of ``batch_size`` (the last one
  padded by repeating its final example) with ``valid [B]`` bool: for evaluation."""
  src = QuestionSource(data_config, split)
  prep = Preprocess(data_config, tokenizers or make_tokenizers(data_config))
  for start in range(0, len(src), batch_size):
    rows = [prep.map(src[i]) for i in range(start, min(start + batch_size, len(src)))]
    valid = np.arange(batch_size) < len(rows)
    rows += [rows[-1]] * (batch_size - len(rows))
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    batch["valid"] = valid
    yield batch


def answer_prior(questions) -> dict[str, float]:
  """Option text -> how often it is the right answer when offered (train questions)."""
  seen: dict[str, list[int]] = {}
  for q in questions:
    for i, text in enumerate(q["options"]):
      s = seen.setdefault(text, [0, 0])
      s[0] += i == q["answer"]
      s[1] += 1
  return {t: c / n for t, (c, n) in seen.items()}


def prior_choice(question: dict, prior: dict[str, float]) -> int:
  """The option with the highest train answer rate (unseen options: 0; ties: first)."""
  return int(np.argmax([prior.get(t, 0.0) for t in question["options"]]))

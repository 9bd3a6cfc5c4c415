"""TFDS builders `world_multiview` and `world_qa` over world episodes.

  world_multiview  V calibrated orbit views per clip (for 4D fitting): video,
                   depth, instance ids, 2D centres / boxes per view,
                   intrinsics and per-frame world_to_camera, 3D positions,
                   cube yaws / yaw rates, events (and enter / exit events
                   and a caption per view), scene graph, twins (JSON).
  world_qa         one view per clip, exo-centric or (ego_fraction of the
                   clips) ego-centric, with the same ground truth plus the
                   clip's questions: `mmworld` (its MMWorld video-level
                   record), `vlm4d` (its VLM4D records) and `questions` (all
                   questions with their simulation evidence), JSON strings.

Configs (train / validation clips; see MULTIVIEW_CONFIGS / QA_CONFIGS): smoke
(8 frames of 32x32 at 4 fps, spins at most 2.4 rad/s; tests), small
(16x64x64), full. Fields: `episode.episode_record`. Clip `index` of `split` is
`episode.generate_episode(clip_seed(base_seed, split, index), spec, ...)`:
the data is a pure function of (builder, config, version), whatever the
number of worker processes. Generation runs in chunks of clips on a "spawn"
process pool (all cores by default); each clip has its own seed.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os

import numpy as np
import tensorflow_datasets as tfds

from mfm_jax.data.world import episode as episode_lib
from mfm_jax.data.world import formats
from mfm_jax.data import tfds_base
from mfm_jax.data.world import generate
from mfm_jax.data.world import sim

_CHUNK = 8


@dataclasses.dataclass(eq=False)
class WorldV2Config(tfds.core.BuilderConfig):
  """A named config: spec, views, ego fraction and split sizes."""
  spec: sim.WorldSpec = dataclasses.field(
      default_factory=episode_lib.world_v2_spec)
  num_views: int = 1
  ego_fraction: float = 0.0
  num_train: int = 16
  num_validation: int = 8
  base_seed: int = 0


# 4 fps: spins below pi / 4 * fps (sim.WorldSpec).
_SMOKE_SPEC = dict(num_frames=8, height=32, width=32, fps=4.0, min_spin=1.2,
                   max_spin=2.4)


def _configs(views: int, ego: float, sizes) -> list[WorldV2Config]:
  out = []
  for name, (tr, va) in zip(("smoke", "small", "full"), sizes):
    spec = episode_lib.world_v2_spec(**(_SMOKE_SPEC if name == "smoke"
                                        else {}))
    out.append(WorldV2Config(
        name=name, description=f"{tr}/{va} clips, {views} view(s).",
        spec=spec, num_views=views, ego_fraction=ego, num_train=tr,
        num_validation=va))
  return out


MULTIVIEW_CONFIGS = _configs(4, 0.0, ((16, 8), (500, 32), (2000, 128)))
QA_CONFIGS = _configs(1, 0.3, ((16, 8), (1000, 64), (5000, 256)))


def make_episode(cfg: WorldV2Config, split: str, index: int, prefix: str):
  """(episode, video_id) of clip `index` of a split."""
  seed = generate.clip_seed(cfg.base_seed, split, index)
  ego = episode_lib.clip_camera(seed, cfg.ego_fraction)
  ep = episode_lib.generate_episode(seed, cfg.spec, num_views=cfg.num_views,
                                    ego_motion=ego)
  return ep, formats.video_id(f"{prefix}_{cfg.name}_{split}", index)


def _record(cfg, split, index, qa: bool) -> dict:
  prefix = "world_qa" if qa else "world_multiview"
  ep, vid = make_episode(cfg, split, index, prefix)
  rec = episode_lib.episode_record(ep)
  rec["index"] = index
  rec["video_id"] = vid
  if qa:
    mm, v4 = formats.clip_questions(ep)
    url = f"videos/{vid}.mp4"
    rec["mmworld"] = json.dumps(formats.mmworld_record(vid, url, ep.caption,
                                                       mm))
    rec["vlm4d"] = json.dumps(formats.vlm4d_records(vid, url,
                                                    bool(ep.ego_motion), v4))
    rec["questions"] = json.dumps(formats.evidence_records(mm + v4))
  return rec


def _make_chunk(args) -> list[tuple[int, dict]]:
  cfg, split, indices, qa = args
  return [(i, _record(cfg, split, i, qa)) for i in indices]


def _features(cfg: WorldV2Config, qa: bool) -> tfds.features.FeaturesDict:
  s = cfg.spec
  v, t, h, w, k = cfg.num_views, s.num_frames, s.height, s.width, s.max_objects
  ten = tfds.features.Tensor
  text = tfds.features.Text
  feats = {
      "video": ten(shape=(v, t, h, w, 3), dtype=np.uint8, encoding="zlib"),
      "depth": ten(shape=(v, t, h, w), dtype=np.float32, encoding="zlib"),
      "instance": ten(shape=(v, t, h, w), dtype=np.uint8, encoding="zlib"),
      "centers": ten(shape=(v, t, k, 2), dtype=np.float32),
      "boxes": ten(shape=(v, t, k, 4), dtype=np.float32),
      "visible": ten(shape=(v, t, k), dtype=np.bool_),
      "in_view": ten(shape=(v, t, k), dtype=np.bool_),
      "intrinsics": ten(shape=(v, 3, 3), dtype=np.float32),
      "world_to_camera": ten(shape=(v, t, 4, 4), dtype=np.float32),
      "positions": ten(shape=(t, k, 3), dtype=np.float32),
      "velocities": ten(shape=(t, k, 3), dtype=np.float32),
      "yaw": ten(shape=(t, k), dtype=np.float32),
      "yaw_rate": ten(shape=(t, k), dtype=np.float32),
      "obj_mask": ten(shape=(k,), dtype=np.bool_),
      "colors": ten(shape=(k, 3), dtype=np.uint8),
      "num_objects": tfds.features.Scalar(dtype=np.int32),
      "motion_speed": tfds.features.Scalar(dtype=np.float32),
      "motion_level": tfds.features.Scalar(dtype=np.int32),
      "caption": text(), "ego_motion": text(), "events": text(),
      "view_events": text(), "view_captions": text(),
      "scene_graph": text(), "twins": text(), "video_id": text(),
      "seed": tfds.features.Scalar(dtype=np.int64),
      "index": tfds.features.Scalar(dtype=np.int64),
  }
  for key in ("shape_ids", "color_ids", "size_ids", "material_ids"):
    feats[key] = ten(shape=(k,), dtype=np.int32)
  if qa:
    feats.update(mmworld=text(), vlm4d=text(), questions=text())
  return tfds.features.FeaturesDict(feats)


class _WorldV2Builder(tfds_base.LocalBuilder, skip_registration=True):
  """Shared generation of world_multiview / world_qa."""

  VERSION = tfds.core.Version("1.1.0")
  DEFAULT_CONFIG_NAME = "smoke"
  QA = False

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=_features(self.builder_config, self.QA),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    return {"train": self._generate_examples("train", cfg.num_train),
            "validation": self._generate_examples("validation",
                                                  cfg.num_validation)}

  def _generate_examples(self, split: str, num: int):
    cfg = self.builder_config
    chunks = [(cfg, split, list(range(i, min(i + _CHUNK, num))), self.QA)
              for i in range(0, num, _CHUNK)]
    workers = max(1, min(self._num_workers or os.cpu_count() or 1,
                         len(chunks)))
    if workers == 1:
      for chunk in chunks:
        yield from _make_chunk(chunk)
      return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
      for records in pool.imap(_make_chunk, chunks):
        yield from records


class WorldMultiview(_WorldV2Builder):
  """World clips seen by K calibrated orbit cameras."""
  RELEASE_NOTES = {"1.0.0": "World v2: 4 orbit views, 3 shapes, metal.",
                   "1.1.0": "Spinning cubes (yaw, yaw_rate); enter / exit "
                            "events and captions per view."}
  BUILDER_CONFIGS = MULTIVIEW_CONFIGS


class WorldQa(_WorldV2Builder):
  """World clips (exo / ego) with MMWorld- and VLM4D-schema questions."""
  RELEASE_NOTES = {"1.0.0": "World v2 questions, both schemas.",
                   "1.1.0": "Spinning cubes and VLM4D rotation questions; "
                            "per-view events and captions."}
  BUILDER_CONFIGS = QA_CONFIGS
  QA = True


BUILDERS = {"world_multiview": WorldMultiview, "world_qa": WorldQa}


def get_builder(name: str, config: str = "smoke", data_dir: str | None = None,
                num_workers: int | None = None) -> _WorldV2Builder:
  """The builder `name` (world_multiview / world_qa) of a named config."""
  if name not in BUILDERS:
    raise ValueError(f"unknown world dataset {name!r}; known: "
                     f"{sorted(BUILDERS)}")
  cls = BUILDERS[name]
  names = [c.name for c in cls.BUILDER_CONFIGS]
  if config not in names:
    raise ValueError(f"{name}: unknown builder config {config!r}; known "
                     f"configs: {names}")
  from mfm_jax.data.world import builder  # pylint: disable=g-import-not-at-top
  return cls(config=config, data_dir=data_dir or builder.default_data_dir(),
             file_format="array_record", num_workers=num_workers)

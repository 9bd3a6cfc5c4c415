"""A complete world clip (an *episode*): views, annotations, graph, twins.

`generate_episode(seed, spec, num_views, ego_motion)` simulates one scene and
renders it from V views: V orbit cameras (exo-centric; view 0 is the v1
camera) or, with `ego_motion`, one moving camera (ego-centric, V = 1). It adds
per-view 2D annotations (annotate.py) with each view's camera-dependent
events (enter / exit), a caption per view with varied templates (`caption`
and `events` are view 0's), the scene graph, the motion intensity and the
counterfactual twins. `episode_record` flattens it into the
arrays and JSON strings stored by the world_multiview / world_qa builders.

`generate.generate_clip` (world v1, world_video) is unchanged and separate.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from mfm_jax.data.world import annotate
from mfm_jax.data.world import camera as camera_lib
from mfm_jax.data.world import captions
from mfm_jax.data.world import scene_graph
from mfm_jax.data.world import sim
from mfm_jax.data.world import twins as twins_lib


@dataclasses.dataclass(frozen=True, eq=False)
class Episode:
  """A simulated scene seen from V views, with its annotations."""
  seed: int
  spec: sim.WorldSpec
  scene: sim.Scene
  tracks: list            # V lists of T camera_lib.Camera
  frames: list            # V dicts: rgb / depth / instance
  views: list             # V dicts of annotate.annotate_view
  events: list            # physics events + view-0 enter/exit, time order
  caption: str            # view 0's caption (view_captions[0])
  graph: dict             # scene_graph.build of view 0
  twins: list             # twins_lib.Twin
  ego_motion: str         # "" for fixed cameras
  view_captions: list = dataclasses.field(default_factory=list)  # V str

  @property
  def num_views(self) -> int:
    return len(self.tracks)

  def view_events(self, v: int) -> list[sim.Event]:
    """Physics events + view v's enter / exit events, in time order."""
    return sort_events(list(self.scene.events) + self.views[v]["events"])


def event_dict(e: sim.Event) -> dict:
  """JSON-able event: kind, frame, time (s), i, and j / wall when set."""
  out = {"kind": e.kind, "frame": int(e.frame), "time": round(e.time, 4),
         "i": int(e.i)}
  if e.kind == "collision":
    out["j"] = int(e.j)
  if e.kind == "wall":
    out["wall"] = e.wall
  return out


def sort_events(events) -> list[sim.Event]:
  order = {"collision": 0, "wall": 1, "stop": 2, "enter": 3, "exit": 4}
  return sorted(events, key=lambda e: (e.time, order[e.kind], e.i, e.j))


def generate_episode(seed: int, spec: sim.WorldSpec, num_views: int = 1,
                     ego_motion: str = "", ego_speed: float = 1.0,
                     with_twins: bool = True) -> Episode:
  """Simulates, renders and annotates one clip (deterministic by seed).

  Args:
    seed: the clip seed.
    spec: the world spec (T frames of H x W, capacity K).
    num_views: V orbit cameras (ignored for ego clips, which have V = 1).
    ego_motion: "" (fixed cameras) or one of camera_lib.EGO_MOTIONS.
    ego_speed: translation speed of the ego camera, units / s.
    with_twins: also re-simulate the counterfactual twins.

  Returns:
    The Episode.
  """
  scene = sim.simulate(seed, spec)
  t = spec.num_frames
  if ego_motion:
    tracks = [camera_lib.ego_cameras(spec, ego_motion, speed=ego_speed)]
  else:
    tracks = [annotate.as_track(c, t)
              for c in camera_lib.orbit_cameras(spec, num_views)]
  frames = [annotate.render_view(scene, tr) for tr in tracks]
  views = [annotate.annotate_view(scene, tr, f)
           for tr, f in zip(tracks, frames)]
  per_view = [sort_events(list(scene.events) + v["events"]) for v in views]
  texts = [captions.describe_varied(scene, v["centers"], v["image_velocity"],
                                    e) for v, e in zip(views, per_view)]
  graph = scene_graph.build(scene, views[0]["centers"],
                            views[0]["center_depth"])
  twins = twins_lib.sample_twins(scene, seed) if with_twins else []
  return Episode(seed=int(seed), spec=spec, scene=scene, tracks=tracks,
                 frames=frames, views=views, events=per_view[0],
                 caption=texts[0], graph=graph, twins=twins,
                 ego_motion=ego_motion, view_captions=texts)


def episode_record(ep: Episode) -> dict:
  """The stored form of an episode: numpy arrays and JSON strings.

  Returns:
    dict with (V views, T frames, K objects)
      video [V, T, H, W, 3] uint8, depth [V, T, H, W] float32,
      instance [V, T, H, W] uint8, centers [V, T, K, 2] float32,
      boxes [V, T, K, 4] float32, visible [V, T, K] bool,
      in_view [V, T, K] bool, intrinsics [V, 3, 3] float32,
      world_to_camera [V, T, 4, 4] float32 (per frame: ego cameras move),
      positions [T, K, 3] float32, velocities [T, K, 3] float32,
      yaw / yaw_rate [T, K] float32 (radians, unwrapped / rad s^-1,
      counterclockwise seen from above; non-zero only for cubes),
      obj_mask [K] bool, shape_ids / color_ids / size_ids / material_ids
      [K] int32, colors [K, 3] uint8, num_objects, motion_speed float32
      (view 0), motion_level int32, caption str, ego_motion str,
      events (physics + view 0's enter / exit) / scene_graph / twins:
      JSON strings, view_events: JSON [V][events] (view v's enter / exit),
      view_captions: JSON [V] captions (view_captions[0] == caption),
      seed int.
  """
  scene, obj = ep.scene, ep.scene.objects
  mask = scene.mask
  stack = lambda key: np.stack([v[key] for v in ep.views])  # noqa: E731
  return {
      "video": np.stack([f["rgb"] for f in ep.frames]),
      "depth": np.stack([f["depth"] for f in ep.frames]),
      "instance": np.stack([f["instance"] for f in ep.frames]),
      "centers": stack("centers"), "boxes": stack("boxes"),
      "visible": stack("visible"), "in_view": stack("in_view"),
      "intrinsics": np.stack([tr[0].intrinsics for tr in ep.tracks]
                             ).astype(np.float32),
      "world_to_camera": np.stack([[c.world_to_camera for c in tr]
                                   for tr in ep.tracks]).astype(np.float32),
      "positions": scene.positions, "velocities": scene.velocities,
      "yaw": scene.yaws.astype(np.float32),
      "yaw_rate": scene.spins.astype(np.float32),
      "obj_mask": mask.copy(),
      "shape_ids": obj.shape.astype(np.int32),
      "color_ids": obj.color.astype(np.int32),
      "size_ids": obj.size.astype(np.int32),
      "material_ids": obj.material.astype(np.int32),
      "colors": np.where(mask[:, None], sim.palette_rgb()[obj.color],
                         0).astype(np.uint8),
      "num_objects": np.int32(scene.num_objects),
      "motion_speed": np.float32(ep.views[0]["motion_speed"]),
      "motion_level": np.int32(ep.views[0]["motion_level"]),
      "caption": ep.caption, "ego_motion": ep.ego_motion,
      "events": json.dumps([event_dict(e) for e in ep.events]),
      "view_events": json.dumps([[event_dict(e) for e in v["events"]]
                                 for v in ep.views]),
      "view_captions": json.dumps(ep.view_captions),
      "scene_graph": json.dumps(ep.graph),
      "twins": json.dumps([twins_lib.twin_record(t) for t in ep.twins]),
      "seed": np.int64(ep.seed),
  }


def world_v2_spec(**overrides) -> sim.WorldSpec:
  """The complete world: 2-6 objects, 3 shapes / sizes, metal, friction, spin.

  The arena (8.5) is wider than the view of the v1 camera at fov 40, so
  objects enter and leave the view; decel 0.8 stops the slower objects (and
  slows spins). 60 % of the cubes spin at 2.5-4.5 rad/s (18-32 degrees per
  frame at 8 fps; override min_spin / max_spin below pi / 4 * fps at lower
  frame rates).
  """
  base = dict(min_objects=2, max_objects=6,
              shapes=("sphere", "cube", "cylinder"), sizes=(0.3, 0.45, 0.6),
              metal_prob=0.4, decel=0.8, arena_size=8.5, fov_deg=40.0,
              spin_prob=0.6, min_spin=2.5, max_spin=4.5)
  base.update(overrides)
  return sim.WorldSpec(**base)


def clip_camera(seed: int, ego_fraction: float) -> str:
  """The ego motion of a clip ("" for a fixed camera), by seed."""
  rng = np.random.default_rng([seed, 51])
  if rng.random() >= ego_fraction:
    return ""
  return camera_lib.EGO_MOTIONS[int(rng.integers(0, len(
      camera_lib.EGO_MOTIONS)))]

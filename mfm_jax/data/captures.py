"""Posed image sets for 4D fitting: a world_multiview clip, or a folder with a transforms.json.

A `Capture` is a flat list of M posed images (each its own camera and time), so a multi-view
clip (V views x T frames) and a monocular real capture look the same:

  images [M, H, W, 3] float32 in [0, 1]; fx, fy, cx, cy [M]; world_to_camera [M, 4, 4]
  (OpenCV: x right, y down, z forward; x_cam = R x + t; pixel centres at integers, as
  `mfm_jax.render.cameras`); times [M] in [0, 1]; views [M], frames [M] int (the camera and the
  time step an image belongs to); optional depth [M, H, W] (camera z, 0 = unknown), instance
  [M, H, W] int32 (0 = background) and descriptions (text per instance id).

`world_clip(name, config, split, index)` reads one world_multiview record (T frames of V orbit
views; depth, instance ids, descriptions "background" + each object's name from the scene graph).
When the TFDS builder of that config is not prepared, the one clip is generated directly
(`builder_v2.make_episode`'s recipe without twins): the data is the same, since a clip is a pure
function of (config, split, index), and no other clip is generated.

`load_transforms(folder, split)` reads a nerfstudio / D-NeRF folder: `transforms_{split}.json`
(else `transforms.json`) with
  intrinsics: fl_x, fl_y, cx, cy (nerfstudio; any may be per frame) or camera_angle_x
    (D-NeRF / Blender: fx = fy = W / (2 tan(camera_angle_x / 2)), or fy from camera_angle_y),
    principal point default the image centre. nerfstudio's cx / cy put pixel centres at +0.5
    (the image spans [0, W]); here they are at integers, so cx_here = cx - 0.5.
  frames: file_path (relative to the folder; ".png" appended when it has no extension),
    transform_matrix: 4x4 camera-to-world in the **OpenGL** convention (x right, y up, z backward,
    the camera looks along -z). OpenCV flips y and z: c2w_cv = c2w_gl @ diag(1, -1, -1, 1),
    world_to_camera = inverse(c2w_cv). The world frame is kept as it is.
  time: per frame in [0, 1] (D-NeRF); a file where no frame has one is static (t = 0).
RGBA images are composited over `background`. Each frame is its own view (views = frame index)
and `frames` ranks the distinct times. Missing files, frames without a matrix or with a
non-finite one, a time on only some frames: errors naming the frame.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np


@dataclasses.dataclass
class Capture:
  """M posed images (module docstring)."""
  images: np.ndarray
  fx: np.ndarray
  fy: np.ndarray
  cx: np.ndarray
  cy: np.ndarray
  world_to_camera: np.ndarray
  times: np.ndarray
  views: np.ndarray
  frames: np.ndarray
  depth: np.ndarray | None = None
  instance: np.ndarray | None = None
  descriptions: list[str] | None = None

  def __len__(self) -> int:
    return int(self.images.shape[0])

  def subset(self, index: Sequence[int] | np.ndarray) -> "Capture":
    """The images at `index` (descriptions kept)."""
    idx = np.asarray(index, np.int64)
    take = lambda x: None if x is None else x[idx]  # noqa: E731
    return Capture(**{f.name: (getattr(self, f.name) if f.name == "descriptions"
                               else take(getattr(self, f.name)))
                      for f in dataclasses.fields(self)})

  @property
  def camera_centres(self) -> np.ndarray:
    """[M, 3] camera centres in world coordinates."""
    rot, trans = self.world_to_camera[:, :3, :3], self.world_to_camera[:, :3, 3]
    return -np.einsum("mji,mj->mi", rot, trans)

  def look_target(self) -> np.ndarray:
    """[3] the point closest (least squares) to every optical axis: what the cameras look at."""
    c = self.camera_centres
    d = self.world_to_camera[:, 2, :3]  # forward axes (third row of R)
    proj = np.eye(3)[None] - d[:, :, None] * d[:, None, :]
    a, b = proj.sum(0), np.einsum("mij,mj->i", proj, c)
    if np.linalg.cond(a) > 1e8:  # parallel axes: the point in front of the mean camera
      return c.mean(0) + d.mean(0) * np.linalg.norm(c - c.mean(0), axis=1).mean()
    return np.linalg.solve(a, b)


def world_clip(name: str = "world_multiview", config: str = "smoke", split: str = "validation",
               index: int = 0, data_dir: str | None = None) -> Capture:
  """One world_multiview (or world_qa) clip as a Capture (module docstring)."""
  from mfm_jax.data.world import builder_v2  # pylint: disable=g-import-not-at-top
  builder = builder_v2.get_builder(name, config, data_dir, num_workers=1)
  if builder.is_prepared():
    rec = builder.as_data_source(split=split)[int(index)]
  else:
    from mfm_jax.data.world import episode as episode_lib  # pylint: disable=g-import-not-at-top
    from mfm_jax.data.world import generate  # pylint: disable=g-import-not-at-top
    cfg = builder.builder_config
    seed = generate.clip_seed(cfg.base_seed, split, int(index))
    ep = episode_lib.generate_episode(seed, cfg.spec, num_views=cfg.num_views,
                                      ego_motion=episode_lib.clip_camera(seed, cfg.ego_fraction),
                                      with_twins=False)
    rec = episode_lib.episode_record(ep)
  return capture_from_record(rec)


def capture_from_record(rec: dict) -> Capture:
  """A world_multiview record (video [V, T, H, W, 3], depth, instance, intrinsics [V, 3, 3],
  world_to_camera [V, T, 4, 4], scene_graph) -> Capture, view-major (image m = v T + f)."""
  video = np.asarray(rec["video"])
  v, t, h, w, _ = video.shape
  k = np.asarray(rec["intrinsics"], np.float32)
  rep = lambda x: np.repeat(x, t)  # noqa: E731
  graph = rec["scene_graph"]
  graph = json.loads(graph.decode() if isinstance(graph, bytes) else graph)
  num_ids = int(np.asarray(rec["obj_mask"]).shape[0]) + 1
  names = {int(o["id"]): o["name"] for o in graph["objects"]}
  desc = ["background"] + [names.get(i, "nothing") for i in range(num_ids - 1)]
  return Capture(
      images=video.reshape(v * t, h, w, 3).astype(np.float32) / 255.0,
      fx=rep(k[:, 0, 0]), fy=rep(k[:, 1, 1]), cx=rep(k[:, 0, 2]), cy=rep(k[:, 1, 2]),
      world_to_camera=np.asarray(rec["world_to_camera"], np.float32).reshape(v * t, 4, 4),
      times=np.tile(np.arange(t, dtype=np.float32) / max(t - 1, 1), v),
      views=rep(np.arange(v)), frames=np.tile(np.arange(t), v),
      depth=np.asarray(rec["depth"], np.float32).reshape(v * t, h, w),
      instance=np.asarray(rec["instance"]).astype(np.int32).reshape(v * t, h, w),
      descriptions=desc)


OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


def load_transforms(folder: str, split: str = "train", background: Sequence[float] = (1, 1, 1),
                    downscale: int = 1) -> Capture:
  """A nerfstudio / D-NeRF folder as a Capture (module docstring).

  Args:
    folder: the folder with transforms_{split}.json or transforms.json and the images.
    split: which transforms file to prefer.
    background: RGB in [0, 1] behind transparent pixels of RGBA images.
    downscale: integer factor to shrink images by (box filter); intrinsics follow.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = os.path.join(folder, f"transforms_{split}.json")
  if not os.path.exists(path):
    path = os.path.join(folder, "transforms.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{folder}: no transforms_{split}.json or transforms.json")
  with open(path) as f:
    meta = json.load(f)
  frames = meta.get("frames")
  if not frames:
    raise ValueError(f"{path}: no frames")
  has_time = ["time" in fr for fr in frames]
  if any(has_time) and not all(has_time):
    i = has_time.index(False)
    raise ValueError(f"{path}: frame {i} ({frames[i].get('file_path')}) has no 'time' "
                     f"while other frames do")
  images, k_list, w2c, times = [], [], [], []
  for i, fr in enumerate(frames):
    name = f"frame {i} ({fr.get('file_path')!r})"
    if "file_path" not in fr or "transform_matrix" not in fr:
      raise ValueError(f"{path}: {name} needs 'file_path' and 'transform_matrix'")
    file = os.path.join(folder, fr["file_path"])
    if not os.path.splitext(file)[1]:
      file += ".png"
    if not os.path.exists(file):
      raise FileNotFoundError(f"{path}: {name}: image {file} does not exist")
    img = Image.open(file)
    w0, h0 = img.size
    if downscale > 1:
      img = img.resize((w0 // downscale, h0 // downscale), Image.BOX)
    arr = np.asarray(img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB"),
                     np.float32) / 255.0
    if arr.shape[-1] == 4:
      arr = arr[..., :3] * arr[..., 3:] + np.asarray(background, np.float32) * (1 - arr[..., 3:])
    images.append(arr)
    k_list.append(_intrinsics(meta, fr, w0, h0, downscale, f"{path}: {name}"))
    c2w = np.asarray(fr["transform_matrix"], np.float64)
    if c2w.shape != (4, 4) or not np.all(np.isfinite(c2w)):
      raise ValueError(f"{path}: {name}: transform_matrix must be a finite 4x4 matrix")
    w2c.append(np.linalg.inv(c2w @ OPENGL_TO_OPENCV))
    times.append(float(fr.get("time", 0.0)))
  shapes = {a.shape for a in images}
  if len(shapes) > 1:
    raise ValueError(f"{path}: images differ in size: {sorted(shapes)}")
  k = np.asarray(k_list, np.float32)
  times = np.asarray(times, np.float32)
  return Capture(images=np.stack(images), fx=k[:, 0], fy=k[:, 1], cx=k[:, 2], cy=k[:, 3],
                 world_to_camera=np.asarray(w2c, np.float32), times=times,
                 views=np.arange(len(frames)),
                 frames=np.unique(times, return_inverse=True)[1].astype(np.int64))


def _intrinsics(meta: dict, fr: dict, w0: int, h0: int, downscale: int, name: str) -> list:
  """(fx, fy, cx, cy) of a frame at the loaded size, pixel centres at integers."""
  get = lambda key: fr.get(key, meta.get(key))  # noqa: E731
  if get("fl_x") is not None:
    fx = float(get("fl_x"))
    fy = float(get("fl_y") if get("fl_y") is not None else fx)
  elif get("camera_angle_x") is not None:
    fx = 0.5 * w0 / np.tan(0.5 * float(get("camera_angle_x")))
    fy = 0.5 * h0 / np.tan(0.5 * float(get("camera_angle_y"))) if get(
        "camera_angle_y") is not None else fx
  else:
    raise ValueError(f"{name}: no intrinsics (fl_x / fl_y or camera_angle_x)")
  cx = float(get("cx")) if get("cx") is not None else w0 / 2.0
  cy = float(get("cy")) if get("cy") is not None else h0 / 2.0
  s = 1.0 / downscale
  # Continuous image coordinates (centres at +0.5) scale by s; then shift to integer centres.
  return [fx * s, fy * s, cx * s - 0.5, cy * s - 0.5]

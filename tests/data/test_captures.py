"""Posed captures (data/captures.py): transforms.json (OpenGL -> OpenCV) and world clips."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mfm_jax.data import captures
from mfm_jax.render import cameras


def write_folder(root, w2cs, times, fov_x=0.8, size=(12, 8), rgba=True, name="transforms.json",
                 extra=None):
  """A D-NeRF style folder: c2w in OpenGL = inverse(w2c_cv) @ diag(1, -1, -1, 1)."""
  os.makedirs(os.path.join(root, "train"), exist_ok=True)
  frames = []
  rng = np.random.default_rng(0)
  for i, (w2c, t) in enumerate(zip(w2cs, times)):
    img = rng.integers(0, 256, (size[1], size[0], 4 if rgba else 3), dtype=np.uint8)
    Image.fromarray(img).save(os.path.join(root, "train", f"r_{i:03d}.png"))
    c2w_gl = np.linalg.inv(w2c) @ np.diag([1.0, -1.0, -1.0, 1.0])
    frames.append({"file_path": f"./train/r_{i:03d}", "transform_matrix": c2w_gl.tolist(),
                   "time": float(t)})
  meta = {"camera_angle_x": fov_x, "frames": frames, **(extra or {})}
  with open(os.path.join(root, name), "w") as f:
    json.dump(meta, f)
  return meta


def test_transforms_round_trip_opengl_to_opencv(tmp_path):
  target = np.array([0.2, -0.1, 0.3])
  eyes = [(3.0, 0.5, 1.0), (-1.0, 2.5, 2.0), (0.3, -3.0, -1.0)]
  w2cs = [np.asarray(cameras.look_at(jnp.asarray(e), jnp.asarray(target)), np.float64)
          for e in eyes]
  write_folder(str(tmp_path), w2cs, [0.0, 0.5, 1.0])
  cap = captures.load_transforms(str(tmp_path), background=(1.0, 0.0, 0.0))
  assert cap.images.shape == (3, 8, 12, 3) and len(cap) == 3
  np.testing.assert_allclose(cap.world_to_camera, np.stack(w2cs), atol=1e-5)
  f = 0.5 * 12 / np.tan(0.4)
  np.testing.assert_allclose(cap.fx, f, rtol=1e-6)
  np.testing.assert_allclose(cap.fy, f, rtol=1e-6)
  np.testing.assert_allclose(cap.cx, 5.5)   # (W - 1) / 2: pixel centres at integers
  np.testing.assert_allclose(cap.cy, 3.5)
  np.testing.assert_allclose(cap.times, [0.0, 0.5, 1.0])
  np.testing.assert_array_equal(cap.frames, [0, 1, 2])
  np.testing.assert_allclose(cap.look_target(), target, atol=1e-5)
  # Projection with the loaded OpenCV camera equals an OpenGL projection with the raw matrix.
  meta = json.load(open(tmp_path / "transforms.json"))
  pts = target + np.random.default_rng(1).uniform(-0.3, 0.3, (10, 3))
  for i in range(3):
    cam = cameras.Camera(*(jnp.asarray(x[i]) for x in (cap.fx, cap.fy, cap.cx, cap.cy,
                                                        cap.world_to_camera)))
    uv, z = (np.asarray(a) for a in cameras.project(jnp.asarray(pts, jnp.float32), cam))
    gl = (np.linalg.inv(np.asarray(meta["frames"][i]["transform_matrix"]))
          @ np.concatenate([pts, np.ones((10, 1))], 1).T).T[:, :3]
    assert (gl[:, 2] < 0).all() and (z > 0).all()          # in front: -z (GL), +z (CV)
    u_gl = f * gl[:, 0] / -gl[:, 2] + 6.0 - 0.5              # GL: y up, image centre W / 2
    v_gl = -f * gl[:, 1] / -gl[:, 2] + 4.0 - 0.5
    np.testing.assert_allclose(uv, np.stack([u_gl, v_gl], 1), atol=1e-3)
    np.testing.assert_allclose(z, -gl[:, 2], atol=1e-4)
  # RGBA composited over the background.
  raw = np.asarray(Image.open(tmp_path / "train" / "r_000.png"), np.float32) / 255.0
  a = raw[..., 3:]
  np.testing.assert_allclose(cap.images[0], raw[..., :3] * a + np.array([1.0, 0, 0]) * (1 - a),
                             atol=1e-6)


def test_transforms_nerfstudio_intrinsics_and_errors(tmp_path):
  w2c = np.asarray(cameras.look_at(jnp.asarray([2.0, 0, 0]), jnp.zeros(3)), np.float64)
  write_folder(str(tmp_path), [w2c, w2c], [0.0, 1.0], rgba=False,
               extra={"fl_x": 20.0, "fl_y": 22.0, "cx": 6.5, "cy": 3.0})
  cap = captures.load_transforms(str(tmp_path), downscale=2)
  np.testing.assert_allclose([cap.fx[0], cap.fy[0], cap.cx[0], cap.cy[0]],
                             [10.0, 11.0, 6.5 / 2 - 0.5, 1.0], atol=1e-6)
  assert cap.images.shape == (2, 4, 6, 3)
  meta = json.load(open(tmp_path / "transforms.json"))
  del meta["frames"][1]["time"]
  json.dump(meta, open(tmp_path / "transforms.json", "w"))
  with pytest.raises(ValueError, match=r"frame 1 .*r_001.* has no 'time'"):
    captures.load_transforms(str(tmp_path))
  meta["frames"][1]["time"] = 1.0
  meta["frames"][1]["file_path"] = "./train/missing"
  json.dump(meta, open(tmp_path / "transforms.json", "w"))
  with pytest.raises(FileNotFoundError, match="frame 1.*missing.png does not exist"):
    captures.load_transforms(str(tmp_path))
  meta["frames"][1]["file_path"] = "./train/r_001"
  meta["frames"][0]["transform_matrix"][0][0] = float("nan")
  json.dump(meta, open(tmp_path / "transforms.json", "w"))
  with pytest.raises(ValueError, match="frame 0.*finite 4x4"):
    captures.load_transforms(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no transforms"):
    captures.load_transforms(str(tmp_path / "nowhere"))


def test_world_clip_capture():
  cap = captures.world_clip("world_multiview", "smoke", "validation", 0)
  assert cap.images.shape == (4 * 8, 32, 32, 3) and cap.depth.shape == (32, 32, 32)
  assert cap.descriptions[0] == "background" and len(cap.descriptions) == 7
  assert set(np.unique(cap.instance)) <= set(range(7))
  np.testing.assert_array_equal(cap.views[:9], [0] * 8 + [1])
  np.testing.assert_allclose(cap.times[:8], np.arange(8) / 7)
  # The depth back-projects onto the world: view 0 and view 1 see the same floor (z = 0 plane).
  from mfm_jax.world4d import scene  # pylint: disable=g-import-not-at-top
  for i in (0, 8):
    bg = cap.instance[i] == 0
    pts, _, _ = scene.backproject(np.where(bg, cap.depth[i], 0), cap.images[i], cap.fx[i],
                                  cap.fy[i], cap.cx[i], cap.cy[i], cap.world_to_camera[i])
    assert np.median(np.abs(pts[:, 2])) < 0.05
  sub = cap.subset([0, 8])
  assert len(sub) == 2 and sub.descriptions == cap.descriptions

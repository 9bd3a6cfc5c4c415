"""Bad input to the 4D scene, renderer and captures: clear errors that name the item.

The jitted renderer and fit do not check values (tracers have none); the host-side checks are
`render.gaussians.check_values` (run by `gaussians.render` on concrete inputs),
`render.cameras.check_cameras`, `world4d.scene.check_gaussians` / `scene.insert` and
`data.captures.load_transforms`.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mfm_jax.data import captures
from mfm_jax.render import cameras
from mfm_jax.render import gaussians as gs
from mfm_jax.world4d import scene

LR = dict(means=1.0, log_scales=5.0, quats=1.0, opacity_logits=50.0, colors=10.0, features=10.0)


def small_scene(n=6, capacity=8):
  rng = np.random.default_rng(0)
  pts = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
  cols = rng.uniform(0.1, 0.9, (n, 3)).astype(np.float32)
  return scene.init_gaussians(pts, cols, np.full(n, 0.1, np.float32), capacity, 4, LR, 0.5)


def camera(w2c=None):
  w2c = cameras.look_at(jnp.array([0.0, -4.0, 1.0]), jnp.zeros(3)) if w2c is None else w2c
  return gs.Camera(20.0, 20.0, 7.5, 7.5, w2c)


def render_inputs(n=5):
  rng = np.random.default_rng(1)
  return dict(means=rng.uniform(-0.5, 0.5, (n, 3)).astype(np.float32),
              scales=np.full((n, 3), 0.2, np.float32),
              quats=np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
              opacities=np.full(n, 0.8, np.float32), colors=np.full((n, 3), 0.5, np.float32))


def render(x, cam):
  return gs.render(x["means"], x["scales"], x["quats"], x["opacities"], x["colors"], cam,
                   width=16, height=16)


def test_render_names_the_bad_gaussian_and_camera():
  x = render_inputs()
  out = render(x, camera())                        # valid input renders
  assert float(out["alpha"].max()) > 0.5
  for value, msg in ((0.0, r"scales must be > 0; Gaussian 3"), (-0.1, r"Gaussian 3")):
    y = dict(x, scales=x["scales"].copy())
    y["scales"][3, 1] = value
    with pytest.raises(ValueError, match=msg):
      render(y, camera())
  y = dict(x, quats=x["quats"].copy())
  y["quats"][2] = 0.0
  with pytest.raises(ValueError, match=r"quats of zero norm \(Gaussian 2\)"):
    render(y, camera())
  w2c = np.array(cameras.look_at(jnp.array([0.0, -4.0, 1.0]), jnp.zeros(3)))
  w2c[1, 3] = np.inf
  with pytest.raises(ValueError, match=r"camera.world_to_camera has non-finite values, first at "
                                       r"index \(1, 3\)"):
    render(x, camera(w2c))
  # Under jit there are no values to check: the render does not raise (documented).
  bad = jax.jit(lambda s: render(dict(x, scales=s), camera())["rgb"])(jnp.zeros((5, 3)))
  assert bad.shape == (16, 16, 3)


def test_check_cameras_names_the_camera():
  w2c = np.stack([np.asarray(cameras.look_at(jnp.array([0.0, -4.0, 1.0]), jnp.zeros(3)))] * 3)
  k = np.full(3, 20.0)
  cameras.check_cameras(k, k, k, k, w2c)            # valid
  bad = w2c.copy()
  bad[2, 0, 1] = np.nan
  with pytest.raises(ValueError, match=r"camera 2: world_to_camera has a non-finite value at "
                                       r"\(0, 1\)"):
    cameras.check_cameras(k, k, k, k, bad)
  with pytest.raises(ValueError, match=r"image 7: world_to_camera has a non-finite"):
    cameras.check_cameras(k, k, k, k, bad, names=["image 5", "image 6", "image 7"])
  fx = k.copy()
  fx[1] = -1.0
  with pytest.raises(ValueError, match=r"camera 1: intrinsics .* fx, fy > 0"):
    cameras.check_cameras(fx, k, k, k, w2c)
  bad = w2c.copy()
  bad[0, :3, :3] *= 2.0
  with pytest.raises(ValueError, match=r"camera 0: .*det 8"):
    cameras.check_cameras(k, k, k, k, bad)


def test_scene_checks_name_the_gaussian():
  g, stats = small_scene()
  scene.check_gaussians(g, stats, LR)              # valid
  bad = dict(g, quats=g["quats"].at[4].set(0.0))
  with pytest.raises(ValueError, match="quaternion of Gaussian 4 has zero norm"):
    scene.check_gaussians(bad, stats, LR)
  bad = dict(g, log_scales=g["log_scales"].at[1, 2].set(-jnp.inf))
  with pytest.raises(ValueError, match=r"gaussians\['log_scales'\] of Gaussian 1 is not finite"):
    scene.check_gaussians(bad, stats, LR)
  # A dead slot may hold anything (it never renders).
  scene.check_gaussians(dict(g, quats=g["quats"].at[7].set(0.0)), stats, LR)


def test_insert_over_capacity_and_bad_values():
  g, stats = small_scene(n=6, capacity=8)
  new = render_inputs(2)
  new["features"] = np.zeros((2, 4), np.float32)
  g2, s2 = scene.insert(g, stats, new, LR)
  assert float(jnp.sum(s2["alive"])) == 8
  act = scene.activate(g2, LR)
  np.testing.assert_allclose(act["means"][6:], new["means"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(act["opacities"][6:], new["opacities"], rtol=1e-5)
  np.testing.assert_allclose(act["colors"][6:], new["colors"], rtol=1e-5)
  np.testing.assert_allclose(jnp.exp(act["log_scales"][6:]), new["scales"], rtol=1e-5)
  three = {k: np.concatenate([v, v[:1]]) for k, v in new.items()}
  with pytest.raises(ValueError, match=r"inserting 3 Gaussians exceeds the capacity: 2 of 8"):
    scene.insert(g, stats, three, LR)
  for key, idx, value, msg in (("scales", (1, 0), 0.0, r"new Gaussian 1: scales .* must be > 0"),
                               ("scales", (0, 2), -1.0, r"new Gaussian 0: scales"),
                               ("quats", (1,), 0.0, r"new Gaussian 1: quats .* zero norm"),
                               ("means", (0, 1), np.nan, r"new Gaussian 0: means is not finite")):
    bad = {k: v.copy() for k, v in new.items()}
    bad[key][idx] = value
    with pytest.raises(ValueError, match=msg):
      scene.insert(g, stats, bad, LR)


def write_capture(root, n=3, drop_image=None, drop_key=None):
  os.makedirs(os.path.join(root, "train"), exist_ok=True)
  frames = []
  for i in range(n):
    Image.fromarray(np.full((6, 8, 3), 40 * i, np.uint8)).save(
        os.path.join(root, "train", f"r_{i}.png"))
    c2w = np.eye(4)
    c2w[2, 3] = 3.0 + i
    frames.append({"file_path": f"train/r_{i}", "transform_matrix": c2w.tolist(),
                   "time": i / max(n - 1, 1)})
  if drop_image is not None:
    os.remove(os.path.join(root, "train", f"r_{drop_image}.png"))
  if drop_key is not None:
    del frames[drop_key[0]][drop_key[1]]
  with open(os.path.join(root, "transforms.json"), "w") as f:
    json.dump({"camera_angle_x": 0.7, "frames": frames}, f)


def test_transforms_with_missing_frames(tmp_path):
  write_capture(str(tmp_path / "ok"))
  assert len(captures.load_transforms(str(tmp_path / "ok"))) == 3
  write_capture(str(tmp_path / "a"), drop_image=1)
  with pytest.raises(FileNotFoundError, match=r"frame 1 \('train/r_1'\).*r_1.png does not exist"):
    captures.load_transforms(str(tmp_path / "a"))
  write_capture(str(tmp_path / "b"), drop_key=(2, "transform_matrix"))
  with pytest.raises(ValueError, match=r"frame 2 .* needs 'file_path' and 'transform_matrix'"):
    captures.load_transforms(str(tmp_path / "b"))
  write_capture(str(tmp_path / "c"), drop_key=(0, "time"))
  with pytest.raises(ValueError, match=r"frame 0 .* has no 'time'"):
    captures.load_transforms(str(tmp_path / "c"))
  os.makedirs(tmp_path / "d")
  json.dump({"camera_angle_x": 0.7, "frames": []}, open(tmp_path / "d" / "transforms.json", "w"))
  with pytest.raises(ValueError, match=r"transforms.json: no frames"):
    captures.load_transforms(str(tmp_path / "d"))

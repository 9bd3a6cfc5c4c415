"""Spinning cubes: yaw physics, oriented-box rendering, sense seen from above."""
import dataclasses

import numpy as np
import pytest

from mfm_jax.data.world import camera as camera_lib
from mfm_jax.data.world import episode
from mfm_jax.data.world import render
from mfm_jax.data.world import sim

SPEC = episode.world_v2_spec()


def top_down_camera(x=0.0, y=0.0, height=5.0, size=64):
  """Looks straight down at (x, y): image right = +x, image up = +y."""
  return camera_lib.Camera.from_fov(40, size, size, camera_lib.look_at(
      (x, y, height), (x, y, 0.0), up=(0.0, 1.0, 0.0)))


def orientation(mask: np.ndarray) -> float:
  """Angle (mod pi / 2) of a square silhouette, counterclockwise on screen.

  arg of the 4-fold moment sum((x + iy)^4) in screen coordinates with y up
  (image v points down): a square turned by a turns it by 4a.
  """
  v, u = np.nonzero(mask)
  z = (u - u.mean()) - 1j * (v - v.mean())
  return (np.angle(np.sum(z ** 4)) - np.pi) / 4


def screen_turns(instance: np.ndarray, k: int) -> np.ndarray:
  """[T - 1] on-screen turns (radians, > 0 counterclockwise) of object k."""
  angles = np.array([orientation(m == k + 1) for m in instance])
  return (np.diff(angles) + np.pi / 4) % (np.pi / 2) - np.pi / 4


def _cube_scene(spin, spec, yaw=0.3, velocity=(0.0, 0.0)):
  k = spec.max_objects
  mask = np.arange(k) < 1
  z = np.zeros(k, np.float32)
  objects = sim.ObjectSet(
      mask=mask, shape=np.full(k, sim.CUBE, np.int32),
      color=np.arange(k, dtype=np.int32), size=np.zeros(k, np.int32),
      radius=np.where(mask, 0.5, 0).astype(np.float32),
      position=np.zeros((k, 2), np.float32),
      velocity=np.where(mask[:, None], velocity, 0).astype(np.float32),
      yaw=np.where(mask, yaw, z).astype(np.float32),
      spin=np.where(mask, spin, z).astype(np.float32))
  return sim.run_physics(objects, spec)


def test_spin_draws_come_last_and_only_cubes_spin():
  plain = dataclasses.replace(SPEC, spin_prob=0.0)
  senses, rates = set(), []
  for seed in range(30):
    a, b = sim.simulate(seed, SPEC), sim.simulate(seed, plain)
    for key in ("mask", "shape", "color", "size", "position", "velocity",
                "material"):
      np.testing.assert_array_equal(getattr(a.objects, key),
                                    getattr(b.objects, key), err_msg=key)
    np.testing.assert_array_equal(a.positions, b.positions)  # spin: no force
    assert not np.any(b.yaws) and not np.any(b.spins)
    obj = a.objects
    not_cube = ~(obj.mask & (obj.shape == sim.CUBE))
    assert not np.any(obj.yaw[not_cube]) and not np.any(obj.spin[not_cube])
    assert not np.any(a.yaws[:, not_cube])
    spin = obj.spin[obj.spin != 0]
    rates += np.abs(spin).tolist()
    senses |= {sim.rotation_sense(w) for w in spin}
  assert senses == {"clockwise", "counterclockwise"}
  assert SPEC.min_spin <= min(rates) and max(rates) <= SPEC.max_spin
  v1 = sim.simulate(3, sim.WorldSpec())
  assert not np.any(v1.objects.yaw) and not np.any(v1.yaws)


def test_spec_rejects_aliasing_spin_rates():
  with pytest.raises(ValueError, match="max_spin < pi / 4 \\* fps"):
    sim.WorldSpec(spin_prob=0.5, max_spin=3.5, fps=4.0)
  sim.WorldSpec(spin_prob=0.0, max_spin=3.5, fps=4.0)   # spin off: unchecked


def test_spin_integrates_and_friction_slows_it():
  free = sim.WorldSpec(num_frames=9)
  scene = _cube_scene(-2.0, free)
  t = np.arange(9) / free.fps
  np.testing.assert_allclose(scene.spins[:, 0], -2.0)
  np.testing.assert_allclose(scene.yaws[:, 0], 0.3 - 2.0 * t, atol=1e-5)
  damped = _cube_scene(2.0, dataclasses.replace(free, friction=0.5))
  np.testing.assert_allclose(damped.spins[:, 0], 2.0 * np.exp(-0.5 * t),
                             rtol=1e-5)
  coulomb = dataclasses.replace(free, num_frames=16, decel=1.0)
  scene = _cube_scene(2.0, coulomb)
  rate = scene.spins[:, 0]
  slope = sim.SPIN_FRICTION * 1.0 / 0.5 / coulomb.fps    # per frame
  moving = np.flatnonzero(rate[1:] > 0)
  np.testing.assert_allclose(-np.diff(rate)[moving], slope, rtol=1e-4)
  assert rate[-1] == 0 and np.all(np.diff(rate) <= 0)     # stops, no reversal
  assert not any(e.kind == "stop" for e in scene.events)  # it never slid


def test_collisions_leave_spin_unchanged():
  spec = sim.WorldSpec(num_frames=16)
  k = spec.max_objects
  mask = np.arange(k) < 2
  objects = sim.ObjectSet(
      mask=mask, shape=np.full(k, sim.CUBE, np.int32),
      color=np.arange(k, dtype=np.int32), size=np.zeros(k, np.int32),
      radius=np.where(mask, 0.35, 0).astype(np.float32),
      position=np.array([[-1, 0], [1, 0], [0, 0], [0, 0]], np.float32),
      velocity=np.array([[2, 0], [-2, 0], [0, 0], [0, 0]], np.float32),
      spin=np.array([1.5, -2.5, 0, 0], np.float32))
  scene = sim.run_physics(objects, spec)
  hit = next(e for e in scene.events if e.kind == "collision")
  assert scene.velocities[hit.frame, 0, 0] < 0            # bounced back
  np.testing.assert_array_equal(scene.spins[:, :2],
                                np.broadcast_to([1.5, -2.5], (16, 2)))


def test_zero_yaw_render_is_the_axis_aligned_render():
  scene = next(s for s in (sim.simulate(i, sim.WorldSpec()) for i in range(9))
               if np.any(s.objects.shape[s.mask] == sim.CUBE))
  obj = scene.objects
  args = (scene.positions, obj.radius, obj.shape == sim.CUBE,
          sim.palette_rgb()[obj.color], obj.mask,
          camera_lib.world_camera(scene.spec))
  old = render.render_frames(*args)
  zero = render.render_frames(*args, yaw=np.zeros(scene.yaws.shape))
  quarter = render.render_frames(*args, yaw=np.full(scene.yaws.shape,
                                                    np.pi / 2))
  for key in old:
    np.testing.assert_array_equal(old[key], zero[key], err_msg=key)
    np.testing.assert_allclose(old[key], quarter[key], atol=1e-4)  # symmetry
  np.testing.assert_array_equal(render.render(scene)["rgb"], old["rgb"])


def test_turned_cube_silhouette_from_above():
  """Seen from above, a cube at yaw a is a square of side 2r turned by a."""
  cam = top_down_camera(size=128)
  pos = np.array([[[0.0, 0.0, 0.5]]] * 3, np.float32)
  yaw = np.array([[0.0], [np.pi / 8], [np.pi / 4]], np.float32)
  inst = render.render_frames(pos, [0.5], [True], [[200, 30, 30]], [True],
                              cam, yaw=yaw)["instance"]
  widths = np.array([np.ptp(np.nonzero(m.any(0))[0]) + 1 for m in inst])
  areas = inst.reshape(3, -1).sum(-1)
  grow = np.cos(yaw[:, 0]) + np.sin(yaw[:, 0])            # |cos| + |sin|
  np.testing.assert_allclose(widths / widths[0], grow, rtol=0.05)
  np.testing.assert_allclose(areas / areas[0], 1.0, rtol=0.03)
  np.testing.assert_allclose(screen_turns(inst, 0), np.pi / 8, atol=0.03)


@pytest.mark.parametrize("rate", [2.0, -2.0, 3.5])
def test_rendered_sense_matches_the_sim(rate):
  """The sense named by sim.rotation_sense is the one seen on screen, from a
  camera straight above and from the oblique world camera (OpenCV, v down)."""
  scene = _cube_scene(rate, sim.WorldSpec(num_frames=8, width=64,
                                          height=64))
  sense = sim.rotation_sense(scene.spins[0, 0])
  assert sense == ("counterclockwise" if rate > 0 else "clockwise")
  sign = 1.0 if sense == "counterclockwise" else -1.0
  top = screen_turns(render.render(scene, top_down_camera())["instance"], 0)
  np.testing.assert_allclose(top, rate / scene.spec.fps, rtol=0.25)
  oblique = screen_turns(render.render(scene)["instance"], 0)
  assert sign * oblique.sum() > 0.5 * abs(rate) * 7 / scene.spec.fps

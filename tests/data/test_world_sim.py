"""Physics of the procedural world: determinism, masks, walls, collisions."""
import numpy as np
import pytest

from mfm_jax.data.world import sim

SPEC = sim.WorldSpec()


def _two_objects(p0, v0, p1, v1, sizes=(0, 0), spec=SPEC):
  k = spec.max_objects
  mask = np.arange(k) < 2
  size = np.array(list(sizes) + [0] * (k - 2), np.int32)
  radius = np.where(mask, np.asarray(spec.sizes)[size], 0).astype(np.float32)
  pos = np.zeros((k, 2), np.float32)
  vel = np.zeros((k, 2), np.float32)
  pos[:2] = [p0, p1]
  vel[:2] = [v0, v1]
  return sim.ObjectSet(mask=mask, shape=np.zeros(k, np.int32),
                       color=np.arange(k, dtype=np.int32), size=size,
                       radius=radius, position=pos, velocity=vel)


def test_deterministic_by_seed():
  a, b, c = sim.simulate(7, SPEC), sim.simulate(7, SPEC), sim.simulate(8, SPEC)
  np.testing.assert_array_equal(a.positions, b.positions)
  np.testing.assert_array_equal(a.objects.color, b.objects.color)
  assert a.events == b.events
  assert not np.array_equal(a.positions, c.positions)


@pytest.mark.parametrize("seed", range(0, 40, 3))
def test_object_count_masks_and_unique_colors(seed):
  scene = sim.simulate(seed, SPEC)
  n = scene.num_objects
  assert SPEC.min_objects <= n <= SPEC.max_objects
  np.testing.assert_array_equal(scene.mask, np.arange(SPEC.max_objects) < n)
  assert len(set(scene.objects.color[:n].tolist())) == n
  assert scene.positions.shape == (SPEC.num_frames, SPEC.max_objects, 3)
  assert np.all(scene.positions[:, ~scene.mask] == 0)
  # Objects rest on the ground: centre height = radius.
  np.testing.assert_allclose(scene.positions[:, scene.mask, 2],
                             np.broadcast_to(scene.objects.radius[:n],
                                             (SPEC.num_frames, n)))


def test_min_max_objects_respected():
  spec = sim.WorldSpec(min_objects=3, max_objects=3)
  assert {sim.simulate(s, spec).num_objects for s in range(10)} == {3}


def test_objects_stay_in_arena_and_energy_is_conserved():
  half = SPEC.arena_size / 2
  for seed in range(30):
    scene = sim.simulate(seed, SPEC)
    r = scene.objects.radius[scene.mask]
    xy = np.abs(scene.positions[:, scene.mask, :2])
    assert np.all(xy <= half - r[None, :, None] + 1e-3), seed
    energy = sim.kinetic_energy(scene)
    assert energy[0] > 0  # at least one object moves
    np.testing.assert_allclose(energy, energy[0], rtol=1e-5)


def test_friction_dissipates_energy():
  scene = sim.simulate(3, sim.WorldSpec(friction=0.5))
  energy = sim.kinetic_energy(scene)
  assert np.all(np.diff(energy) < 0)


def test_head_on_collision_swaps_equal_velocities():
  objects = _two_objects((-1.0, 0.0), (2.0, 0.0), (1.0, 0.0), (-2.0, 0.0))
  scene = sim.run_physics(objects, SPEC)
  first = scene.events[0]
  assert (first.kind, first.i, first.j) == ("collision", 0, 1)
  # Contact after (2 - 2 * 0.35) / 4 s.
  assert first.time == pytest.approx(0.325, abs=1.0 / (SPEC.fps * SPEC.substeps))
  after = scene.velocities[first.frame, :2, :2]
  np.testing.assert_allclose(after, [[-2.0, 0.0], [2.0, 0.0]], atol=1e-5)


def test_collision_reverses_approach_velocity_unequal_masses():
  objects = _two_objects((-1.2, -0.3), (1.5, 0.4), (0.8, 0.1), (-0.5, 0.0),
                         sizes=(1, 0))
  scene = sim.run_physics(objects, SPEC)
  event = next(e for e in scene.events if e.kind == "collision")
  before, after = event.frame - 1, event.frame
  p, v = scene.positions[:, :2, :2], scene.velocities[:, :2, :2]
  n = p[after, 1] - p[after, 0]
  n /= np.linalg.norm(n)
  approach_before = np.dot(v[before, 0] - v[before, 1], n)
  approach_after = np.dot(v[after, 0] - v[after, 1], n)
  assert approach_before > 0.5
  np.testing.assert_allclose(approach_after, -approach_before, rtol=0.05)
  m = objects.mass[:2]
  np.testing.assert_allclose(m @ v[after], m @ v[before], atol=1e-5)


def test_wall_bounce_flips_velocity_and_is_recorded():
  objects = _two_objects((2.0, 0.0), (2.0, 0.0), (-2.0, -2.0), (0.0, 0.0))
  scene = sim.run_physics(objects, SPEC)
  assert scene.velocities[-1, 0, 0] == pytest.approx(-2.0)
  walls = [e for e in scene.events if e.kind == "wall"]
  assert walls and walls[0].i == 0 and walls[0].wall == "x_max"


def test_invalid_spec_raises():
  with pytest.raises(ValueError, match="min_objects"):
    sim.WorldSpec(min_objects=5, max_objects=4)
  with pytest.raises(ValueError, match="palette"):
    sim.WorldSpec(min_objects=2, max_objects=9)

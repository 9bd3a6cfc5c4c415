"""Physics of the procedural world: objects sliding on a ground plane.

World frame (right-handed, metres-like units):
  * the ground is the plane z = 0 and +z points up;
  * the arena is the square |x| <= arena_size / 2, |y| <= arena_size / 2, closed
    by four invisible walls; +x is "right" and +y is "away" from the default
    camera, which stands at negative y looking towards +y and down.

An object is a sphere (radius r), a cube (half-side r, vertical edges, turned
by its yaw) or an upright cylinder (radius r, half-height r) resting on the
ground, so its centre is at height z = r; it is matte or metal (rendering
only). Motion is 2D on the plane: no friction by default (energy is
conserved), elastic object-object collisions (objects collide as discs of
radius r, mass proportional to r^3) and elastic bounces on the walls. Two
optional frictions: `friction` (linear damping, speeds decay but never reach
0) and `decel` (Coulomb-like constant deceleration: objects come to rest,
which is recorded as a `stop` event). Everything is deterministic given the
seed.

Spin (off unless `spin_prob` > 0): cubes get a random yaw and, with
probability spin_prob, a yaw rate of [min_spin, max_spin] rad/s and random
sign. Yaw is counterclockwise about +z, i.e. seen from above (`rotation_sense`);
it is stored unwrapped. Spheres and cylinders get no yaw or spin: drawn
without texture, their yaw would be invisible. `friction` damps yaw rates like
velocities; `decel` removes SPIN_FRICTION * decel / r of yaw rate per second
(spins stop; no event). Collisions leave spin unchanged (frictionless
contacts: the impulse is along the line of centres, no torque).

Events (`Event.kind`): "collision" (i, j), "wall" (i, wall), "stop" (i) from
the physics here; "enter" / "exit" (i) depend on a camera and are computed from
projections in `annotate.view_events`.

Backward compatibility: the defaults of every WorldSpec field reproduce world
v1 bit for bit (tests/data/test_world_v1_pinned.py); new random draws happen
after all v1 draws, and only when their feature is switched on.

Arrays are padded to a fixed capacity K = spec.max_objects with `mask` marking
the real objects (static shapes). Written by hand (no kept library simulates
this tiny world); twins re-run `run_physics` on edited `ObjectSet`s.
"""
from __future__ import annotations

import dataclasses

import numpy as np

# A fixed palette of 8 well-separated saturated colours (hues about 30 degrees
# or more apart). No gray / white / black: the trajectory metric finds objects
# by colour and the ground is neutral gray.
COLOR_NAMES = ("red", "green", "blue", "yellow", "cyan", "magenta", "orange",
               "purple")
PALETTE = (
    (220, 30, 30),    # red       hue   0
    (40, 190, 40),    # green     hue 120
    (40, 70, 230),    # blue      hue 229
    (230, 210, 30),   # yellow    hue  54
    (30, 200, 210),   # cyan      hue 183
    (215, 40, 205),   # magenta   hue 303
    (240, 125, 20),   # orange    hue  29
    (130, 40, 215),   # purple    hue 271
)
SHAPE_NAMES = ("sphere", "cube", "cylinder")
SIZE_NAMES = ("small", "large")   # names of 2 sizes (v1); 3: size_names()
MATERIAL_NAMES = ("matte", "metal")
SPHERE, CUBE, CYLINDER = 0, 1, 2
MATTE, METAL = 0, 1
# (Angular / linear Coulomb deceleration) * r of a cube on its square base,
# uniform pressure: torque mu m g r (sqrt 2 + asinh 1) / 3, inertia 2 m r^2 / 3.
SPIN_FRICTION = (np.sqrt(2.0) + np.arcsinh(1.0)) / 2.0


def size_names(num_sizes: int) -> tuple[str, ...]:
  """Names of `num_sizes` sizes, smallest first (2: v1's small/large)."""
  table = {1: ("medium",), 2: SIZE_NAMES, 3: ("small", "medium", "large")}
  if num_sizes not in table:
    raise ValueError(f"the world has 1 to 3 sizes, got {num_sizes}")
  return table[num_sizes]


def palette_rgb() -> np.ndarray:
  """Returns the palette as a fresh array. Returns: [8, 3] uint8."""
  return np.asarray(PALETTE, dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class WorldSpec:
  """Everything that defines a clip of the world, besides its seed."""
  num_frames: int = 16
  height: int = 64
  width: int = 64
  min_objects: int = 2
  max_objects: int = 4            # capacity K of every per-object array
  fps: float = 8.0
  substeps: int = 8               # physics steps per frame
  arena_size: float = 6.0         # side of the square arena
  sizes: tuple[float, ...] = (0.35, 0.55)  # radius / half-side per size
  shapes: tuple[str, ...] = ("sphere", "cube")  # names from SHAPE_NAMES
  metal_prob: float = 0.0         # probability that an object is metal
  decel: float = 0.0              # Coulomb friction, units / s^2 (stops)
  min_speed: float = 1.0          # units per second
  max_speed: float = 2.6
  still_prob: float = 0.2         # probability that an object starts at rest
  friction: float = 0.0           # linear damping per second (0: elastic world)
  spin_prob: float = 0.0          # probability that a cube spins (0: no yaw)
  min_spin: float = 1.0           # |yaw rate| of a spinning cube, rad / s
  max_spin: float = 2.5           # (max_spin / fps < pi / 4: see __post_init__)
  # The one fixed oblique camera of v1 (see camera.py).
  camera_eye: tuple[float, float, float] = (0.0, -6.0, 8.0)
  camera_target: tuple[float, float, float] = (0.0, 0.0, 0.0)
  fov_deg: float = 46.0
  # Lighting: direction towards the light, ambient term.
  light_dir: tuple[float, float, float] = (-0.45, -0.6, 1.0)
  ambient: float = 0.4

  def __post_init__(self):
    if not 1 <= self.min_objects <= self.max_objects:
      raise ValueError(
          f"WorldSpec needs 1 <= min_objects <= max_objects, got "
          f"min_objects={self.min_objects}, max_objects={self.max_objects}")
    if self.max_objects > len(PALETTE):
      raise ValueError(f"WorldSpec.max_objects={self.max_objects} exceeds the "
                       f"{len(PALETTE)} palette colours (colours are unique).")
    unknown = [s for s in self.shapes if s not in SHAPE_NAMES]
    if unknown or not self.shapes:
      raise ValueError(f"WorldSpec.shapes={self.shapes}: names must be in "
                       f"{SHAPE_NAMES}")
    size_names(len(self.sizes))  # raises on a bad count
    if self.num_frames < 1 or self.height < 1 or self.width < 1:
      raise ValueError(f"WorldSpec needs positive num_frames/height/width, got "
                       f"{self.num_frames}/{self.height}/{self.width}")
    # A quarter turn looks like none: >= pi / 4 per frame aliases the sense.
    if self.spin_prob > 0 and not (
        0 < self.min_spin <= self.max_spin < np.pi / 4 * self.fps):
      raise ValueError(f"WorldSpec with spin_prob > 0 needs 0 < min_spin <= "
                       f"max_spin < pi / 4 * fps, got {self.min_spin}, "
                       f"{self.max_spin} at fps={self.fps}")

  @property
  def size_names(self) -> tuple[str, ...]:
    return size_names(len(self.sizes))

  @property
  def shape_ids(self) -> np.ndarray:
    """[S] int32 indices into SHAPE_NAMES of the shapes this spec draws."""
    return np.asarray([SHAPE_NAMES.index(s) for s in self.shapes], np.int32)


@dataclasses.dataclass(frozen=True)
class Event:
  """A physical event. `frame` is the first frame showing its outcome."""
  kind: str          # "collision", "wall", "stop", "enter" or "exit"
  frame: int
  time: float        # seconds from the first frame
  i: int             # object index
  j: int = -1        # other object index for collisions, -1 for walls
  wall: str = ""     # "x_min", "x_max", "y_min", "y_max" for wall bounces


@dataclasses.dataclass(frozen=True, eq=False)
class ObjectSet:
  """Initial state of the objects. Arrays padded to capacity K."""
  mask: np.ndarray       # [K] bool
  shape: np.ndarray      # [K] int32, index into SHAPE_NAMES
  color: np.ndarray      # [K] int32, index into COLOR_NAMES / PALETTE
  size: np.ndarray       # [K] int32, index into SIZE_NAMES
  radius: np.ndarray     # [K] float32, sphere radius or cube half-side
  position: np.ndarray   # [K, 2] float32, (x, y) on the ground
  velocity: np.ndarray   # [K, 2] float32, units per second
  material: np.ndarray | None = None  # [K] int32 MATTE / METAL; None: matte
  yaw: np.ndarray | None = None       # [K] float32 radians; None: 0
  spin: np.ndarray | None = None      # [K] float32 yaw rate, rad / s; None: 0

  def __post_init__(self):
    k = self.mask.shape[0]
    if self.material is None:
      object.__setattr__(self, "material", np.zeros(k, np.int32))
    for key in ("yaw", "spin"):
      if getattr(self, key) is None:
        object.__setattr__(self, key, np.zeros(k, np.float32))

  @property
  def num_objects(self) -> int:
    return int(self.mask.sum())

  @property
  def mass(self) -> np.ndarray:
    """[K] float32; zero for padding."""
    return np.where(self.mask, self.radius ** 3, 0.0).astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class Scene:
  """A simulated clip: the objects and their 3D motion."""
  seed: int
  spec: WorldSpec
  objects: ObjectSet
  positions: np.ndarray   # [T, K, 3] float32 centres (z = radius); 0 if padded
  velocities: np.ndarray  # [T, K, 3] float32
  events: tuple[Event, ...]
  yaws: np.ndarray | None = None   # [T, K] float32 radians, unwrapped; None: 0
  spins: np.ndarray | None = None  # [T, K] float32 yaw rates; None: 0

  def __post_init__(self):
    for key in ("yaws", "spins"):
      if getattr(self, key) is None:
        object.__setattr__(self, key, np.zeros(self.positions.shape[:2],
                                               np.float32))

  @property
  def mask(self) -> np.ndarray:
    return self.objects.mask

  @property
  def num_objects(self) -> int:
    return self.objects.num_objects


def sample_objects(rng: np.random.Generator, spec: WorldSpec) -> ObjectSet:
  """Draws 2..K objects with unique colours, non-overlapping on the plane."""
  k = spec.max_objects
  n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
  mask = np.arange(k) < n
  color = np.zeros(k, np.int32)
  color[:n] = rng.choice(len(PALETTE), size=n, replace=False)
  shape = np.where(mask, spec.shape_ids[rng.integers(0, len(spec.shapes),
                                                     size=k)], 0)
  shape = shape.astype(np.int32)
  size = np.where(mask, rng.integers(0, len(spec.sizes), size=k), 0)
  size = size.astype(np.int32)
  radius = np.where(mask, np.asarray(spec.sizes)[size], 0.0).astype(np.float32)
  half = spec.arena_size / 2
  position = np.zeros((k, 2), np.float32)
  for i in range(n):
    for _ in range(1000):
      lim = half - radius[i] - 0.1
      p = rng.uniform(-lim, lim, size=2)
      gaps = np.linalg.norm(position[:i] - p, axis=-1) - radius[:i] - radius[i]
      if np.all(gaps > 0.15):
        break
    else:
      raise RuntimeError(f"could not place {n} objects in an arena of size "
                         f"{spec.arena_size}; shrink WorldSpec.sizes")
    position[i] = p
  speed = rng.uniform(spec.min_speed, spec.max_speed, size=k)
  still = rng.random(size=k) < spec.still_prob
  if n and np.all(still[:n]):
    still[int(rng.integers(0, n))] = False  # at least one object moves
  angle = rng.uniform(0.0, 2 * np.pi, size=k)
  velocity = np.stack([np.cos(angle), np.sin(angle)], -1) * speed[:, None]
  velocity = np.where((mask & ~still)[:, None], velocity, 0.0)
  material = np.zeros(k, np.int32)
  if spec.metal_prob > 0:  # drawn last: v1 streams are unchanged
    material = np.where(mask & (rng.random(size=k) < spec.metal_prob),
                        METAL, MATTE).astype(np.int32)
  yaw = spin = np.zeros(k, np.float32)
  if spec.spin_prob > 0:   # drawn after metal: streams without spin unchanged
    cube = mask & (shape == CUBE)
    yaw = np.where(cube, rng.uniform(0.0, np.pi / 2, size=k), 0.0)
    rate = (rng.uniform(spec.min_spin, spec.max_spin, size=k)
            * rng.choice([-1.0, 1.0], size=k))
    spin = np.where(cube & (rng.random(size=k) < spec.spin_prob), rate, 0.0)
  return ObjectSet(mask=mask, shape=shape, color=color, size=size,
                   radius=radius, position=position,
                   velocity=velocity.astype(np.float32), material=material,
                   yaw=yaw.astype(np.float32), spin=spin.astype(np.float32))


def _collide(p, v, m, i, j) -> bool:
  """Elastic collision of discs i, j in place if they overlap and approach."""
  d = p[j] - p[i]
  dist = float(np.hypot(d[0], d[1]))
  n = d / dist if dist > 1e-9 else np.array([1.0, 0.0])
  approach = float(np.dot(v[i] - v[j], n))
  if approach <= 0:
    return False
  mi, mj = m[i], m[j]
  v[i] -= (2 * mj / (mi + mj)) * approach * n
  v[j] += (2 * mi / (mi + mj)) * approach * n
  return True


def _decelerate(v, dv, mask, frame, time, events):
  """Removes speed dv from every moving object in place; records stops."""
  speed = np.hypot(v[:, 0], v[:, 1])
  moving = speed > 0
  new = np.maximum(speed - dv, 0.0)
  v *= np.where(moving, new / np.where(moving, speed, 1.0), 0.0)[:, None]
  for i in np.flatnonzero(moving & (new == 0) & mask):
    events.append(Event("stop", frame, time, int(i)))


def run_physics(objects: ObjectSet, spec: WorldSpec, seed: int = 0) -> Scene:
  """Integrates the objects for spec.num_frames frames.

  Frame 0 is the initial state; each frame advances 1 / fps seconds in
  spec.substeps steps. Walls and collisions are elastic; spec.friction
  damps velocities, spec.decel removes decel * dt of speed per step and
  brings objects to rest (a "stop" event when a moving object stops). Yaw
  rates decay by the same friction (see the module docstring); collisions
  do not change them.

  Args:
    objects: initial state, capacity K.
    spec: the world spec.
    seed: recorded in the Scene (the physics itself is deterministic).

  Returns:
    The Scene with positions / velocities [T, K, 3], yaws / spins [T, K]
    and the event list.
  """
  t_count, k = spec.num_frames, objects.mask.shape[0]
  mask = objects.mask
  p = objects.position.astype(np.float64).copy()
  v = objects.velocity.astype(np.float64).copy()
  r = objects.radius.astype(np.float64)
  m = np.where(mask, r ** 3, 1.0)
  half = spec.arena_size / 2
  dt = 1.0 / (spec.fps * spec.substeps)
  damp = np.exp(-spec.friction * dt)
  lo = np.where(mask, -half + r, -np.inf)[:, None]  # [K, 1] wall limits
  hi = np.where(mask, half - r, np.inf)[:, None]
  pair_i, pair_j = np.triu_indices(k, 1)
  pair_ok = mask[pair_i] & mask[pair_j]
  pair_i, pair_j = pair_i[pair_ok], pair_j[pair_ok]
  r_pair = r[pair_i] + r[pair_j]
  touching = np.zeros(len(pair_i), bool)  # for one event per contact
  yaw = np.where(mask, objects.yaw, 0.0).astype(np.float64)   # [K] radians
  w = np.where(mask, objects.spin, 0.0).astype(np.float64)    # [K] rad / s
  spin_dv = SPIN_FRICTION * spec.decel * dt / np.where(mask, r, 1.0)
  yaws, spins = np.zeros((t_count, k)), np.zeros((t_count, k))
  yaws[0], spins[0] = yaw, w
  positions, velocities = np.zeros((t_count, k, 2)), np.zeros((t_count, k, 2))
  positions[0], velocities[0] = p, v
  events = []
  walls = (("x_min", "x_max"), ("y_min", "y_max"))
  for frame in range(1, t_count):
    for sub in range(spec.substeps):
      time = (frame - 1 + (sub + 1) / spec.substeps) / spec.fps
      v *= damp
      if spec.decel > 0:
        _decelerate(v, spec.decel * dt, mask, frame, time, events)
      if w.any():
        w *= damp
        if spec.decel > 0:
          w = np.sign(w) * np.maximum(np.abs(w) - spin_dv, 0.0)
        yaw += w * dt
      p += v * dt
      low = (p < lo) & (v < 0)
      high = (p > hi) & (v > 0)
      if low.any() or high.any():
        for i, axis in zip(*np.nonzero(low | high)):
          side = int(high[i, axis])
          bound = hi[i, 0] if side else lo[i, 0]
          p[i, axis] = 2 * bound - p[i, axis]
          v[i, axis] = -v[i, axis]
          events.append(Event("wall", frame, time, int(i),
                              wall=walls[axis][side]))
      if len(pair_i):
        d = p[pair_j] - p[pair_i]
        contact = np.hypot(d[:, 0], d[:, 1]) < r_pair
        for c in np.nonzero(contact)[0] if contact.any() else ():
          i, j = int(pair_i[c]), int(pair_j[c])
          if _collide(p, v, m, i, j) and not touching[c]:
            events.append(Event("collision", frame, time, i, j))
        touching = contact
    positions[frame], velocities[frame] = p, v
    yaws[frame], spins[frame] = yaw, w
  positions = np.where(mask[None, :, None], positions, 0.0)
  velocities = np.where(mask[None, :, None], velocities, 0.0)
  z = np.broadcast_to(np.where(mask, r, 0.0)[None, :, None], (t_count, k, 1))
  pos3 = np.concatenate([positions, z], -1).astype(np.float32)
  vel3 = np.concatenate([velocities, np.zeros_like(z)], -1).astype(np.float32)
  return Scene(seed=seed, spec=spec, objects=objects, positions=pos3,
               velocities=vel3, events=tuple(events),
               yaws=yaws.astype(np.float32), spins=spins.astype(np.float32))


def rotation_sense(yaw_rate: float) -> str:
  """'counterclockwise' (> 0), 'clockwise' (< 0) or '' (0), seen from above.

  From above: looking down -z, +x right and +y up (the ground as a map).
  Every camera of the world is above the ground and sees the same sense on
  screen; in pixel coordinates (OpenCV, v down) atan2(v, u) of a point of a
  counterclockwise-turning cube decreases.
  """
  if yaw_rate > 0:
    return "counterclockwise"
  return "clockwise" if yaw_rate < 0 else ""


def simulate(seed: int, spec: WorldSpec = WorldSpec()) -> Scene:
  """Samples and simulates one scene, deterministically by `seed`."""
  rng = np.random.default_rng(seed)
  return run_physics(sample_objects(rng, spec), spec, seed=seed)


def kinetic_energy(scene: Scene) -> np.ndarray:
  """Total kinetic energy per frame. Returns: [T] float64."""
  v2 = np.sum(scene.velocities.astype(np.float64) ** 2, axis=-1)
  return 0.5 * np.sum(scene.objects.mass[None] * v2, axis=-1)

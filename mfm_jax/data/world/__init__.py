"""The procedural world (v1): objects on a ground plane, one oblique camera.

  sim.py       WorldSpec, simulate(seed, spec) -> Scene (physics, events)
  camera.py    OpenCV pinhole cameras, look_at, project
  render.py    NumPy ray casting: rgb, depth, instance ids
  captions.py  captions in image terms
  generate.py  generate_clip(seed, spec) -> dict; clip_seed(base, split, i)
  builder.py   TFDS builder `world_video` and load_source(...) (imports TFDS)
"""

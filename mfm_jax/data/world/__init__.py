"""The procedural world: objects on a ground plane, one or many cameras.

World v1 (world_video; pinned bit for bit, tests/data/test_world_v1_pinned.py):
  sim.py        WorldSpec, simulate(seed, spec) -> Scene (physics, spin, events)
  camera.py     OpenCV pinhole cameras, look_at, project; orbit / ego cameras
  render.py     NumPy ray casting: rgb, depth, instance ids
  captions.py   captions in image terms (+ describe_varied for v2)
  generate.py   generate_clip(seed, spec) -> dict; clip_seed(base, split, i)
  builder.py    TFDS builder `world_video` and load_source(...) (imports TFDS)
World v2 (new WorldSpec fields; episode.world_v2_spec()):
  annotate.py   per-view rendering, boxes, visibility, enter/exit, motion level
  scene_graph.py  objects + relations with time spans (JSON-able)
  twins.py      counterfactual twins (remove / velocity / colour), diffs
  episode.py    generate_episode(seed, spec, num_views, ego_motion) -> Episode
  questions.py  MMWorld-type questions from the simulation
  questions_vlm4d.py  VLM4D-style questions (direction, counting, rotation, ...)
  formats.py    MMWorld / VLM4D JSON records
  builder_v2.py TFDS builders `world_multiview`, `world_qa`
  export.py     mp4 + JSON export (tools/make_world.py)
"""

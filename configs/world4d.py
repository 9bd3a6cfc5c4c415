"""4D fitting (MorphoSim): dynamic Gaussians + deformation field + feature field on one clip.

Default: fits clip 0 of world_multiview/small (validation split; 4 orbit views x 16 frames of
64 x 64, generated on first use) on CPU in 3.5 minutes with the motion scaffold (128 nodes,
dual-quaternion blending); view 3 and frames 2, 6, 10, 14 are held out; evaluation writes PSNR /
SSIM per held-out view and time, a turntable GIF and truth-vs-render GIFs under
<workdir>/samples/. ``deform=hexplane`` fits the HexPlane field instead (about 2x slower per
step, and on this clip worse on the moving objects).

  python -m mfm_jax.train --config configs/world4d.py --workdir /tmp/world4d
  python -m mfm_jax.train --config configs/world4d.py:smoke --workdir /tmp/w4d_smoke   # seconds
  python -m mfm_jax.train --config configs/world4d.py:deform=hexplane --workdir /tmp/w4d_hex
  python -m mfm_jax.train --config configs/world4d.py:folder=/data/lego --workdir /tmp/lego
      # a nerfstudio / D-NeRF folder with transforms_{train,test}.json (white background)

Arg words: ``smoke``; ``deform=scaffold|hexplane|none``; ``blend=dqb|lbs`` (scaffold);
``clip=N`` (world clip index); ``world=smoke|small|full``; ``folder=PATH``; ``steps=N``;
``capacity=N``; ``batch=N``; ``teacher=random|clip`` (the text head's teacher; ``clip``: the
project's CLIP text tower from the contrastive run in $MFM_CLIP_CHECKPOINT, embed_dim 64 =
``model.text_dim``; `mfm_jax.world4d.teachers`).

  MFM_CLIP_CHECKPOINT=/work/ckpt/clip_world python -m mfm_jax.train \
      --config configs/world4d.py:teacher=clip --workdir /tmp/w4d_clip
"""
import ml_collections

from mfm_jax.engine.config import base_config, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, smoke=False, deform="scaffold", blend="dqb", clip=0, world="small",
                folder="", steps=0, capacity=0, batch=0, teacher="random")
  c = base_config()
  c.task = "fit4d"
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 4                      # images per step
  c.log_every = 50
  c.eval_every = 500
  c.eval_batches = 0                    # the held-out scores come from task.evaluate
  c.checkpoint.every = 500
  # Gaussians replicated, images data-parallel ("gaussians": ("data", "fsdp") shards over N).
  c.mesh.rules = [r if r[0] != "gaussians" else ["gaussians", None] for r in c.mesh.rules]

  c.optimizer.name = "adamw"
  c.optimizer.lr = 1e-3                 # the deformation field and heads; Gaussians: x lr_scale
  c.optimizer.warmup_steps = 20
  c.optimizer.schedule = "cosine"
  c.optimizer.end_lr_factor = 0.1
  c.optimizer.weight_decay = 0.0
  c.optimizer.clip_norm = 0.0
  c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.999, 1e-15

  c.data = ml_collections.ConfigDict(dict(
      source="world", name="world_multiview", builder_config=a.world, split="validation",
      index=a.clip, data_dir=None, heldout_views=(3,), heldout_every=4,
      folder=a.folder, background=(1.0, 1.0, 1.0), downscale=1))
  if a.folder:
    c.data.source = "transforms"
    c.data.heldout_every = 8            # used when the folder has no transforms_test.json

  c.model = ml_collections.ConfigDict(dict(
      capacity=8192, feature_dim=32, init="depth", init_stride=1, init_scale=0.5,
      init_voxel=0.0,                   # depth init: voxel size (0: 2x the median pixel size)
      init_opacity=0.9, init_count=8192, init_radius=0.0,   # random init: count, box half-size
      lr_scale=dict(means=1.0, log_scales=5.0, quats=1.0, opacity_logits=50.0, colors=10.0,
                    features=10.0),
      deformation=dict(
          kind=a.deform,
          hexplane=dict(resolutions=(32, 64), time_resolution=8, features=16, hidden=64, depth=1,
                        combine="product", output_scale=0.1),
          scaffold=dict(num_nodes=128, num_neighbors=4, init_sigma=0.5, blend=a.blend)),
      heads_hidden=64, text_teacher="random", text_dim=64,
      losses=dict(ssim=0.1, depth=0.1, instance=0.05, text=0.05, motion=1e-3, smooth=1.0)))

  # K_t / K_s candidates per tile / sub-tile (render/gaussians.py). Fewer (512 / 64) overflow on
  # the world's far floor and the dropped splats leave holes that training cannot fill.
  c.render = ml_collections.ConfigDict(dict(background=(0.0, 0.0, 0.0), max_per_tile=1024,
                                            max_per_subtile=128))
  c.densify = ml_collections.ConfigDict(dict(
      every=100, start=200, stop=600, stop_prune=800, grad_threshold=2e-4,
      percent_dense=0.01, min_opacity=0.005, max_scale=0.0))
  c.eval = ml_collections.ConfigDict(dict(batch=4, num_train_images=8, turntable_frames=24,
                                          gifs=True))

  if a.folder:
    c.render.background = (1.0, 1.0, 1.0)
    c.model.init = "random"
  if a.smoke:
    c.total_steps = 6
    c.batch_size = 8                   # divisible by the 8 fake test devices
    c.log_every = 2
    c.eval_every = 6
    c.checkpoint.every = 3
    c.optimizer.warmup_steps = 2
    c.data.builder_config = "smoke"    # 4 views x 8 frames of 32 x 32
    c.model.capacity = 2048
    c.model.init_stride = 2
    c.model.deformation.hexplane = dict(resolutions=(8,), time_resolution=4, features=4,
                                        hidden=16, depth=1, combine="product", output_scale=0.1)
    c.model.deformation.scaffold.num_nodes = 16
    c.model.feature_dim, c.model.heads_hidden, c.model.text_dim = 8, 16, 16
    c.densify.update(every=2, start=2, stop=4, stop_prune=6)
    c.eval.update(batch=4, num_train_images=4, turntable_frames=4)
  if a.teacher not in ("random", "clip"):
    raise ValueError(f"configs/world4d.py: teacher={a.teacher!r}; use random or clip")
  if a.teacher == "clip":
    c.model.text_teacher = "mfm_jax.world4d.teachers:clip_from_env"
  if a.steps:
    c.total_steps = a.steps
  if a.capacity:
    c.model.capacity = a.capacity
  if a.batch:
    c.batch_size = a.batch
  return c

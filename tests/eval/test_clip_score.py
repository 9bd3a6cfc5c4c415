"""CLIP-style score against an independent computation (torch cosine similarity)."""
import numpy as np
import pytest
import torch

from mfm_jax.eval import clip_score


def test_matches_torch_cosine():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(32, 16)), rng.normal(size=(32, 16))
  b[:4] = 2.5 * a[:4]          # perfectly aligned pairs -> 100
  b[4:8] = -a[4:8]             # opposite pairs -> 0 (clipped)
  ref = 100 * torch.clamp(torch.nn.functional.cosine_similarity(
      torch.from_numpy(a), torch.from_numpy(b), dim=1), min=0).numpy()
  out = clip_score.clip_score(a, b)
  np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(out[:4], 100.0)
  np.testing.assert_allclose(out[4:8], 0.0)
  assert (out[8:] > 0).any() and (out[8:] == 0).any()


def test_bad_shapes_and_zero_vectors():
  with pytest.raises(ValueError, match="one shape"):
    clip_score.clip_score(np.ones((3, 4)), np.ones((2, 4)))
  with pytest.raises(ValueError, match="all zeros"):
    clip_score.clip_score(np.zeros((1, 4)), np.ones((1, 4)))


def _load_config(name, arg):
  import importlib.util
  import os
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  spec = importlib.util.spec_from_file_location(name, os.path.join(root, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def save_init_clip(workdir, seed=0):
  """A contrastive (video, smoke) run's checkpoint at init: the params tree and the config."""
  import jax
  from flax import linen as nn
  from mfm_jax import tasks
  from mfm_jax.engine import checkpoint as ckpt_lib
  config = _load_config("encoder_pretrain", "smoke,video")
  task = tasks.get(config.task)(config)
  params = jax.device_get(nn.meta.unbox(task.init(jax.random.key(seed))))
  ck = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), async_save=False)
  ck.save(0, params, config=config)
  ck.close()
  return task, params


def test_clip_encoder_scores_match_numpy(tmp_path):
  task, params = save_init_clip(tmp_path)
  enc = clip_score.ClipEncoder(str(tmp_path), batch_size=2)
  assert enc.shape == (4, 16, 16, 3)
  rng = np.random.default_rng(0)
  videos = rng.uniform(-1, 1, size=(3, 8, 32, 32, 3)).astype(np.float32)
  captions = ["a red cube moves left", "a blue sphere", "two objects collide"]
  scores = enc.score(videos, captions)
  # reference: the model applied directly (no batching / padding), cosine and clipping in NumPy
  pix = videos[:, [0, 2, 4, 6]].reshape(3, 4, 16, 2, 16, 2, 3).mean((3, 5))   # area resize
  m, p = task.model, params["clip"]
  img = np.asarray(m.apply({"params": p}, pix, method=m.encode_image), np.float64)
  ids, mask = task.tokenizer.encode(captions)
  txt = np.asarray(m.apply({"params": p}, ids, mask, method=m.encode_text), np.float64)
  cos = (img * txt).sum(1) / np.linalg.norm(img, axis=1) / np.linalg.norm(txt, axis=1)
  np.testing.assert_allclose(scores, 100 * np.maximum(cos, 0), rtol=1e-4, atol=1e-4)
  assert scores.shape == (3,) and np.isfinite(scores).all()
  with pytest.raises(ValueError, match="3 videos but 2 captions"):
    enc.score(videos, captions[:2])

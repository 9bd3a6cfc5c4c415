"""Language edits of a fitted 4D scene (world4d/apply.py, measure.py, teachers.py, truth.py).

The scene is the smoke fit (configs/world4d.py:smoke, trained here: 6 steps, saved and loaded
back through `apply.load_fitted`) of the smoke clip with two spheres, "large purple matte
sphere" and "small orange metal sphere". Six steps leave its feature field untrained (and a
smoke fit long enough to learn it takes minutes), so the fixture gives it the feature field a
converged fit has, by construction: each Gaussian's feature is the one-hot code of its true
instance (`truth.gaussian_labels` at t = 0) and the heads map code k to instance k and to the
fit's own teacher vector of description k. What is tested is the machinery on top: decoding per
Gaussian, teacher / fit consistency, cosine selection, the edits through the fitted deformation,
rendering, and the measurements against the world's truth (instance maps, twin renders). The
learned feature field of the full default fit is measured by tools/edit4d.py (RESULTS.md).
"""
import dataclasses
import importlib.util
import os

import jax.numpy as jnp
import numpy as np
import pytest

from mfm_jax import tasks
from mfm_jax.engine import trainer
from mfm_jax.world4d import apply as apply_lib
from mfm_jax.world4d import commands
from mfm_jax.world4d import measure
from mfm_jax.world4d import teachers
from mfm_jax.world4d import truth

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_config(arg):
  spec = importlib.util.spec_from_file_location("world4d", os.path.join(ROOT, "configs",
                                                                        "world4d.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def exact_feature_field(fs: apply_lib.FittedScene, labels: np.ndarray) -> apply_lib.FittedScene:
  """The fit with features = one-hot(label) and heads decoding code k to instance k / text
  vector k (module docstring)."""
  task = fs.task
  f = fs.params["gaussians"]["features"].shape[1]
  k = len(task.capture.descriptions)
  hidden = task.config.model.heads_hidden
  assert f >= k and hidden >= k
  feats = np.zeros((labels.shape[0], f), np.float32)
  feats[np.arange(labels.shape[0]), labels] = 1.0
  w1 = np.zeros((f, hidden), np.float32)
  w1[:k, :k] = np.eye(k)
  w_inst = np.zeros((hidden, k), np.float32)
  w_inst[:k] = 10.0 * np.eye(k)
  w_text = np.zeros((hidden, task.text_table.shape[1]), np.float32)
  w_text[:k] = np.asarray(task.text_table)
  zeros = lambda n: jnp.zeros(n, jnp.float32)  # noqa: E731
  heads = {"instance_hidden": {"kernel": jnp.asarray(w1), "bias": zeros(hidden)},
           "instance_out": {"kernel": jnp.asarray(w_inst), "bias": zeros(k)},
           "text_hidden": {"kernel": jnp.asarray(w1), "bias": zeros(hidden)},
           "text_out": {"kernel": jnp.asarray(w_text), "bias": zeros(w_text.shape[1])}}
  g = dict(fs.params["gaussians"],
           features=jnp.asarray(feats / task.lr_scale["features"]))
  return dataclasses.replace(fs, params=dict(fs.params, gaussians=g, heads=heads))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
  c = get_config("smoke")
  c.eval_every = 0
  c.eval.gifs = False
  workdir = str(tmp_path_factory.mktemp("fit") / "run")
  trainer.train(c, tasks.get(c.task)(c), workdir)
  fs = apply_lib.load_fitted(workdir)
  assert fs.step == c.total_steps
  assert jax_tree_equal_shapes(fs.params["heads"], exact_feature_field(
      fs, np.zeros(fs.params["stats"]["alive"].shape[0], np.int64)).params["heads"])
  ep = truth.world_episode(c.data)
  labels = truth.gaussian_labels(np.asarray(fs.task.gaussians_at(fs.params, 0.0)["means"]), ep)
  return exact_feature_field(fs, labels), labels


def jax_tree_equal_shapes(a, b) -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      x.shape == y.shape for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_world_teacher_matches_descriptions_and_the_fit_targets(fitted):
  fs, _ = fitted
  desc = fs.task.capture.descriptions
  teacher = teachers.query_teacher(fs.task.config, desc)
  # The query embeddings are exactly the fit's feature targets (task.text_table).
  np.testing.assert_array_equal(teacher.table, np.asarray(fs.task.text_table))
  emb, ids = teacher.embed(commands.parse_target("the purple ball"))
  assert ids == [desc.index("large purple matte sphere")]
  np.testing.assert_array_equal(emb[0], np.asarray(fs.task.text_table)[ids[0]])
  _, ids = teacher.embed(commands.parse_target("all spheres"))
  assert len(ids) == 2
  with pytest.raises(ValueError, match=r"'sphere' is ambiguous: it matches"):
    teacher.embed(commands.parse_target("the sphere"))
  with pytest.raises(ValueError, match=r"no object of the scene matches 'red cube'.*purple"):
    teacher.embed(commands.parse_target("the red cube"))
  with pytest.raises(ValueError, match="not CLIP"):
    teachers.query_teacher(fs.task.config, desc, clip_checkpoint="/nonexistent")


def test_selection_picks_the_target_instance(fitted):
  fs, labels = fitted
  alive = np.asarray(fs.params["stats"]["alive"]) > 0.5
  dec = apply_lib.decode(fs)
  # Instance accuracy of the (per-Gaussian) decode is 1 by construction.
  assert (np.asarray(dec["instance"]).argmax(-1) == labels).all()
  teacher = teachers.query_teacher(fs.task.config, fs.task.capture.descriptions)
  # The default threshold separates the distinct descriptions (unused ids share "nothing").
  distinct = [fs.task.capture.descriptions.index(d) for d in dict.fromkeys(
      fs.task.capture.descriptions)]
  table = teacher.table[distinct] / np.linalg.norm(teacher.table[distinct], axis=-1,
                                                   keepdims=True)
  assert (table @ table.T - 2 * np.eye(len(table))).max() < 0.5
  for phrase, want in (("the purple sphere", 1), ("the small sphere", 2)):
    assert (labels[alive] == want).sum() >= 2
    sel = apply_lib.select(fs, commands.parse_target(phrase), teacher, threshold=0.5)
    assert sel.ids == [want]
    np.testing.assert_array_equal(sel.mask, (labels == want) & alive)
    by_inst = apply_lib.select(fs, commands.parse_target(phrase), teacher, by="instance")
    np.testing.assert_array_equal(by_inst.mask, sel.mask)
  both = apply_lib.select(fs, commands.parse_target("all spheres"), teacher)
  np.testing.assert_array_equal(both.mask, (labels > 0) & alive)
  # A threshold above 1 selects nothing; dead slots are never selected.
  assert not apply_lib.select(fs, commands.parse_target("the purple sphere"), teacher,
                              threshold=1.01).mask.any()


def test_delete_removes_the_target_mask(fitted):
  fs, _ = fitted
  rep, r = measure.run_edit(fs, "remove the purple sphere")
  assert rep["command"]["operation"] == "delete" and rep["target_ids"] == [1]
  assert rep["mask_pixels_decoded_before"] > 0.5 * rep["true_mask_pixels"]
  assert rep["mask_pixels_decoded_after"] < 0.05 * rep["mask_pixels_decoded_before"], rep
  assert rep["true_mask_still_target_after"] < 0.05
  assert r["twin"].shape == r["before"]["rgb"].shape
  # Outside the object the render barely changes; the twin agrees there about as well as the
  # truth agreed with the unedited fit.
  assert rep["psnr_after_vs_before_outside_target"] > 25.0
  # (its shadow stays: baked into the floor Gaussians, absent from the twin)
  assert rep["psnr_vs_twin_outside_target"] > rep["psnr_before_vs_truth_outside_target"] - 3.0


def test_recolour_changes_only_the_target_pixels(fitted):
  fs, _ = fitted
  rep, r = measure.run_edit(fs, "make the orange sphere blue")
  assert rep["command"]["args"]["mode"] == "assign"
  changed = np.abs(r["after"]["rgb"] - r["before"]["rgb"]).max(-1) > measure.CHANGED
  assert changed.sum() > 0.5 * rep["true_mask_pixels"]
  # Exactly: a pixel changes only where a selected Gaussian has alpha >= 1/255.
  assert rep["changed_inside_sel_mask"] == 1.0
  assert rep["psnr_outside_sel_mask_vs_before"] == float("inf")
  # Outside the world's mask of the sphere (dilated 1 px) only faint splat tails change.
  assert rep["psnr_outside_true_mask_vs_before"] > 30.0
  before, after = rep["target_mean_rgb_before"], rep["target_mean_rgb_after"]
  # Bluer, less red (means over the world's mask of a 3-4 pixel sphere: edges dilute them).
  assert after[2] > before[2] + 0.1 and after[0] < before[0], (before, after)
  assert (after[2] - after[0]) > (before[2] - before[0]) + 0.2, (before, after)
  assert (rep["target_mean_abs_err_to_rgb_after"]
          < 0.8 * rep["target_mean_abs_err_to_rgb_before"]), rep


def test_redirect_adds_a_translation_to_the_trajectory(fitted):
  fs, _ = fitted
  teacher = teachers.query_teacher(fs.task.config, fs.task.capture.descriptions)
  cmd = commands.parse("move the purple sphere to the left by 0.5")
  sel = apply_lib.select(fs, cmd.target, teacher)
  edit = apply_lib.make_edit(fs, cmd, sel.mask)
  shift = np.asarray(edit.shift)
  np.testing.assert_allclose(shift[sel.mask], np.tile([-0.5, 0.0, 0.0], (sel.mask.sum(), 1)),
                             atol=1e-6)
  assert not shift[~sel.mask].any()
  cap = fs.task.capture
  idx = np.flatnonzero(cap.views == 0)[[0, -1]]           # t = 0 and t = 1 of view 0
  before = apply_lib.render_images(fs, apply_lib.no_edit(fs), cap, idx)
  after = apply_lib.render_images(fs, edit, cap, idx)
  np.testing.assert_array_equal(after["rgb"][0], before["rgb"][0])   # no shift at t = 0
  moved = apply_lib.render_images(fs, apply_lib.only(fs, sel.mask)._replace(shift=edit.shift),
                                  cap, idx)["alpha"][1]
  still = apply_lib.render_images(fs, apply_lib.only(fs, sel.mask), cap, idx)["alpha"][1]
  # At t = 1 the object's rendered mask sits 0.5 units further along -x: project the shift.
  w2c = cap.world_to_camera[idx[1]]
  du = cap.fx[idx[1]] * (w2c[0, :3] @ [-0.5, 0, 0]) / np.mean(
      w2c[2, :3] @ np.asarray(fs.task.gaussians_at(fs.params, 1.0)["means"])[sel.mask].T
      + w2c[2, 3])
  cols = np.arange(still.shape[1])
  cx = lambda a: float((a.sum(0) * cols).sum() / a.sum())  # noqa: E731
  assert abs((cx(moved) - cx(still)) - du) < 0.35 * abs(du) + 0.5, (cx(moved), cx(still), du)


def test_gaussian_labels_on_known_positions():
  ep = truth.world_episode(get_config("smoke").data)
  sc = ep.scene
  i = int(np.flatnonzero(sc.mask)[0])
  c, r = sc.positions[0, i], float(sc.objects.radius[i])
  pts = np.stack([c, c + [0.9 * r, 0, 0], c + [0, 0, -0.999 * r], c + [3 * r, 0, 0]])
  pts[2, 2] = 0.0                                             # on the floor under the object
  labels = truth.gaussian_labels(pts.astype(np.float32), ep, frame=0)
  assert labels[0] == i + 1 and labels[1] == i + 1 and labels[2] == 0
  twin = truth.render_without(ep, i)
  assert not (twin["instance"] == i + 1).any()
  with pytest.raises(ValueError, match="object 3 is not in the scene"):
    truth.render_without(ep, 3)

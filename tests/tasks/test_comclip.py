"""Task ``compositional`` (ComCLIP): boxes and crops, the composition formula, the negatives,
the smoke config end to end, and a toy encoder on which ComCLIP must beat global CLIP."""
import json
import os

import numpy as np
import pytest
from scipy.special import softmax

from mfm_jax.data import compositional as comp
from mfm_jax.data import image_text
from mfm_jax.tasks import compositional as task_lib


# --- boxes and crops ---------------------------------------------------------------------------
def _instance():
  inst = np.zeros((8, 10), np.uint8)
  inst[2:5, 3:7] = 1          # slot 0: rows 2-4, cols 3-6
  inst[6, 9] = 3              # slot 2: one pixel
  inst[4, 3] = 0              # a hole does not change the box
  return inst


def test_boxes_from_instance_masks():
  boxes, valid = comp.boxes_from_instance(_instance(), 4)
  np.testing.assert_array_equal(valid, [True, False, True, False])
  np.testing.assert_array_equal(boxes[0], (3, 2, 7, 5))     # (x0, y0, x1, y1), half-open
  np.testing.assert_array_equal(boxes[2], (9, 6, 10, 7))
  boxes, valid = comp.boxes_from_instance(_instance(), 4, min_pixels=2)
  np.testing.assert_array_equal(valid, [True, False, False, False])
  record = {"instance": np.stack([np.zeros_like(_instance()), _instance()]),
            "obj_mask": np.array([True, True, False, False])}
  boxes, valid = comp.MaskBoxes(min_pixels=1)(record, 0, 1)
  np.testing.assert_array_equal(valid, [True, False, False, False])  # slot 2 is padding
  assert not comp.MaskBoxes(1)(record, 0, 0)[1].any()


def test_given_boxes():
  record = {"obj_mask": np.array([True, True, True])}
  given = comp.GivenBoxes({(0, 3): [[1, 2, 5, 6], [4, 4, 4, 9], [0, 0, 2, 2]]})
  boxes, valid = given(record, 0, 3)
  np.testing.assert_array_equal(valid, [True, False, True])  # zero width is invalid
  with pytest.raises(KeyError, match=r"\(0, 4\)"):
    given(record, 0, 4)
  with pytest.raises(ValueError, match="expected \\(2, 4\\)"):
    given({"obj_mask": np.array([True, True])}, 0, 3)


def test_square_crop_and_union():
  img = np.arange(10 * 12 * 3, dtype=np.int32).reshape(10, 12, 3)
  crop = comp.square_crop(img, (2, 3, 5, 4))                 # 3 x 1 box -> 4 x 4 (min_side)
  assert crop.shape == (4, 4, 3)
  np.testing.assert_array_equal(crop, img[2:6, 2:6])
  crop = comp.square_crop(img, (3, 2, 9, 5), min_side=1)     # 6 x 3 -> 6 x 6 centred on rows
  np.testing.assert_array_equal(crop, img[0:6, 3:9])
  crop = comp.square_crop(img, (9, 8, 12, 10), min_side=5)   # at the corner: shifted inside
  np.testing.assert_array_equal(crop, img[5:10, 7:12])
  with pytest.raises(ValueError, match="outside"):
    comp.square_crop(img, (3, 3, 3, 5))
  assert comp.union_box((1, 5, 3, 7), (4, 2, 6, 6)) == (1, 2, 6, 7)


# --- the composition -----------------------------------------------------------------------------
def test_composition_against_numpy():
  rng = np.random.default_rng(0)
  n, c, e = 3, 3, 5
  vg, vp, tp = rng.normal(size=(n, e)), rng.normal(size=(n, c, 3, e)), rng.normal(size=(n, c, 3, e))
  v_star, w = task_lib.compose(vg[:, None], vp, tp, weight_scale=2.0)
  unit = lambda x: x / np.linalg.norm(x)
  for i in range(n):
    for j in range(c):
      sims = [unit(vp[i, j, k]) @ unit(tp[i, j, k]) for k in range(3)]
      ref_w = softmax(2.0 * np.array(sims))
      ref = unit(vg[i]) + sum(ref_w[k] * unit(vp[i, j, k]) for k in range(3))
      np.testing.assert_allclose(w[i, j], ref_w, rtol=1e-10)
      np.testing.assert_allclose(v_star[i, j], ref, rtol=1e-10)
  # score(): the gathers of Prepared
  img, txt = rng.normal(size=(7, e)), rng.normal(size=(9, e))
  prep = task_lib.Prepared(None, np.array([0, 4]), rng.integers(0, 7, (2, 3, 3)), [],
                           rng.integers(0, 9, (2, 3)), rng.integers(0, 9, (2, 3, 3)),
                           ("positive", "swap", "attribute"))
  s = task_lib.score(prep, img, txt, 1.0)
  i, j = 1, 2
  vs, _ = task_lib.compose(img[4], img[prep.role_index[i, j]], txt[prep.phrase_index[i, j]])
  t = txt[prep.sentence_index[i, j]]
  np.testing.assert_allclose(s["comclip"][i, j], vs @ t / np.linalg.norm(vs) / np.linalg.norm(t))
  np.testing.assert_allclose(s["global"][i, j], unit(img[4]) @ unit(t))


def test_binding_of_phrases_to_boxes():
  boxes = {"large red sphere": (0, 0, 2, 2), "small blue cube": (4, 4, 6, 6),
           "large green cube": (1, 1, 3, 3)}
  assert task_lib.bind(boxes, "small blue cube") == (4, 4, 6, 6)
  assert task_lib.bind(boxes, "large blue sphere") is None                   # no such object
  assert task_lib.bind(boxes, "large blue sphere", "overlap") == (0, 0, 2, 2)  # 2 shared words
  assert task_lib.bind(boxes, "small red cube", "overlap") == (4, 4, 6, 6)
  assert task_lib.bind(boxes, "large blue cylinder", "overlap") is None      # a tie: 1 word each
  with pytest.raises(ValueError, match="binding='exact'"):
    task_lib.prepare(_toy_items(2), 32, binding="exact")


def test_accuracies_count_ties_half():
  s = np.array([[1.0, 0.5, 2.0], [1.0, 1.0, 0.0], [0.0, 1.0, -1.0]])
  acc = task_lib.accuracies(s, ("positive", "swap", "attribute"))
  assert acc == {"swap": 0.5, "attribute": 2 / 3, "all": 0.0}


# --- the world items -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_world():
  from mfm_jax.data.world import builder
  src = builder.load_source(config="smoke", split="validation")
  return src, builder.get_builder("smoke").builder_config.spec, image_text.world_attributes("smoke")


def test_items_negatives_are_swapped_and_false(smoke_world):
  src, spec, attrs = smoke_world
  items = comp.world_items(src, spec, attrs, frames_per_clip=2, per_frame=2, seed=0)
  assert len(items) >= 8
  again = comp.world_items(src, spec, attrs, frames_per_clip=2, per_frame=2, seed=0)
  assert [i.positive.text for i in items] == [i.positive.text for i in again]
  for it in items:
    pos, swap, attr = it.positive, it.negatives["swap"], it.negatives["attribute"]
    assert swap.text == f"a {pos.object} {pos.predicate} a {pos.subject}" != pos.text
    assert attr.text != pos.text and sorted(attr.text.split()) == sorted(pos.text.split())
    s_col = set(pos.subject.split()) - set(attr.subject.split())
    o_col = set(pos.object.split()) - set(attr.object.split())
    assert len(s_col) == 1 and s_col == set(attr.object.split()) - set(pos.object.split())
    assert o_col == set(attr.subject.split()) - set(pos.subject.split())
    record = src[it.clip]
    names, _ = comp.object_names(record, attrs)
    real = [n for n, m in zip(names, record["obj_mask"]) if m]
    assert attr.subject not in real and attr.object not in real
    assert attr.text != swap.text
    i, j = names.index(pos.subject), names.index(pos.object)
    x, boxes = np.asarray(record["centers"])[it.frame, :, 0], it.boxes
    if it.predicate == "left_of":
      assert x[i] < x[j]
    elif it.predicate == "right_of":
      assert x[i] > x[j]
    assert pos.subject in boxes and pos.object in boxes
    np.testing.assert_array_equal(it.image, np.asarray(record["video"])[it.frame])


def test_given_box_source_drives_items(smoke_world):
  src, spec, attrs = smoke_world
  masks = comp.MaskBoxes()
  given = {}
  for c in range(len(src)):
    for f in range(spec.num_frames):
      b, v = masks(src[c], c, f)
      b = np.where(v[:, None], b, 0)
      b[0] = 0                                  # the caller drops slot 0 everywhere
      given[(c, f)] = b
  items = comp.world_items(src, spec, attrs, comp.GivenBoxes(given), frames_per_clip=2)
  assert items
  for it in items:
    slot0 = comp.object_names(src[it.clip], attrs)[0][0]
    assert slot0 not in it.boxes and slot0 not in (it.positive.subject, it.positive.object)


# --- a toy encoder: global ignores order, the union crop carries it --------------------------------
COLORS = {"red": (220, 30, 30), "green": (40, 190, 40), "blue": (40, 70, 230),
          "yellow": (230, 210, 30)}
NAMES = list(COLORS)


def _toy_images(pixels):
  """[M, R, R, 3] unit-normalised -> [M, 9]: colour histogram (4), left-minus-right half
  histogram (4), a constant. Position enters only through which half of the view a colour is in."""
  x = (np.asarray(pixels) + 1.0) * 127.5
  pal = np.array(list(COLORS.values()), np.float64)
  d = np.linalg.norm(x[..., None, :] - pal, axis=-1)                  # [M, R, R, 4]
  hit = (d == d.min(-1, keepdims=True)) & (d < 60)
  r = x.shape[2]
  sign = np.where(np.arange(r) < r // 2, 1.0, -1.0)[None, None, :, None]
  n = np.maximum(hit.sum((1, 2, 3)), 1)[:, None]
  hist, lr = hit.sum((1, 2)) / n, (hit * sign).sum((1, 2)) / n
  return np.concatenate([hist, lr, np.ones((len(x), 1))], -1)


def _toy_texts(texts):
  """"a red square to the left of a blue block" -> [e_s + e_o | e_s - e_o | 1]; a name -> [e | 0 |
  1]; a relation alone -> [0 | 0 | 1]."""
  out = []
  for t in texts:
    cols = [NAMES.index(w) for w in t.split() if w in COLORS]
    v = np.zeros(9)
    v[8] = 1.0
    for c in cols:
      v[c] += 1.0
    if len(cols) == 2:
      sign = 1.0 if "left" in t.split() else -1.0
      v[4 + cols[0]] += sign
      v[4 + cols[1]] -= sign
    out.append(v)
  return np.stack(out)


def _toy_items(n=40, seed=0):
  rng = np.random.default_rng(seed)
  items = []
  for _ in range(n):
    img = np.full((64, 64, 3), 128, np.uint8)
    a, b = rng.choice(4, 2, replace=False)
    # even corners: the 64 -> 32 area resize keeps every object 2 x 2 pure pixels, so both colours
    # weigh the same in the global view and global CLIP ties on every swap
    x0, y0 = 2 * int(rng.integers(1, 5)), 2 * int(rng.integers(2, 25))
    x1, y1 = x0 + 4 + 2 * int(rng.integers(1, 4)), y0 + 2 * int(rng.integers(-1, 2))
    boxes = {f"{NAMES[a]} square": (x0, y0, x0 + 4, y0 + 4),
             f"{NAMES[b]} block": (x1, y1, x1 + 4, y1 + 4)}   # both in the left half
    for (name, (bx0, by0, bx1, by1)) in boxes.items():
      img[by0:by1, bx0:bx1] = COLORS[name.split()[0]]
    pos = comp.Sentence(f"{NAMES[a]} square", "to the left of", f"{NAMES[b]} block")
    items.append(comp.Item(img, boxes, pos, comp.negatives_of(pos, NAMES[a], NAMES[b])))
  return items


def test_toy_encoder_comclip_beats_global_on_swaps():
  res = task_lib.evaluate_items(_toy_items(), _toy_images, _toy_texts, resolution=32, norm="unit")
  assert res["n"] == 40
  assert res["global"]["swap"] == 0.5           # order is invisible in the whole frame: ties
  assert res["comclip"]["swap"] >= 0.95         # the union crop puts subject left, object right
  assert res["comclip"]["swap"] - res["global"]["swap"] >= 0.25
  assert res["paired"]["swap"] == {"comclip_only": 40, "global_only": 0}   # global only ties


# --- the smoke config end to end -------------------------------------------------------------------
def test_smoke_config_end_to_end(tmp_path):
  from configs import comclip
  from mfm_jax import tasks
  from mfm_jax.engine import trainer
  config = comclip.get_config("smoke")
  task = tasks.get(config.task)(config)
  summary = trainer.train(config, task, str(tmp_path))
  assert summary["final_step"] == 1
  with open(os.path.join(tmp_path, "eval", "compositional_000001.json")) as f:
    out = json.load(f)
  assert out["n"] == 12
  for method in ("global", "comclip"):
    assert set(out[method]) == {"swap", "attribute", "all"}
    assert all(0.0 <= v <= 1.0 for v in out[method].values())
  assert out["chance"] == {"swap": 0.5, "attribute": 0.5, "all": pytest.approx(1 / 3)}
  assert sum(p["n"] for p in out["per_predicate"].values()) == 12
  assert set(out["per_predicate"]) <= set(comp.PREDICATES)
  assert all(-1.0 <= v <= 1.0 for v in out["text_cos_to_positive"].values())
  ev = summary["evals"][0]
  assert ev["eval/comclip_swap"] == out["comclip"]["swap"] and ev["eval/items"] == 12

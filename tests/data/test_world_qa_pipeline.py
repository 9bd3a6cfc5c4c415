"""Tests for mfm_jax.data.world_qa_pipeline: the adjacency of a hand-made scene graph, word and
relation grounding, batches, checkpointed iterators and process sharding on world_qa/smoke."""
import numpy as np
import pytest

from mfm_jax.data import world_qa_pipeline as qa

LAYOUT, GROUND, REL, INTER = range(4)


def test_word_objects_names_colour_then_shape():
  words = "the red sphere hits the blue cube .".split()
  got = qa.word_objects(words, ["red", "blue", ""], ["sphere", "sphere", ""], 12)
  assert got.shape == (12, 3)
  # token = word + 1 (BOS first): "red" 2, "sphere" 3, "blue" 6; "cube" is not object 1's shape.
  assert sorted(map(tuple, np.argwhere(got))) == [(2, 0), (3, 0), (6, 1)]
  short = qa.word_objects(words, ["red", "blue", ""], ["sphere", "cube", ""], 5)  # 3 words fit
  assert sorted(map(tuple, np.argwhere(short))) == [(2, 0), (3, 0)]


def test_relation_steps_from_a_scene_graph():
  g = {"relations": [
      {"subject": 0, "predicate": "near", "object": 1, "spans": [[0, 3]]},
      {"subject": 1, "predicate": "collides_with", "object": 2, "spans": [[5, 5], [13, 13]]},
      {"subject": 0, "predicate": "unknown", "object": 2, "spans": [[0, 15]]}]}
  rel = qa.relation_steps(g, 3, steps=3, frames_per_step=4)   # frames 12.. count to step 2
  assert sorted(rel) == [REL, INTER]
  assert rel[REL][:, 0, 1].tolist() == [True, False, False] == rel[REL][:, 1, 0].tolist()
  assert rel[INTER][:, 1, 2].tolist() == [False, True, True] == rel[INTER][:, 2, 1].tolist()
  assert rel[REL].sum() == 2 and rel[INTER].sum() == 4


def _hand_made():
  """2 time steps x 1 x 2 tubelets, objects 0 (red sphere), 1 (blue cube), 2 (absent);
  question "the red sphere ?" (+BOS/EOS, 1 pad), two options of 3 tokens."""
  vid = np.zeros((2, 1, 2, 3), bool)
  vid[0, 0, 0, 0] = True                     # token 0 (t0, left): object 0
  vid[0, 0, 1, [0, 1]] = True                # token 1 (t0, right): objects 0 and 1
  vid[1, 0, 1, 1] = True                     # token 3 (t1, right): object 1
  obj_mask = np.array([True, True, False])
  q_mask = np.array([True] * 5 + [False])
  q_obj = qa.word_objects("the red sphere ?".split(), ["red", "blue", ""],
                          ["sphere", "cube", ""], 6)
  o_mask = np.array([[True, True, True], [True, True, False]])
  o_obj = np.zeros((2, 3, 3), bool)
  o_obj[1, 1, 1] = True                      # option 2's word 1 names object 1
  rel = {REL: np.zeros((2, 3, 3), bool), INTER: np.zeros((2, 3, 3), bool)}
  rel[REL][0, 0, 1] = rel[REL][0, 1, 0] = True        # near(0, 1) at step 0
  rel[INTER][1, 0, 1] = rel[INTER][1, 1, 0] = True    # collides(0, 1) at step 1
  return qa.adjacency(vid, obj_mask, q_obj, q_mask, o_obj, o_mask, rel)


def test_adjacency_of_a_hand_made_scene_graph():
  a = _hand_made()
  # Token order: video 0-3 | objects 4-6 | question 7-12 | option 1: 13-15 | option 2: 16-18.
  assert a.shape == (4, 19, 19) and a.dtype == bool
  assert all((a[c] == a[c].T).all() for c in range(4))
  v0, v1, v2, v3, n0, n1, n2 = range(7)
  red, sphere, o2_word = 9, 10, 17
  pads = [n2, 12, 18]                         # absent object, question pad, option 2 pad
  assert not a[:, pads].any() and not a[:, :, pads].any()

  lay = a[LAYOUT]
  expected = {(v0, v1), (v2, v3), (v0, v2), (v1, v3)}                # space and time neighbours
  expected |= {(7, 8), (8, 9), (9, 10), (10, 11), (13, 14), (14, 15), (16, 17)}   # word chains
  pairs = {(i, j) for i, j in np.argwhere(np.triu(lay, 1))}
  assert pairs == expected
  assert lay[np.arange(19), np.arange(19)].tolist() == [i not in pads for i in range(19)]

  g = a[GROUND]
  assert sorted(np.flatnonzero(g[n0])) == [v0, v1, n0, red, sphere]
  assert sorted(np.flatnonzero(g[n1])) == [v1, v3, n1, o2_word]
  assert g[red, v0] and g[red, v1] and not g[red, v3] and g[o2_word, v3] and not g[v0, v3]

  r, i = a[REL], a[INTER]
  # near(0, 1) holds at step 0 only: tubelets of step 0 link, step-1 tubelets do not.
  assert r[v0, v1] and not r[v1, v3] and not r[v0, v3]
  # timeless tokens (nodes, words) take the relation at any step.
  assert r[n0, n1] and r[red, v3] and r[red, o2_word] and r[n0, v3]
  assert not r[n0, n0] and not r[red, sphere]
  # collisions (step 1): the only step-1 tubelet with an object is v3 (object 1); v3 has no
  # partner at step 1, v1 (both objects) is at step 0.
  assert not i[v1, v3] and not i[v1, v1] and i[n0, n1] and i[sphere, v3] and i[n1, red]


@pytest.fixture(scope="module")
def config():
  c = qa.default_data_config()
  c.builder_config = "smoke"
  c.num_frames, c.resolution, c.tubelet = 8, 32, (2, 8, 8)
  return c


def test_examples_and_batches(config):
  qs = qa.question_index("smoke", None, "train")
  assert len(qs) > 16 and {q["type"] for q in qs} <= set(qa.TYPES)
  assert all(len(q["options"]) == 4 and 0 <= q["answer"] < 4 for q in qs)
  it = qa.make_iterator(config, "train", 4, seed=0)
  b = next(it)
  l = 64 + 6 + config.question_len + 4 * config.option_len
  assert b["video"].shape == (4, 8, 32, 32, 3) and b["video"].dtype == np.float32
  assert b["adjacency"].shape == (4, 4, l, l) and b["adjacency"].dtype == bool
  assert b["option_ids"].shape == (4, 4, config.option_len)
  assert b["answer"].shape == b["qtype"].shape == b["qindex"].shape == (4,)
  for row, qi in enumerate(b["qindex"]):     # the example is the question qindex names
    q = qs[qi]
    assert b["answer"][row] == q["answer"] and qa.TYPES[b["qtype"][row]] == q["type"]
  # every named object is grounded to its node, and the node to some tubelets (or not visible)
  adj = b["adjacency"]
  assert adj[:, GROUND, 64:70, 64:70].diagonal(axis1=1, axis2=2).sum() == b["obj_mask"].sum()
  assert adj[:, GROUND, :64, 64:70].any()


def test_iterator_state_and_process_sharding(config):
  one = qa.make_iterator(config, "train", 8, seed=3)
  first = next(one)
  halves = [next(qa.make_iterator(config, "train", 4, seed=3, shard_index=i, shard_count=2))
            for i in range(2)]
  for k in first:
    np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), first[k])
  state = one.get_state()
  nxt = next(one)
  again = qa.make_iterator(config, "train", 8, seed=3)
  again.set_state(state)
  for k, v in next(again).items():
    np.testing.assert_array_equal(v, nxt[k])


def test_all_examples_pads_the_last_batch_and_answer_prior(config):
  n = len(qa.question_index("smoke", None, "validation"))
  batches = list(qa.all_examples(config, "validation", 8))
  assert len(batches) == -(-n // 8)
  assert sum(int(b["valid"].sum()) for b in batches) == n
  assert [int(i) for b in batches for i, ok in zip(b["qindex"], b["valid"]) if ok] == \
      list(range(n))
  qs = [{"options": ["0", "1", "2", "3"], "answer": 0}, {"options": ["1", "0", "4", "5"],
                                                          "answer": 1}]
  prior = qa.answer_prior(qs)
  assert prior["0"] == 1.0 and prior["1"] == 0.0
  assert qa.prior_choice({"options": ["9", "1", "0", "2"]}, prior) == 2
  with pytest.raises(ValueError, match="world_qa"):
    bad = qa.default_data_config()
    bad.name = "world_video"
    qa.make_dataset(bad, "train", 2, 0)

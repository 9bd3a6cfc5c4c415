"""The real-format loaders read a world export (tools/make_world.py) whole."""
import json
import os

import numpy as np
import pytest

from mfm_jax.data import sources

export = pytest.importorskip("mfm_jax.data.world.export")


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("world"))
  export.export(out, "smoke", 1, 0, num_workers=2)
  return out


def test_mmworld_reads_every_question(world_dir, tmp_path):
  data = json.load(open(os.path.join(world_dir, "mmworld.json")))
  total = sum(len(v["questions"]) for v in data)
  src = sources.load_source(f"mmworld:{world_dir}", "smoke", str(tmp_path),
                            "test")
  assert len(src) == total and sources.bad_records(src)["skipped"] == 0
  first = data[0]["questions"][0]
  ex = src[0]
  assert ex["id"] == f"{data[0]['video_id']}/0".encode()
  assert ex["answer"].decode() == first["answer"]
  assert "abcd"[ex["answer_index"]] == first["correct_answer_label"]
  assert ex["video"].shape == (4, 32, 32, 3) and ex["video"].std() > 0


def test_vlm4d_reads_every_question(world_dir, tmp_path):
  data = json.load(open(os.path.join(world_dir, "vlm4d.json")))
  src = sources.load_source(f"vlm4d:{world_dir}", "smoke", str(tmp_path),
                            "test")
  assert len(src) == len(data) and sources.bad_records(src)["skipped"] == 0
  for i in (0, len(data) - 1):
    ex, rec = src[i], data[i]
    assert ex["id"].decode() == rec["id"]
    assert ex["choices"][ex["answer_index"]].decode() == str(rec["answer"])
  assert np.all([src[i]["correct"].sum() >= 1 for i in range(len(src))])

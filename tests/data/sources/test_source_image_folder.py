"""image_folder builder: class folders, k-shot determinism, base/new split."""
import os

import numpy as np
from PIL import Image
import pytest

from mfm_jax.data import sources
from mfm_jax.data.sources import common
from mfm_jax.data.sources import image_folder

CLASSES = ["cat", "dog", "eel", "fox", "gnu"]


def _image(path, value, mode="RGB", size=(20, 14), fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  arr = np.full((size[1], size[0], len(mode)), value, np.uint8)
  Image.fromarray(arr.squeeze(-1) if mode == "L" else arr, mode).save(
      path, format=fmt)


@pytest.fixture
def folder(tmp_path):
  """train: 5 classes x 6 images (value 10 * class + i); test: 2 each."""
  root = tmp_path / "images"
  for c, name in enumerate(CLASSES):
    for i in range(6):
      ext = ".png" if i % 2 else ".jpg"
      _image(str(root / "train" / name / f"{i:02d}{ext}"), 10 * c + i)
    for i in range(2):
      _image(str(root / "test" / name / f"t{i}.png"), 10 * c + i)
  _image(str(root / "train" / "cat" / "gray.png"), 77, mode="L")
  _image(str(root / "train" / "dog" / "alpha.png"), 88, mode="RGBA")
  (root / "train" / "dog" / "notes.txt").write_text("not an image")
  return root


def _load(root, data_dir, policy="raise", **kw):
  return sources.load_source("image_folder", "default", str(data_dir),
                             kw.pop("split", "train"), manual_dir=str(root),
                             on_bad_record=policy, num_workers=2, **kw)


def test_end_to_end(folder, tmp_path):
  src = _load(folder, tmp_path / "tfds")
  test = _load(folder, tmp_path / "tfds", split="test")
  assert (len(src), len(test)) == (32, 10)
  labels = [int(src[i]["label"]) for i in range(len(src))]
  assert labels == [0] * 7 + [1] * 7 + [2] * 6 + [3] * 6 + [4] * 6
  first = src[0]
  assert first["file"] == b"train/cat/00.jpg" and first["label_name"] == b"cat"
  assert first["image"].shape == (14, 20, 3)
  gray = next(src[i] for i in range(7) if src[i]["file"].endswith(b"gray.png"))
  np.testing.assert_array_equal(gray["image"], 77)          # L -> RGB
  png = src[1]
  assert png["file"] == b"train/cat/01.png"
  np.testing.assert_array_equal(png["image"], 1)            # lossless
  alpha = next(src[i] for i in range(7, 14)
               if src[i]["file"].endswith(b"alpha.png"))
  assert alpha["image"].shape == (14, 20, 3)
  assert [int(test[i]["label"]) for i in range(10)] == sorted(
      list(range(5)) * 2)


def test_single_split_layout_and_max_size(tmp_path):
  root = tmp_path / "flat"
  _image(str(root / "b" / "x.png"), 5, size=(100, 50))
  _image(str(root / "a" / "y.jpg"), 9, size=(40, 40))
  src = sources.load_source("image_folder", "max_size=20", str(tmp_path / "t"),
                            "train", manual_dir=str(root))
  assert [src[i]["label_name"] for i in range(2)] == [b"a", b"b"]
  assert src[0]["image"].shape == (20, 20, 3)
  assert src[1]["image"].shape == (20, 40, 3)


def test_kshot_is_deterministic_nested_and_balanced(folder, tmp_path):
  data_dir = tmp_path / "tfds"
  one = _load(folder, data_dir, shots=2, seed=7)
  two = _load(folder, data_dir, shots=2, seed=7)
  other = _load(folder, data_dir, shots=2, seed=8)
  four = _load(folder, data_dir, shots=4, seed=7)
  assert len(one) == 10
  np.testing.assert_array_equal(one.indices, two.indices)
  assert not np.array_equal(one.indices, other.indices)
  assert set(one.indices) <= set(four.indices)
  assert np.bincount([one[i]["label"] for i in range(10)]).tolist() == [2] * 5
  big = _load(folder, data_dir, shots=7, seed=0)             # 6-7 per class
  assert np.bincount([big[i]["label"] for i in range(len(big))]).tolist() == [
      7, 7, 6, 6, 6]


def test_kshot_indices_by_class():
  labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
  a = image_folder.kshot_indices(labels, 1, seed=3)
  assert [labels[i] for i in a] == [0, 1, 2]
  # Class 2's choice does not depend on which other classes are asked for.
  only2 = image_folder.kshot_indices(labels, 2, 3, class_ids=[2])
  both = image_folder.kshot_indices(labels, 2, 3, class_ids=[0, 2])
  assert set(only2) <= set(both) and (labels[only2] == 2).all()


def test_base_new_classes(folder, tmp_path):
  data_dir = tmp_path / "tfds"
  base = _load(folder, data_dir, classes="base")
  new = _load(folder, data_dir, classes="new", split="test")
  assert base.class_names == ["cat", "dog", "eel"]            # ceil(5 / 2)
  assert new.class_names == ["fox", "gnu"]
  assert len(base) == 20 and len(new) == 4
  assert sorted({int(base[i]["label"]) for i in range(20)}) == [0, 1, 2]
  assert [int(new[i]["label"]) for i in range(4)] == [0, 0, 1, 1]
  assert [int(new[i]["source_label"]) for i in range(4)] == [3, 3, 4, 4]
  fewshot_new = _load(folder, data_dir, classes="new", shots=1, seed=0,
                      relabel=False)
  assert [int(fewshot_new[i]["label"]) for i in range(2)] == [3, 4]
  with pytest.raises(ValueError, match="classes must be one of"):
    image_folder.class_split(5, "old")


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_unreadable_image(folder, tmp_path, policy):
  bad = folder / "train" / "eel" / "broken.jpg"
  bad.write_bytes(b"\xff\xd8 not a jpeg")
  if policy == "raise":
    with pytest.raises(common.BadRecordError,
                       match=r"record train/eel/broken.jpg: image: "
                       r"unreadable image") as err:
      _load(folder, tmp_path / "tfds")
    assert err.value.file.endswith("broken.jpg")
    return
  src = _load(folder, tmp_path / "tfds", policy="skip")
  assert len(src) == 32
  report = sources.bad_records(src)
  assert [r["id"] for r in report["records"]] == ["train/eel/broken.jpg"]
  assert report["kept"] == {"train": 32, "test": 10}
  # k-shot labels come from the kept records only.
  assert len(_load(folder, tmp_path / "tfds", policy="skip", shots=6)) == 30


def test_empty_folder_is_named(tmp_path):
  (tmp_path / "e").mkdir()
  (tmp_path / "e" / "x.txt").write_text("x")
  with pytest.raises(FileNotFoundError, match="no class folders"):
    _load(tmp_path / "e", tmp_path / "tfds")

"""video_io: K-frame and fps sampling on real mp4s, resize / crop, errors."""
import os

import grain
import numpy as np
import pytest

from mfm_jax.data import video_io
from tests.data.sources.helpers import frame_ids, ramp_frames, write_garbage, write_ramp


@pytest.fixture(scope="module")
def ramp20(tmp_path_factory):
  """20 frames at 10 fps (2 s), 32 x 48."""
  return write_ramp(str(tmp_path_factory.mktemp("v") / "ramp.mp4"), n=20,
                    fps=10.0)


def test_probe(ramp20):
  info = video_io.probe(ramp20)
  assert (info.num_frames, info.fps, info.height, info.width) == (
      20, 10.0, 32, 48)
  assert info.duration == pytest.approx(2.0)


def test_uniform_indices_are_segment_centres():
  np.testing.assert_array_equal(video_io.uniform_indices(20, 4),
                                [2, 7, 12, 17])
  np.testing.assert_array_equal(video_io.uniform_indices(3, 6),
                                [0, 0, 1, 1, 2, 2])   # repeats when N < K
  np.testing.assert_array_equal(video_io.uniform_indices(5, 5), range(5))


@pytest.mark.parametrize("k", [1, 4, 7, 20, 25])
def test_read_uniform_k_frames(ramp20, k):
  video = video_io.read_video(ramp20, num_frames=k)
  assert video.shape == (k, 32, 48, 3) and video.dtype == np.uint8
  assert frame_ids(video) == list(video_io.uniform_indices(20, k))


def test_read_uniform_in_window(ramp20):
  # [0.5 s, 1.5 s) = frames 5..14; 5 segment centres of 10 frames.
  video = video_io.read_video(ramp20, num_frames=5, start=0.5, end=1.5)
  assert frame_ids(video) == [6, 8, 10, 12, 14]


def test_read_fps(ramp20):
  assert frame_ids(video_io.read_video(ramp20, fps=2.0)) == [0, 5, 10, 15]
  assert frame_ids(video_io.read_video(ramp20, fps=2.5, start=0.3,
                                       end=1.5)) == [3, 7, 11]
  # Past the end is clipped; max_frames caps T; fps above the source repeats.
  assert frame_ids(video_io.read_video(ramp20, fps=4.0, start=1.2,
                                       end=9.0)) == [12, 14, 17, 19]
  assert frame_ids(video_io.read_video(ramp20, fps=1.0, max_frames=1)) == [0]
  assert frame_ids(video_io.read_video(ramp20, fps=20.0, end=0.3)) == [
      0, 0, 1, 1, 2, 2]


def test_read_all_frames_and_reuse_probe(ramp20):
  info = video_io.probe(ramp20)
  video = video_io.read_video(ramp20, info=info)
  assert frame_ids(video) == list(range(20))
  np.testing.assert_allclose(video.astype(float), ramp_frames(20), atol=3)
  assert frame_ids(video_io.read_frames_at(ramp20, [19, 0, 3, 3])) == [
      19, 0, 3, 3]


def test_bad_arguments(ramp20):
  with pytest.raises(ValueError, match="not both"):
    video_io.select_indices(video_io.probe(ramp20), num_frames=2, fps=1.0)
  with pytest.raises(video_io.VideoReadError, match="empty time window"):
    video_io.read_video(ramp20, num_frames=2, start=3.0)


def test_missing_file_is_named(tmp_path):
  path = str(tmp_path / "nope.mp4")
  with pytest.raises(video_io.VideoReadError, match="nope.mp4: no such"):
    video_io.read_video(path, num_frames=2)


def test_unreadable_file_is_named(tmp_path):
  path = write_garbage(str(tmp_path / "bad.mp4"))
  with pytest.raises(video_io.VideoReadError,
                     match=r"bad\.mp4: unreadable video"):
    video_io.read_video(path, num_frames=2)


def test_truncated_file_is_an_error(tmp_path, ramp20):
  path = str(tmp_path / "cut.mp4")
  data = open(ramp20, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 3])
  with pytest.raises(video_io.VideoReadError, match="cut.mp4"):
    video_io.read_video(path, num_frames=4)


def test_write_rejects_odd_sizes(tmp_path):
  with pytest.raises(ValueError, match="even"):
    video_io.write_video(str(tmp_path / "o.mp4"),
                         np.zeros((2, 5, 4, 3), np.uint8))
  assert not os.path.exists(tmp_path / "o.mp4")


def test_resize_and_crops():
  video = np.zeros((2, 30, 60, 3), np.uint8)
  video[:, :, 30:] = 200                                  # right half bright
  assert video_io.resize(video, (15, 20)).shape == (2, 15, 20, 3)
  small = video_io.resize_short_side(video, 10)
  assert small.shape == (2, 10, 20, 3)
  np.testing.assert_array_equal(small[:, :, :9], 0)
  np.testing.assert_array_equal(small[:, :, 11:], 200)
  crop = video_io.resize_and_center_crop(video, 10)
  assert crop.shape == (2, 10, 10, 3)
  np.testing.assert_array_equal(crop, small[:, :, 5:15])
  assert video_io.center_crop(video[0], (10, 10)).shape == (10, 10, 3)
  with pytest.raises(ValueError, match="outside"):
    video_io.center_crop(video, (40, 10))


def test_grain_transforms():
  video = np.arange(2 * 40 * 60 * 3, dtype=np.uint32).reshape(2, 40, 60, 3)
  video = (video % 251).astype(np.uint8)
  ds = (grain.MapDataset.source([{"video": video, "i": 0}])
        .map(video_io.ResizeVideo(20, short_side=True))
        .map(video_io.CenterCropVideo(16)))
  out = ds[0]
  assert out["video"].shape == (2, 16, 16, 3) and out["i"] == 0
  rand = grain.MapDataset.source([{"video": video}] * 4).random_map(
      video_io.RandomCropVideo((8, 10)), seed=3)
  crops = [rand[i]["video"] for i in range(4)]
  assert all(c.shape == (2, 8, 10, 3) for c in crops)
  again = grain.MapDataset.source([{"video": video}] * 4).random_map(
      video_io.RandomCropVideo((8, 10)), seed=3)
  for i in range(4):                                     # seeded: same crops
    np.testing.assert_array_equal(again[i]["video"], crops[i])
  assert video_io.ResizeVideo((10, 12)).map({"video": video})["video"].shape \
      == (2, 10, 12, 3)

"""Fixtures: tiny manual_dirs in the MMWorld and VLM4D formats."""
import pytest

from tests.data.sources.helpers import (mmworld_video, vlm4d_record,
                                        write_json, write_ramp)


@pytest.fixture
def mmworld_dir(tmp_path):
  """manual_dir with mmworld.json (2 videos x 2 questions) and 2 mp4s."""
  root = tmp_path / "mmworld"
  write_ramp(str(root / "videos" / "vid_a.mp4"), n=12)
  write_ramp(str(root / "videos" / "sub" / "vid_b.mp4"), n=8, offset=2)
  write_json(str(root / "mmworld.json"),
             [mmworld_video("vid_a"), mmworld_video("vid_b")])
  return root


@pytest.fixture
def vlm4d_dir(tmp_path):
  """manual_dir with real_mc.json (3 questions, 2 videos) + synthetic."""
  root = tmp_path / "vlm4d"
  write_ramp(str(root / "videos_real" / "davis" / "clip_a.mp4"), n=12)
  write_ramp(str(root / "videos_real" / "ego4d" / "clip_b.mp4"), n=10)
  write_ramp(str(root / "videos_synthetic" / "synth_001.mp4"), n=8)
  write_json(str(root / "real_mc.json"), [
      vlm4d_record(1, "clip_a.mp4"),
      vlm4d_record(2, "clip_a.mp4", answer="right"),
      vlm4d_record(923, "clip_b.mp4", answer=2,
                   choices={"A": 1, "B": 2, "C": 3, "D": 0})])
  write_json(str(root / "synthetic_mc.json"), [
      vlm4d_record(1, "synth_001.mp4", answer="no ball there")])
  return root

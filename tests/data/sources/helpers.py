"""Helpers for tiny real-format fixtures: mp4s written with imageio, JSON.

Frame i of a fixture video is a uniform grey of value STEP * i (+ offset),
so a decoded frame tells which frame it was (H.264 keeps the level to +-2).
"""
import json
import os

import numpy as np
from mfm_jax.data import video_io

STEP = 12


def ramp_frames(n: int, h: int = 32, w: int = 48, offset: int = 0
                ) -> np.ndarray:
  """[n, h, w, 3] uint8, frame i = offset + STEP * i everywhere."""
  levels = offset + STEP * np.arange(n)
  assert levels.max() <= 255
  return np.broadcast_to(levels[:, None, None, None].astype(np.uint8),
                         (n, h, w, 3)).copy()


def frame_ids(video: np.ndarray, offset: int = 0) -> list[int]:
  """The fixture frame index of every decoded frame [T, H, W, 3]."""
  return [int(round((float(f.mean()) - offset) / STEP)) for f in video]


def write_ramp(path, n: int = 12, fps: float = 4.0, **kw) -> str:
  return video_io.write_video(path, ramp_frames(n, **kw), fps=fps)


def write_json(path, data) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(data, f)
  return path


def write_garbage(path) -> str:
  """A file named .mp4 that ffmpeg cannot read."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(b"\x00\x00\x00\x18ftypmp42 not really a video" * 8)
  return path


def mmworld_question(answer: str = "b", **over) -> dict:
  options = {"a": "it bounced", "b": "it collided", "c": "it stopped",
             "d": "nothing"}
  q = {"type": "Explanation", "question": "Why did the ball turn?",
       "options": options, "answer": options[answer],
       "correct_answer_label": answer, "requires_domain_knowledge": False,
       "requires_audio": False, "requires_visual": True,
       "question_only": False}
  q.update(over)
  return q


def mmworld_video(video_id: str, questions=None, **over) -> dict:
  v = {"video_id": video_id, "video_url": f"https://x.org/{video_id}",
       "discipline": "Science", "subdiscipline": "Physics",
       "captions": ["a ball rolls"],
       "questions": questions or [mmworld_question("b"),
                                  mmworld_question("d")]}
  v.update(over)
  return v


def vlm4d_record(i: int, video: str = "clip_a.mp4", answer="left",
                 **over) -> dict:
  r = {"id": f"validation_{i}",
       "video": f"https://hf.co/datasets/x/resolve/main/videos/{video}",
       "question_type": "multiple-choice",
       "question": "What direction is the ball moving?",
       "choices": {"A": "left", "B": "right", "C": "not moving",
                   "D": "no ball there"},
       "answer": answer}
  r.update(over)
  return r

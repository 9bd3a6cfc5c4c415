"""Pictures a person wants to look at: GIF grids of videos with their captions.

Own code (no library draws a captioned video grid): frames are upscaled with nearest neighbour,
captions wrapped under each cell with PIL's default font, written with imageio.
"""
from __future__ import annotations

import os
import textwrap
from typing import Sequence

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw, ImageFont


def to_uint8(video: np.ndarray) -> np.ndarray:
  """Float video in [-1, 1] (or uint8) -> uint8, same shape."""
  video = np.asarray(video)
  if video.dtype == np.uint8:
    return video
  return np.clip(np.round((video + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _caption_strip(text: str, width: int, lines: int) -> np.ndarray:
  font = ImageFont.load_default()
  chars = max(8, width // 6)
  wrapped = textwrap.wrap(text, chars)[:lines]
  img = Image.new("RGB", (width, 12 * lines + 4), (255, 255, 255))
  draw = ImageDraw.Draw(img)
  for i, line in enumerate(wrapped):
    draw.text((2, 2 + 12 * i), line, fill=(0, 0, 0), font=font)
  return np.asarray(img)


def video_grid(videos: Sequence[np.ndarray], captions: Sequence[str] | None = None,
               cols: int = 4, scale: int = 3, caption_lines: int = 5, pad: int = 4) -> np.ndarray:
  """``videos: N x [T, H, W, 3]`` (uint8 or float in [-1, 1], same T/H/W) -> ``[T, GH, GW, 3]``."""
  videos = [to_uint8(v) for v in videos]
  if not videos:
    raise ValueError("video_grid: no videos")
  t, h, w, _ = videos[0].shape
  for i, v in enumerate(videos):
    if v.shape != videos[0].shape:
      raise ValueError(f"video_grid: video {i} has shape {v.shape}, expected {videos[0].shape}")
  cell_w = w * scale
  cells = []
  for i, v in enumerate(videos):
    v = v.repeat(scale, axis=1).repeat(scale, axis=2)
    if captions is not None:
      strip = _caption_strip(captions[i], cell_w, caption_lines)
      v = np.concatenate([v, np.broadcast_to(strip, (t,) + strip.shape)], axis=1)
    cells.append(np.pad(v, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=255))
  rows = (len(cells) + cols - 1) // cols
  blank = np.full_like(cells[0], 255)
  cells += [blank] * (rows * cols - len(cells))
  grid_rows = [np.concatenate(cells[r * cols:(r + 1) * cols], axis=2) for r in range(rows)]
  return np.concatenate(grid_rows, axis=1)


def write_gif(path: str, frames: np.ndarray, fps: float = 8.0) -> str:
  """``frames: [T, H, W, 3] uint8`` -> an endlessly looping GIF at ``path``."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  iio.imwrite(path, np.asarray(frames), extension=".gif", duration=1000.0 / fps, loop=0)
  return path


def write_video_grid(path: str, videos, captions=None, cols: int = 4, scale: int = 3,
                     fps: float = 8.0) -> str:
  return write_gif(path, video_grid(videos, captions, cols=cols, scale=scale), fps=fps)

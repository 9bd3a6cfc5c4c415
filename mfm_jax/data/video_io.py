"""Video files: decode mp4 with frame sampling, resize / crop, write.

Decoding runs imageio's bundled ffmpeg (the `imageio-ffmpeg` package) as a
subprocess and streams raw RGB frames, keeping only the selected ones, so a
long video never sits in memory. Sampling is by frame index over the frames
of a window [start, end) in seconds (constant frame rate assumed: frame j
shows time j / fps):

  uniform K frames   the centre frame of each of K equal segments (TSN /
                     MMWorld style); frames repeat when the window has < K
  fps sampling       one frame every 1 / fps seconds from `start`
  neither            every frame of the window

Uniform sampling needs the frame count, which costs one extra decoding pass
(`imageio_ffmpeg.count_frames_and_secs`); pass `info=` to reuse a probe.

  video = read_video("clip.mp4", num_frames=16)            # [16, H, W, 3]
  video = read_video("clip.mp4", fps=2.0, start=1.0, end=5.0)
  write_video("out.mp4", frames, fps=8)                   # tests, samples

The resize / crop helpers take `[T, H, W, C]` (or `[H, W, C]`) uint8 arrays;
`ResizeVideo`, `CenterCropVideo` and `RandomCropVideo` wrap them as grain
transforms over one key of an example dict.
"""
from __future__ import annotations

import dataclasses
import math
import os

import grain
import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
from PIL import Image


class VideoReadError(IOError):
  """A video file is missing, unreadable or too short; names the file."""

  def __init__(self, path, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f"{self.path}: {reason}")


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What a probe of a video file found."""
  num_frames: int      # decoded frames (exact: counted by decoding)
  fps: float           # frames per second of the video stream
  height: int
  width: int

  @property
  def duration(self) -> float:
    return self.num_frames / self.fps


def _check_exists(path) -> str:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise VideoReadError(path, "no such video file")
  return path


def _open(path: str, input_params=None):
  """(meta, frame generator) from imageio-ffmpeg; errors name the file."""
  try:
    gen = imageio_ffmpeg.read_frames(path, input_params=input_params)
    meta = next(gen)
  except (OSError, RuntimeError, StopIteration, ValueError) as e:
    raise VideoReadError(path, f"unreadable video ({_first_line(e)})") from e
  fps = float(meta.get("fps") or 0.0)
  size = meta.get("size")
  if not size or fps <= 0 or not math.isfinite(fps):
    gen.close()
    raise VideoReadError(path, f"no usable video stream (meta {meta})")
  return meta, gen


def _first_line(e: BaseException) -> str:
  text = str(e).strip() or type(e).__name__
  lines = [s for s in text.splitlines() if s.strip()]
  return lines[-1][:300] if lines else text[:300]


def probe(path) -> VideoInfo:
  """Frame count (exact, one decoding pass), fps and size of a video."""
  path = _check_exists(path)
  meta, gen = _open(path)
  gen.close()
  try:
    num_frames, _ = imageio_ffmpeg.count_frames_and_secs(path)
  except (OSError, RuntimeError) as e:
    raise VideoReadError(path, f"cannot count frames ({_first_line(e)})"
                         ) from e
  if not num_frames:
    raise VideoReadError(path, "video has no decodable frames")
  w, h = meta["size"]
  return VideoInfo(int(num_frames), float(meta["fps"]), int(h), int(w))


def uniform_indices(num_available: int, num_frames: int) -> np.ndarray:
  """Centre frame of each of K equal segments of N frames: [K] int64.

  idx_i = floor((i + 1/2) * N / K); with N < K frames repeat.
  """
  if num_available < 1 or num_frames < 1:
    raise ValueError(f"uniform_indices needs N >= 1 and K >= 1, got "
                     f"N={num_available}, K={num_frames}")
  i = np.arange(num_frames, dtype=np.float64)
  return np.floor((i + 0.5) * num_available / num_frames).astype(np.int64)


def fps_indices(src_fps: float, fps: float, start: float, end: float,
                num_available: int | None = None,
                max_frames: int | None = None) -> np.ndarray:
  """Frame indices at times start, start + 1/fps, ... < end: [T] int64.

  The frame shown at time t is floor(t * src_fps) (+1e-6 against rounding);
  indices >= num_available (when known) are dropped.
  """
  if fps <= 0 or src_fps <= 0 or not math.isfinite(end):
    raise ValueError(f"fps sampling needs fps > 0, src_fps > 0 and a finite "
                     f"end, got fps={fps}, src_fps={src_fps}, end={end}")
  count = max(0, math.ceil((end - start) * fps - 1e-9))
  if max_frames is not None:
    count = min(count, max_frames)
  t = start + np.arange(count, dtype=np.float64) / fps
  idx = np.floor(t * src_fps + 1e-6).astype(np.int64)
  if num_available is not None:
    idx = idx[idx < num_available]
  return idx


def select_indices(info: VideoInfo, num_frames: int | None = None,
                   fps: float | None = None, start: float | None = None,
                   end: float | None = None,
                   max_frames: int | None = None) -> np.ndarray:
  """The frame indices `read_video` decodes (same arguments): [T] int64."""
  if num_frames is not None and fps is not None:
    raise ValueError("give num_frames (uniform) or fps, not both")
  start = 0.0 if start is None else float(start)
  end_t = info.duration if end is None else min(float(end), info.duration)
  if start < 0 or end_t <= start:
    raise ValueError(f"empty time window [{start}, {end_t}) of a "
                     f"{info.duration:.3f} s video")
  lo = min(int(math.floor(start * info.fps + 1e-6)), info.num_frames - 1)
  hi = min(max(int(math.ceil(end_t * info.fps - 1e-6)), lo + 1),
           info.num_frames)
  if num_frames is not None:
    return lo + uniform_indices(hi - lo, num_frames)
  if fps is not None:
    return fps_indices(info.fps, fps, start, end_t, info.num_frames,
                       max_frames)
  idx = np.arange(lo, hi, dtype=np.int64)
  return idx[:max_frames] if max_frames is not None else idx


def read_frames_at(path, indices, info: VideoInfo | None = None
                   ) -> np.ndarray:
  """Decodes the frames with the given indices (any order, repeats ok).

  Args:
    path: video file.
    indices: [T] frame indices into the decoded stream.
    info: optional probe result (only its size is used, to check the frames).

  Returns:
    [T, H, W, 3] uint8, frame t = decoded frame indices[t].
  """
  path = _check_exists(path)
  indices = np.asarray(indices, np.int64).reshape(-1)
  if indices.size == 0:
    raise VideoReadError(path, "no frames selected")
  if indices.min() < 0:
    raise ValueError(f"{path}: negative frame index {indices.min()}")
  meta, gen = _open(path)
  w, h = meta["size"]
  if info is not None and (info.height, info.width) != (h, w):
    gen.close()
    raise VideoReadError(path, f"size {h}x{w} differs from probe "
                         f"{info.height}x{info.width}")
  wanted = {int(j) for j in indices}
  last = int(indices.max())
  frames = {}
  j = -1
  try:
    for j, raw in enumerate(gen):
      if j in wanted:
        frames[j] = np.frombuffer(raw, np.uint8).reshape(h, w, 3)
      if j >= last:
        break
  except (OSError, RuntimeError, ValueError) as e:
    raise VideoReadError(path, f"decoding failed at frame {j + 1} "
                         f"({_first_line(e)})") from e
  finally:
    gen.close()
  missing = sorted(wanted - frames.keys())
  if missing:
    raise VideoReadError(path, f"decoded {j + 1} frames, frame {missing[0]} "
                         f"was requested")
  return np.stack([frames[int(k)] for k in indices])


def read_video(path, *, num_frames: int | None = None,
               fps: float | None = None, start: float | None = None,
               end: float | None = None, max_frames: int | None = None,
               info: VideoInfo | None = None) -> np.ndarray:
  """Decodes a sampled clip of a video file.

  Args:
    path: an mp4 (or anything the bundled ffmpeg reads).
    num_frames: K, uniform sampling of the window (segment centres).
    fps: sample one frame every 1/fps seconds from `start` instead.
    start, end: time window in seconds (default: the whole video; an `end`
      past the last frame is clipped).
    max_frames: cap on T for fps / all-frame sampling.
    info: a `probe(path)` result to reuse (skips the counting pass).

  Returns:
    [T, H, W, 3] uint8 (T = num_frames for uniform sampling).

  Raises:
    VideoReadError: missing file, unreadable stream, empty selection.
  """
  info = info or probe(path)
  try:
    idx = select_indices(info, num_frames, fps, start, end, max_frames)
  except ValueError as e:
    raise VideoReadError(path, str(e)) from e
  if idx.size == 0:
    raise VideoReadError(path, f"no frames in the window start={start} "
                         f"end={end} at fps={fps}")
  return read_frames_at(path, idx, info)


def write_video(path, frames, fps: float = 8.0, quality: int = 9) -> str:
  """Writes [T, H, W, 3] uint8 frames as an H.264 mp4 (yuv420p).

  H and W must be even (yuv420p); nothing is resized. Returns the path.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"write_video needs [T, H, W, 3] uint8 frames, got "
                     f"{frames.shape} {frames.dtype}")
  if frames.shape[1] % 2 or frames.shape[2] % 2:
    raise ValueError(f"write_video needs even H and W, got {frames.shape}")
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  iio.imwrite(path, frames, plugin="FFMPEG", fps=fps, codec="libx264",
              quality=quality, macro_block_size=2)
  return path


# ----------------------------------------------------------------- resize/crop


def _as_video(x: np.ndarray) -> tuple[np.ndarray, bool]:
  x = np.asarray(x)
  if x.ndim == 3:
    return x[None], True
  if x.ndim != 4:
    raise ValueError(f"expected [T, H, W, C] or [H, W, C], got {x.shape}")
  return x, False


def resize(video: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """[T, H, W, C] (or [H, W, C]) uint8 -> [T, h, w, C], PIL bilinear.

  Bilinear with PIL's antialiasing filter support when shrinking.
  """
  v, single = _as_video(video)
  h, w = int(size[0]), int(size[1])
  if v.shape[1:3] == (h, w):
    return video
  if v.dtype != np.uint8:
    raise ValueError(f"resize expects uint8 frames, got {v.dtype}")
  out = np.stack([np.asarray(Image.fromarray(f.squeeze(-1) if f.shape[-1] == 1
                                             else f).resize(
      (w, h), Image.BILINEAR)).reshape(h, w, -1) for f in v])
  return out[0] if single else out


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
  """(h, w) with min(h, w) = size and the aspect ratio kept (rounded)."""
  scale = size / min(height, width)
  return (max(size, round(height * scale)), max(size, round(width * scale)))


def resize_short_side(video: np.ndarray, size: int) -> np.ndarray:
  """Resizes so that the shorter side is `size` (aspect ratio kept)."""
  v, _ = _as_video(video)
  return resize(video, short_side_size(v.shape[1], v.shape[2], size))


def crop(video: np.ndarray, top: int, left: int, size: tuple[int, int]
         ) -> np.ndarray:
  """[.., H, W, C] -> [.., h, w, C] window at (top, left)."""
  h, w = size
  H, W = video.shape[-3], video.shape[-2]
  if not (0 <= top <= H - h and 0 <= left <= W - w):
    raise ValueError(f"crop {h}x{w} at ({top}, {left}) outside {H}x{W}")
  return video[..., top:top + h, left:left + w, :]


def center_crop(video: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Central [.., h, w, C] window (offsets floor((H - h) / 2))."""
  H, W = video.shape[-3], video.shape[-2]
  return crop(video, (H - size[0]) // 2, (W - size[1]) // 2, size)


def resize_and_center_crop(video: np.ndarray, size: int) -> np.ndarray:
  """Short side to `size`, then the central size x size window."""
  return center_crop(resize_short_side(video, size), (size, size))


def _pair(size) -> tuple[int, int]:
  return (int(size), int(size)) if np.isscalar(size) else (
      int(size[0]), int(size[1]))


class ResizeVideo(grain.transforms.Map):
  """Resizes `element[key]` ([T, H, W, C] uint8): exact (h, w) or short side.

  Args:
    size: int or (h, w). With an int and short_side=True, min(H, W) -> size.
    short_side: keep the aspect ratio (int size only).
    key: the dict key holding the frames.
  """

  def __init__(self, size, short_side: bool = False, key: str = "video"):
    if short_side and not np.isscalar(size):
      raise ValueError("short_side resizing takes an int size")
    self.size, self.short_side, self.key = size, short_side, key

  def map(self, element: dict) -> dict:
    x = element[self.key]
    out = (resize_short_side(x, int(self.size)) if self.short_side
           else resize(x, _pair(self.size)))
    return {**element, self.key: out}


class CenterCropVideo(grain.transforms.Map):
  """Central crop of `element[key]` to size (int or (h, w))."""

  def __init__(self, size, key: str = "video"):
    self.size, self.key = _pair(size), key

  def map(self, element: dict) -> dict:
    return {**element, self.key: center_crop(element[self.key], self.size)}


class RandomCropVideo(grain.transforms.RandomMap):
  """Random crop of `element[key]` (same window on every frame)."""

  def __init__(self, size, key: str = "video"):
    self.size, self.key = _pair(size), key

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    x = element[self.key]
    H, W = x.shape[-3], x.shape[-2]
    if H < self.size[0] or W < self.size[1]:
      raise ValueError(f"RandomCropVideo {self.size} larger than {H}x{W}")
    top = int(rng.integers(0, H - self.size[0] + 1))
    left = int(rng.integers(0, W - self.size[1] + 1))
    return {**element, self.key: crop(x, top, left, self.size)}

"""Multi-view world records (world_multiview, world_qa) as single-view examples.

`ViewSource(source, view)` gives random access to the records of a
world_multiview / world_qa source with their view axis V selected:

  view = v >= 0   view v of every record: len(source) examples;
  view = -1       every (record, view) pair, record-major: len(source) * V
                  examples, example n is view n % V of record n // V.

An example is the record with the per-view fields (PER_VIEW) taken at the
view (video [T, H, W, 3], depth / instance [T, H, W], centers [T, K, 2],
boxes [T, K, 4], visible / in_view [T, K], intrinsics [3, 3],
world_to_camera [T, 4, 4]), `caption` replaced by the view's caption (from
`view_captions`; captions name image directions, which differ between views)
and `view` (int64) added; the other fields are the record's (`events` stays
view 0's: `view_events[v]` has view v's enter / exit). So it has every field
of a world_video record and `pipeline.Preprocess` reads it as is.
"""
from __future__ import annotations

import json

import numpy as np

DATASETS = ("world_multiview", "world_qa")
PER_VIEW = ("video", "depth", "instance", "centers", "boxes", "visible",
            "in_view", "intrinsics", "world_to_camera")


def num_views(source) -> int:
  """V of a world_multiview / world_qa source (from its features)."""
  info = getattr(source, "dataset_info", None)
  if info is not None:
    return int(info.features["video"].shape[0])
  return int(np.asarray(source[0]["video"]).shape[0])


def select_view(record: dict, view: int) -> dict:
  """The record seen from one view (module docstring)."""
  out = dict(record)
  for key in PER_VIEW:
    if key in out:
      out[key] = np.asarray(out[key])[view]
  if "view_captions" in out:
    out["caption"] = json.loads(out["view_captions"])[view].encode("utf-8")
  out["view"] = np.int64(view)
  return out


class ViewSource:
  """Random access to single-view examples of a multi-view world source."""

  def __init__(self, source, view: int = 0, name: str = "world_multiview"):
    self.source = source
    self.view = int(view)
    self.num_views = num_views(source)
    if not -1 <= self.view < self.num_views:
      raise ValueError(f"{name}: data.view={view} must be -1 (every view) or "
                       f"in [0, {self.num_views}) (its records have "
                       f"{self.num_views} views)")

  def __len__(self) -> int:
    return len(self.source) * (self.num_views if self.view < 0 else 1)

  def __getitem__(self, index) -> dict:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"ViewSource index {index} out of range [0, "
                       f"{len(self)})")
    if self.view < 0:
      record, view = divmod(index, self.num_views)
    else:
      record, view = index, self.view
    return select_view(self.source[record], view)

  def __repr__(self) -> str:
    return f"ViewSource({self.source!r}, view={self.view})"


def all_captions(source) -> list[str]:
  """Every caption of a source: each view's for multi-view world records."""
  out = []
  for i in range(len(source)):
    record = source[i]
    if "view_captions" in record:
      out.extend(json.loads(record["view_captions"]))
    else:
      cap = record["caption"]
      out.append(cap.decode("utf-8") if isinstance(cap, bytes) else str(cap))
  return out

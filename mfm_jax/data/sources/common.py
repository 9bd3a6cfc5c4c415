"""Shared pieces of the real-format sources: bad records, records, videos.

Bad input (a missing or unreadable video, a record missing a field, an answer
that is not among the choices, a duplicate id) is handled by one policy,
`on_bad_record`:

  "raise"  stop at the first bad record: `BadRecordError` names the file and
           the record id;
  "skip"   leave it out, count it, log a summary and write every skipped
           record (file, id, reason) to `bad_records.json` next to the
           prepared array_record files.

Never silent: a dataset prepared with "skip" that skipped records refuses to
load under "raise" (the report is read back on load) and logs its summary
under "skip".
"""
from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping

from absl import logging
from etils import epath

POLICIES = ("raise", "skip")
REPORT_FILE = "bad_records.json"
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi")


class BadRecordError(ValueError):
  """A bad input record; names the file and the record id."""

  def __init__(self, file, record_id, reason: str):
    self.file = os.fspath(file)
    self.record_id = str(record_id)
    self.reason = reason
    super().__init__(f"{self.file}: record {self.record_id}: {reason}")


def check_policy(on_bad_record: str) -> str:
  if on_bad_record not in POLICIES:
    raise ValueError(f"on_bad_record must be one of {POLICIES}, got "
                     f"{on_bad_record!r}")
  return on_bad_record


class BadRecords:
  """Applies the on_bad_record policy and keeps the skipped records.

  `report(file, record_id, reason)` raises `BadRecordError` under "raise";
  under "skip" it records the entry and returns False (so callers can write
  `if not ok: continue`).
  """

  def __init__(self, on_bad_record: str = "raise", dataset: str = ""):
    self.policy = check_policy(on_bad_record)
    self.dataset = dataset
    self.entries: list[dict] = []

  def report(self, file, record_id, reason: str, split: str = "") -> bool:
    err = BadRecordError(file, record_id, reason)
    if self.policy == "raise":
      raise err
    self.entries.append({"split": split, "file": err.file,
                         "id": err.record_id, "reason": reason})
    logging.warning("%s: skipping bad record: %s", self.dataset, err)
    return False

  def __len__(self) -> int:
    return len(self.entries)

  def counts(self) -> dict:
    """{reason kind (text before the first ':'): count}."""
    return dict(collections.Counter(e["reason"].split(":")[0]
                                    for e in self.entries))

  def write(self, directory, kept: Mapping[str, int]) -> epath.Path:
    """Writes bad_records.json into `directory` and logs the summary."""
    path = epath.Path(directory) / REPORT_FILE
    report = {"dataset": self.dataset, "on_bad_record": self.policy,
              "kept": dict(kept), "skipped": len(self.entries),
              "skipped_by_reason": self.counts(), "records": self.entries}
    path.write_text(json.dumps(report, indent=1))
    if self.entries:
      logging.warning("%s: skipped %d bad record(s) %s; kept %s; see %s",
                      self.dataset, len(self.entries), self.counts(),
                      dict(kept), path)
    return path


def read_report(data_path) -> dict | None:
  path = epath.Path(data_path) / REPORT_FILE
  return json.loads(path.read_text()) if path.exists() else None


def check_report_on_load(data_path, on_bad_record: str, dataset: str) -> None:
  """Re-applies the policy to a prepared dataset's skipped records."""
  report = read_report(data_path)
  if not report or not report.get("skipped"):
    return
  first = report["records"][0]
  where = epath.Path(data_path) / REPORT_FILE
  if check_policy(on_bad_record) == "raise":
    raise BadRecordError(
        first["file"], first["id"],
        f"{first['reason']} (this dataset was prepared with "
        f"on_bad_record='skip' and skipped {report['skipped']} record(s), "
        f"listed in {where}; load it with on_bad_record='skip' or fix the "
        f"input and prepare it into a fresh data_dir)")
  logging.warning("%s: %d bad record(s) were skipped when preparing %s: %s",
                  dataset, report["skipped"], data_path,
                  report.get("skipped_by_reason"))


# ------------------------------------------------------------------- records


def load_json(path) -> object:
  """Parses a JSON file; a syntax error names the file and line."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such file")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: invalid JSON at line {e.lineno} column "
                     f"{e.colno}: {e.msg}") from e


def missing_fields(record, fields: Iterable[str]) -> list[str]:
  if not isinstance(record, Mapping):
    return list(fields)
  return [f for f in fields if f not in record or record[f] is None]


def as_text(value) -> str:
  """Choice / answer text: numbers (VLM4D counting items) as their str."""
  if isinstance(value, bool):
    raise TypeError(f"expected text, got boolean {value}")
  if isinstance(value, (int, float)):
    return str(value)
  if not isinstance(value, str):
    raise TypeError(f"expected text, got {type(value).__name__}")
  return value


def as_bool(value) -> bool:
  """JSON booleans, 0 / 1 and "true" / "false" (any case)."""
  if isinstance(value, bool):
    return value
  if isinstance(value, int) and value in (0, 1):
    return bool(value)
  if isinstance(value, str) and value.strip().lower() in ("true", "false"):
    return value.strip().lower() == "true"
  raise TypeError(f"expected a boolean, got {value!r}")


def parse_choices(choices, labels: tuple[str, ...], answer
                  ) -> tuple[list[str], list[bool]]:
  """Choice texts in label order and which of them equal the answer.

  Texts are compared with surrounding whitespace stripped. The real VLM4D
  files hold one question whose answer text appears twice (ids are kept:
  both choices are marked correct).

  Raises:
    ValueError: missing / extra labels, or the answer is none of the choices.
  """
  if not isinstance(choices, Mapping):
    raise ValueError(f"choices must be an object {{{', '.join(labels)}}}, "
                     f"got {type(choices).__name__}")
  if sorted(choices) != sorted(labels):
    raise ValueError(f"choices have labels {sorted(choices)}, expected "
                     f"{list(labels)}")
  try:
    texts = [as_text(choices[k]) for k in labels]
    answer = as_text(answer).strip()
  except TypeError as e:
    raise ValueError(f"bad choice or answer: {e}") from None
  correct = [t.strip() == answer for t in texts]
  if not any(correct):
    raise ValueError(f"answer not among the choices: answer {answer!r}, "
                     f"choices {dict(zip(labels, texts))}")
  return texts, correct


def index_videos(root, what: str = "video") -> tuple[dict, dict]:
  """Maps file names and stems to video paths under `root` (recursive).

  Returns:
    (by_name, ambiguous): by_name[name] and by_name[stem] -> path for every
    video file; ambiguous[key] -> [paths] where two files share the key (a
    lookup of such a key is a bad record, never a guess).
  """
  root = epath.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"{root}: {what} folder does not exist")
  seen = collections.defaultdict(list)
  for dirpath, _, files in os.walk(os.fspath(root)):
    for f in files:
      if f.lower().endswith(VIDEO_EXTENSIONS):
        path = os.path.join(dirpath, f)
        seen[f].append(path)
        seen[os.path.splitext(f)[0]].append(path)
  by_name = {k: v[0] for k, v in seen.items() if len(set(v)) == 1}
  ambiguous = {k: sorted(set(v)) for k, v in seen.items() if len(set(v)) > 1}
  return by_name, ambiguous


def find_video(key: str, by_name: dict, ambiguous: dict, root,
               hint: str | None = None) -> str:
  """The path of video `key` (name or stem); ValueError says what's wrong.

  When several files share the name, `hint` (the record's URL or path)
  picks the one whose trailing path components match it the longest.
  """
  if key in ambiguous:
    paths = ambiguous[key]
    if hint:
      parts = [p for p in hint.replace("\\", "/").split("/") if p]
      def score(path):
        tail = path.replace(os.sep, "/").split("/")
        n = 0
        while n < min(len(tail), len(parts)) and tail[-1 - n] == parts[-1 - n]:
          n += 1
        return n
      scores = [score(p) for p in paths]
      best = max(scores)
      if scores.count(best) == 1 and best > 1:
        return paths[scores.index(best)]
    raise ValueError(f"video {key!r} is ambiguous under {root}: {paths}")
  if key not in by_name:
    raise ValueError(f"missing video file: no {key!r} under {root}")
  return by_name[key]


# ------------------------------------------------------------- fingerprinting


def fingerprint(root, files: Iterable[str] = ()) -> str:
  """Hash of a manual_dir: its path, the bytes of `files`, every file's
  relative path and size. 10 hex digits."""
  root = os.path.abspath(os.fspath(root))
  h = hashlib.sha256(root.encode())
  for f in files:
    h.update(f.encode())
    h.update(epath.Path(root, f).read_bytes())
  for dirpath, dirs, names in os.walk(root):
    dirs.sort()
    for n in sorted(names):
      p = os.path.join(dirpath, n)
      h.update(f"{os.path.relpath(p, root)}:{os.path.getsize(p)}".encode())
  return h.hexdigest()[:10]


# ------------------------------------------------------------ parallel decode


def ordered_map(fn: Callable, items: Iterable, num_workers: int,
                window: int | None = None) -> Iterator:
  """(item, fn(item) or the exception it raised), in order; threads.

  Decoding runs ffmpeg subprocesses, so threads use all cores. At most
  `window` (default 2 x workers) results wait in memory.
  """
  num_workers = max(1, int(num_workers))

  def call(item):
    try:
      return fn(item)
    except Exception as e:  # pylint: disable=broad-except
      return e

  if num_workers == 1:
    for item in items:
      yield item, call(item)
    return
  window = window or 2 * num_workers
  pending = collections.deque()
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    for item in items:
      pending.append((item, pool.submit(call, item)))
      if len(pending) >= window:
        item0, fut = pending.popleft()
        yield item0, fut.result()
    while pending:
      item0, fut = pending.popleft()
      yield item0, fut.result()

"""Language edit commands for the 4D scene: instruction text -> (operation, target, arguments).

A deterministic rule parser for instructions such as

  "remove the red cube"                 -> Command("delete",   target the red cube)
  "keep only the spheres"               -> Command("extract",  target spheres)
  "make the sphere blue"                -> Command("recolour", target the sphere, colour blue)
  "tint the large cube green"           -> Command("recolour", ..., mode="multiply")
  "move the small cylinder to the left" -> Command("redirect", ..., direction (-1, 0, 0))

and the same interface for any other parser (e.g. one backed by an LLM): a ``Parser`` is a
callable ``parse(text) -> Command``; :class:`CallableParser` wraps a function that returns the
command as a dict (e.g. parsed from an LLM's JSON answer) and validates it.

Targets are noun phrases over the world's vocabulary (size, colour, material, shape words from
``mfm_jax.data.world.sim``); ``Target.text`` is the phrase itself, which the scene embeds with the
text tower to select Gaussians by feature similarity, and ``Target.attributes`` the words it
recognised (for selection by known attributes, and for tests). A plural or "all" target
("the spheres", "all red objects") sets ``Target.plural``.

Directions are in the scene's world frame: x right, y forward (away from the default camera),
z up; "left"/"right" are -x/+x, "forward"/"away"/"back"/"towards the camera" are +y/-y, "up"/"down"
are +z/-z. "towards the blue cube" gives ``towards`` = that object's phrase (resolved by the scene).

Unknown instructions raise a ``ValueError`` that quotes the instruction and lists what the
parser understands; nothing is guessed.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, Protocol

from mfm_jax.data.world import sim

OPERATIONS = ("delete", "extract", "recolour", "redirect")
RECOLOUR_MODES = ("assign", "add", "multiply")

# Colour names -> RGB in [0, 1]: the world's palette plus a few common names.
COLOURS: dict[str, tuple[float, float, float]] = {
    name: tuple(c / 255.0 for c in rgb) for name, rgb in zip(sim.COLOR_NAMES, sim.PALETTE)}
COLOURS.update({"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5),
                "grey": (0.5, 0.5, 0.5), "pink": (1.0, 0.6, 0.75), "brown": (0.55, 0.35, 0.15)})
_COLOUR_ALIASES = {"colour": "color", "violet": "purple"}

SIZES = ("small", "medium", "large", "big", "tiny")
_SIZE_ALIASES = {"big": "large", "tiny": "small"}
SHAPES = tuple(sim.SHAPE_NAMES) + ("ball", "box", "block", "object", "thing")
_SHAPE_ALIASES = {"ball": "sphere", "box": "cube", "block": "cube", "object": None, "thing": None}
MATERIALS = tuple(sim.MATERIAL_NAMES) + ("metallic", "rubber", "shiny")
_MATERIAL_ALIASES = {"metallic": "metal", "shiny": "metal", "rubber": "matte"}

DIRECTIONS: dict[str, tuple[float, float, float]] = {
    "left": (-1.0, 0.0, 0.0), "right": (1.0, 0.0, 0.0),
    "forward": (0.0, 1.0, 0.0), "forwards": (0.0, 1.0, 0.0), "away": (0.0, 1.0, 0.0),
    "back": (0.0, -1.0, 0.0), "backward": (0.0, -1.0, 0.0), "backwards": (0.0, -1.0, 0.0),
    "towards the camera": (0.0, -1.0, 0.0), "toward the camera": (0.0, -1.0, 0.0),
    "up": (0.0, 0.0, 1.0), "down": (0.0, 0.0, -1.0),
}

_DELETE = r"(?:remove|delete|erase|get rid of|take away|take out|eliminate)"
_EXTRACT = r"(?:keep only|only keep|extract|isolate|show only|only show|keep just)"
_RECOLOUR_TO = r"(?:recolou?r|paint|colou?r|change the colou?r of|turn|make)"
_TINT = r"(?:tint)"
_MOVE = r"(?:move|push|send|slide|roll|redirect|shift)"


@dataclasses.dataclass(frozen=True)
class Target:
  """What an edit applies to.

  Attributes:
    text: the noun phrase as written, without the leading article ("red cube").
    attributes: recognised words, canonical: any of ``size``, ``color``, ``material``, ``shape``.
    plural: the phrase names every matching object ("the spheres", "all red objects").
  """
  text: str
  attributes: Mapping[str, str]
  plural: bool = False


@dataclasses.dataclass(frozen=True)
class Command:
  """One edit: ``operation`` in OPERATIONS, its ``target`` and operation-specific ``args``.

  args: recolour -> ``color`` (name), ``rgb`` (3 floats in [0, 1]), ``mode`` (RECOLOUR_MODES);
  redirect -> ``direction`` (unit 3-vector, world frame) or ``towards`` (a noun phrase), and
  ``distance`` (scene units, None = the parser's caller decides).
  """
  operation: str
  target: Target
  args: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Parser(Protocol):
  def __call__(self, text: str) -> Command: ...


def parse_target(phrase: str) -> Target:
  """'the large red cube' -> Target('large red cube', {size, color, shape})."""
  words = re.sub(r"[^a-z ]", " ", phrase.lower()).split()
  plural = bool(words) and words[0] in ("all", "every", "each")
  words = [w for w in words if w not in ("the", "a", "an", "all", "every", "each", "of")]
  if not words:
    raise ValueError(f"no object named in {phrase!r}")
  attrs: dict[str, str] = {}
  for w in words:
    base = w[:-1] if w.endswith("s") and w[:-1] in SHAPES else w
    if base != w:
      plural = True
    if base in SHAPES:
      shape = _SHAPE_ALIASES.get(base, base)
      if shape:
        attrs["shape"] = shape
    elif w in COLOURS or w in _COLOUR_ALIASES:
      attrs["color"] = _COLOUR_ALIASES.get(w, w)
    elif w in SIZES:
      attrs["size"] = _SIZE_ALIASES.get(w, w)
    elif w in MATERIALS:
      attrs["material"] = _MATERIAL_ALIASES.get(w, w)
    elif w in ("objects", "things"):
      plural = True
    else:
      raise ValueError(f"unknown word {w!r} in the object phrase {phrase!r}; known: sizes "
                       f"{SIZES}, colours {sorted(COLOURS)}, materials {MATERIALS}, shapes "
                       f"{SHAPES}")
  return Target(" ".join(words), attrs, plural)


def _colour(word: str, instruction: str) -> tuple[str, tuple[float, float, float]]:
  w = _COLOUR_ALIASES.get(word, word)
  if w not in COLOURS:
    raise ValueError(f"{instruction!r}: unknown colour {word!r}; known: {sorted(COLOURS)}")
  return w, COLOURS[w]


def _direction(phrase: str) -> dict[str, Any]:
  """'to the left side' / 'towards the camera' / 'up' -> {'direction': vector}, or {}."""
  phrase = re.sub(r"\s+(?:side|direction)$", "", " ".join(phrase.lower().split()))
  bare = re.sub(r"^(?:to(?:wards?)?|in|on)?\s*(?:the\s+)?", "", phrase)
  for candidate in (phrase, bare):
    if candidate in DIRECTIONS:
      return {"direction": DIRECTIONS[candidate]}
  return {}


_DISTANCE = r"(?:\s+by\s+(?P<dist>\d+(?:\.\d+)?)(?:\s+units?)?)?"


def rule_parse(text: str) -> Command:
  """The deterministic parser (see the module docstring)."""
  s = " ".join(text.lower().strip().rstrip(".!").split())
  s = re.sub(r"^(?:please\s+|can you\s+|could you\s+)", "", s)
  m = re.fullmatch(rf"{_DELETE}\s+(?P<t>.+?)(?:\s+from the scene)?", s)
  if m:
    return Command("delete", parse_target(m["t"]))
  m = re.fullmatch(rf"{_EXTRACT}\s+(?P<t>.+?)", s)
  if m:
    return Command("extract", parse_target(m["t"]))
  m = re.fullmatch(rf"{_TINT}\s+(?P<t>.+?)\s+(?P<c>[a-z]+)", s)
  if m:
    name, rgb = _colour(m["c"], text)
    return Command("recolour", parse_target(m["t"]), {"color": name, "rgb": rgb,
                                                       "mode": "multiply"})
  m = re.fullmatch(r"make\s+(?P<t>.+?)\s+more\s+(?P<c>[a-z]+)", s)
  if m:
    name, rgb = _colour(m["c"], text)
    return Command("recolour", parse_target(m["t"]), {"color": name, "rgb": rgb, "mode": "add"})
  m = re.fullmatch(rf"{_RECOLOUR_TO}\s+(?P<t>.+?)\s+(?:to\s+|into\s+)?(?P<c>[a-z]+)", s)
  if m and (m["c"] in COLOURS or m["c"] in _COLOUR_ALIASES):
    name, rgb = _colour(m["c"], text)
    return Command("recolour", parse_target(m["t"]), {"color": name, "rgb": rgb,
                                                       "mode": "assign"})
  m = re.fullmatch(rf"{_MOVE}\s+(?P<t>.+?)\s+(?P<d>(?:to(?:wards?)?\s+|in\s+)?(?:the\s+)?"
                   rf"(?:{'|'.join(sorted(DIRECTIONS, key=len, reverse=True))})"
                   rf"(?:\s+side|\s+direction)?){_DISTANCE}", s)
  if m:
    args = _direction(m["d"])
    args["distance"] = float(m["dist"]) if m["dist"] else None
    return Command("redirect", parse_target(m["t"]), args)
  m = re.fullmatch(rf"{_MOVE}\s+(?P<t>.+?)\s+towards?\s+(?P<o>.+?){_DISTANCE}", s)
  if m:
    other = parse_target(m["o"])
    return Command("redirect", parse_target(m["t"]),
                   {"towards": other.text, "distance": float(m["dist"]) if m["dist"] else None})
  raise ValueError(
      f"cannot parse the instruction {text!r}: use e.g. 'remove the red cube', 'keep only the "
      f"spheres', 'make the sphere blue', 'tint the cube green', 'move the small cylinder to the "
      f"left' (operations: {OPERATIONS})")


def command_from_dict(d: Mapping[str, Any], source: str = "command") -> Command:
  """Validates a command given as a dict (``operation``, ``target``, optional ``args``)."""
  missing = [k for k in ("operation", "target") if k not in d]
  if missing:
    raise ValueError(f"{source}: missing field(s) {missing} in {dict(d)!r}")
  op = str(d["operation"]).lower().replace("recolor", "recolour")
  if op not in OPERATIONS:
    raise ValueError(f"{source}: operation {d['operation']!r} is not one of {OPERATIONS}")
  args = dict(d.get("args") or {})
  if op == "recolour":
    if "color" not in args:
      raise ValueError(f"{source}: recolour needs args.color")
    name, rgb = _colour(str(args["color"]).lower(), source)
    mode = args.get("mode", "assign")
    if mode not in RECOLOUR_MODES:
      raise ValueError(f"{source}: recolour mode {mode!r} is not one of {RECOLOUR_MODES}")
    args.update(color=name, rgb=rgb, mode=mode)
  if op == "redirect":
    if "direction" in args and isinstance(args["direction"], str):
      found = _direction(args["direction"])
      if not found:
        raise ValueError(f"{source}: unknown direction {args['direction']!r}; known: "
                         f"{sorted(DIRECTIONS)}")
      args.update(found)
    if "direction" not in args and "towards" not in args:
      raise ValueError(f"{source}: redirect needs args.direction or args.towards")
    args.setdefault("distance", None)
  return Command(op, parse_target(str(d["target"])), args)


class CallableParser:
  """Wraps ``fn(text) -> dict`` (e.g. an LLM asked for JSON) behind the Parser interface."""

  def __init__(self, fn: Callable[[str], Mapping[str, Any]]):
    self.fn = fn

  def __call__(self, text: str) -> Command:
    out = self.fn(text)
    if not isinstance(out, Mapping):
      raise TypeError(f"parser for {text!r} returned {type(out).__name__}, expected a dict")
    return command_from_dict(out, source=f"parser output for {text!r}")


def parse(text: str, parser: Parser | None = None) -> Command:
  """Parses one instruction with ``parser`` (default: :func:`rule_parse`)."""
  return (parser or rule_parse)(text)

"""The edit-command parser: operations, targets, arguments, plug-in parsers, errors."""
import pytest

from mfm_jax.data.world import sim
from mfm_jax.world4d import commands as cmd


@pytest.mark.parametrize("text, op, attrs, plural", [
    ("remove the red cube", "delete", {"color": "red", "shape": "cube"}, False),
    ("Please delete the large metal sphere.", "delete",
     {"size": "large", "material": "metal", "shape": "sphere"}, False),
    ("get rid of the small blue ball from the scene", "delete",
     {"size": "small", "color": "blue", "shape": "sphere"}, False),
    ("keep only the spheres", "extract", {"shape": "sphere"}, True),
    ("extract all red objects", "extract", {"color": "red"}, True),
    ("isolate the big green cylinder", "extract",
     {"size": "large", "color": "green", "shape": "cylinder"}, False),
])
def test_delete_and_extract(text, op, attrs, plural):
  c = cmd.parse(text)
  assert c.operation == op
  assert dict(c.target.attributes) == attrs
  assert c.target.plural == plural
  assert c.args == {}


def test_recolour_modes_and_palette_colours():
  c = cmd.parse("make the sphere blue")
  assert (c.operation, c.target.text, c.args["color"], c.args["mode"]) == (
      "recolour", "sphere", "blue", "assign")
  assert c.args["rgb"] == tuple(v / 255.0 for v in sim.PALETTE[sim.COLOR_NAMES.index("blue")])
  assert cmd.parse("paint the small cube to orange").args["color"] == "orange"
  assert cmd.parse("change the colour of the cylinder to yellow").target.attributes == {
      "shape": "cylinder"}
  assert cmd.parse("tint the large cube green").args["mode"] == "multiply"
  more = cmd.parse("make the cube more red")
  assert (more.args["mode"], more.target.text) == ("add", "cube")
  assert cmd.parse("recolor the cube white").args["rgb"] == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("text, direction, distance", [
    ("move the small cylinder to the left", (-1.0, 0.0, 0.0), None),
    ("push the red cube right by 2 units", (1.0, 0.0, 0.0), 2.0),
    ("slide the sphere forward", (0.0, 1.0, 0.0), None),
    ("move the blue ball towards the camera", (0.0, -1.0, 0.0), None),
    ("send the cube to the right side by 0.5", (1.0, 0.0, 0.0), 0.5),
])
def test_redirect_directions(text, direction, distance):
  c = cmd.parse(text)
  assert c.operation == "redirect"
  assert c.args["direction"] == direction and c.args["distance"] == distance


def test_redirect_towards_another_object():
  c = cmd.parse("move the small cylinder towards the blue cube")
  assert c.target.attributes == {"size": "small", "shape": "cylinder"}
  assert c.args == {"towards": "blue cube", "distance": None}


@pytest.mark.parametrize("text, match", [
    ("dance the red cube", "cannot parse"),
    ("remove the", "no object"),
    ("remove the shiny dragon", "unknown word 'dragon'"),
    ("make the cube chartreuse", "cannot parse"),
    ("tint the cube chartreuse", "unknown colour"),
])
def test_bad_instructions_are_clear_errors(text, match):
  with pytest.raises(ValueError, match=match):
    cmd.parse(text)


def test_callable_parser_plugs_in_and_is_validated():
  answers = {"remove it": {"operation": "delete", "target": "the red cube"},
             "recolour": {"operation": "recolor", "target": "sphere",
                          "args": {"color": "Green"}},
             "go left": {"operation": "redirect", "target": "cube",
                         "args": {"direction": "to the left"}},
             "bad op": {"operation": "explode", "target": "cube"},
             "no colour": {"operation": "recolour", "target": "cube"},
             "no target": {"operation": "delete"}}
  parser = cmd.CallableParser(lambda text: answers[text])
  assert cmd.parse("remove it", parser) == cmd.parse("remove the red cube")
  c = cmd.parse("recolour", parser)
  assert (c.operation, c.args["color"], c.args["mode"]) == ("recolour", "green", "assign")
  assert cmd.parse("go left", parser).args["direction"] == (-1.0, 0.0, 0.0)
  for text, match in [("bad op", "not one of"), ("no colour", "args.color"),
                      ("no target", "missing field")]:
    with pytest.raises(ValueError, match=match):
      cmd.parse(text, parser)
  with pytest.raises(TypeError, match="expected a dict"):
    cmd.parse("x", cmd.CallableParser(lambda t: "delete"))

"""Edits on a rendered Gaussian scene: selection by feature similarity, and delete / extract /
recolour / redirect checked on the rasterised pixels."""
import jax.numpy as jnp
import numpy as np
import pytest

from mfm_jax.render import cameras
from mfm_jax.render import gaussians as gs
from mfm_jax.world4d import commands, edits

W = H = 32


def _scene():
  """A red blob on the left, a blue blob on the right, in front of a camera on -y looking +y."""
  means = jnp.array([[-0.6, 0.0, 0.0], [0.6, 0.0, 0.0]])
  return {"means": means, "scales": jnp.full((2, 3), 0.15), "quats": jnp.tile(
      jnp.array([1.0, 0, 0, 0]), (2, 1)), "opacities": jnp.array([0.9, 0.9]),
          "colors": jnp.array([[0.9, 0.1, 0.1], [0.1, 0.2, 0.9]]),
          "features": jnp.array([[1.0, 0.0, 0.1], [0.0, 1.0, 0.1]]),
          "alive": jnp.ones(2)}


def _render(g, means=None):
  cam = cameras.from_fov(60.0, W, H, cameras.look_at(jnp.array([0.0, -3.0, 0.0]),
                                                     jnp.zeros(3)))
  out = gs.render(g["means"] if means is None else means, g["scales"], g["quats"],
                  g["opacities"], g["colors"], cam, width=W, height=H, alive=g["alive"])
  return np.asarray(out["rgb"]), np.asarray(out["alpha"])


def _red_query_selection(g):
  return edits.select(g["features"], jnp.array([1.0, 0.0, 0.0]), g["alive"], threshold=0.9)


def test_select_by_cosine_similarity_and_alive():
  g = _scene()
  np.testing.assert_array_equal(_red_query_selection(g), [True, False])
  dead = dict(g, alive=jnp.array([0.0, 1.0]))
  np.testing.assert_array_equal(_red_query_selection(dead), [False, False])
  with pytest.raises(ValueError, match="decoded must be"):
    edits.select(g["features"], jnp.ones(4), g["alive"], 0.5)


def test_delete_removes_exactly_the_selected_pixels():
  g = _scene()
  rgb, alpha = _render(g)
  left, right = alpha[:, : W // 2], alpha[:, W // 2:]
  assert left.max() > 0.5 and right.max() > 0.5
  edited, _ = edits.apply(g, commands.parse("remove the red object"), _red_query_selection(g))
  rgb2, alpha2 = _render(edited)
  assert alpha2[:, : W // 2].max() < 1e-3                    # the red blob is gone
  only_blue = dict(g, alive=jnp.array([0.0, 1.0]))           # the twin rendered without it
  np.testing.assert_allclose(rgb2, _render(only_blue)[0], atol=1e-6)
  extracted, _ = edits.apply(g, commands.parse("keep only the red object"),
                             _red_query_selection(g))
  assert _render(extracted)[1][:, W // 2:].max() < 1e-3      # only the red one stays


def test_recolour_changes_only_the_selected_object():
  g = _scene()
  rgb, alpha = _render(g)
  sel = _red_query_selection(g)
  edited, _ = edits.apply(g, commands.parse("make the red object green"), sel)
  rgb2, _ = _render(edited)
  np.testing.assert_allclose(rgb2[:, W // 2:], rgb[:, W // 2:], atol=1e-6)   # blue side unchanged
  px = np.unravel_index(np.argmax(alpha[:, : W // 2]), alpha[:, : W // 2].shape)
  g_old, g_new = rgb[px][1], rgb2[px][1]
  assert g_new > g_old + 0.3 and rgb2[px][0] < rgb[px][0]   # red -> green at the blob's centre
  tinted = edits.recolour(g, sel, (0.5, 1.0, 1.0), "multiply")
  np.testing.assert_allclose(tinted["colors"][0], [0.45, 0.1, 0.1])
  np.testing.assert_allclose(tinted["colors"][1], g["colors"][1])
  added = edits.recolour(g, sel, (0.5, 0.0, 0.0), "add")
  np.testing.assert_allclose(added["colors"][0], [1.0, 0.1, 0.1])   # clipped at 1
  with pytest.raises(ValueError, match="not one of"):
    edits.recolour(g, sel, (1, 1, 1), "blend")


def test_redirect_moves_the_selected_object_over_time():
  g = _scene()
  sel = _red_query_selection(g)
  edited, move = edits.apply(g, commands.parse("move the red object to the right by 0.6"), sel)
  np.testing.assert_allclose(move(g["means"], 0.0), g["means"])
  end = move(g["means"], 1.0)
  np.testing.assert_allclose(end[0], [0.0, 0.0, 0.0], atol=1e-6)     # -0.6 + 0.6 along +x
  np.testing.assert_allclose(end[1], g["means"][1])
  _, alpha = _render(edited, end)
  xs = np.arange(W)
  centre_x = (alpha.sum(0) * xs).sum() / alpha.sum()
  assert centre_x > W / 2 - 0.5 + 2    # the image's mass moved right of the blue-red midpoint
  with pytest.raises(ValueError, match="resolve the target"):
    edits.apply(g, commands.parse("move the red object towards the blue cube"), sel)


def test_relevancy_separates_where_a_cosine_threshold_cannot():
  # An anisotropic teacher space: every phrase shares a big common direction (as in the small
  # CLIP text tower, where "background" and the object descriptions have cosines 0.6-0.8).
  common = np.array([1.0, 0.0, 0.0, 0.0])
  purple = common + 0.5 * np.array([0, 1.0, 0, 0])
  orange = common + 0.5 * np.array([0, 0, 1.0, 0])
  background = common + 0.3 * np.array([0, 0, 0, 1.0])
  decoded = jnp.asarray(np.stack([purple, orange, background]), jnp.float32)
  query = jnp.asarray(purple + 0.2 * np.array([0, 0, 0.0, 1.0]), jnp.float32)  # off the target
  cos = np.asarray(decoded / jnp.linalg.norm(decoded, axis=-1, keepdims=True)) @ (
      np.asarray(query) / np.linalg.norm(query))
  assert cos.min() > 0.75                           # no threshold in [0.5, 0.75] separates them
  neg = jnp.asarray(background[None], jnp.float32)
  rel = np.asarray(edits.relevancy(decoded, query, neg))
  assert rel[0] > 0.5 > max(rel[1], rel[2]), rel
  # The pairwise form: sigmoid of (cos to query - max cos to a negative) / temperature.
  unit = lambda x: np.asarray(x) / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  margin = unit(decoded) @ unit(query) - (unit(decoded) @ unit(neg).T).max(-1)
  np.testing.assert_allclose(rel, 1.0 / (1.0 + np.exp(-margin / 0.1)), rtol=1e-5)
  # More negatives can only lower the score.
  two = jnp.concatenate([neg, jnp.asarray(orange[None], jnp.float32)])
  assert (np.asarray(edits.relevancy(decoded, query, two)) <= rel + 1e-7).all()
  with pytest.raises(ValueError, match=r"negatives \[K>=1, E\]"):
    edits.relevancy(decoded, query, jnp.zeros((0, 4)))
  with pytest.raises(ValueError, match="relevancy"):
    edits.relevancy(decoded, query[:3], neg)

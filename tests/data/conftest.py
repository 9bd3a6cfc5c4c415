"""Shared fixtures: smoke world datasets, built once per session."""
import pytest


@pytest.fixture(scope="session")
def smoke_data_dir(tmp_path_factory):
  """A TFDS data_dir holding world_video/smoke, built with 2 processes."""
  from mfm_jax.data.world import builder  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  builder.load_source(config="smoke", data_dir=data_dir, num_workers=2)
  return data_dir


@pytest.fixture(scope="session")
def world_v2_data_dir(tmp_path_factory):
  """A TFDS data_dir holding world_multiview/smoke and world_qa/smoke."""
  from mfm_jax.data.world import builder  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds_v2"))
  for name in ("world_multiview", "world_qa"):
    builder.load_source(name, "smoke", data_dir, "train", num_workers=2)
  return data_dir

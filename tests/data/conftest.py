"""Shared fixture: the smoke world_video dataset, built once per session."""
import pytest


@pytest.fixture(scope="session")
def smoke_data_dir(tmp_path_factory):
  """A TFDS data_dir holding world_video/smoke, built with 2 processes."""
  from mfm_jax.data.world import builder  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  builder.load_source(config="smoke", data_dir=data_dir, num_workers=2)
  return data_dir

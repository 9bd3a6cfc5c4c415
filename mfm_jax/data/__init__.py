"""Data: the procedural world, its TFDS builder, grain pipelines, tokenizers.

Import the submodules directly; this package imports nothing heavy:
  mfm_jax.data.world.generate   generate_clip(seed, spec) -> dict of arrays
  mfm_jax.data.world.builder    TFDS `world_video` builder, load_source(...)
  mfm_jax.data.pipeline         make_iterator(data_config, split, ...)
  mfm_jax.data.tokenizer        ByteTokenizer(max_len)
"""

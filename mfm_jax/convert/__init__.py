"""Importers of external checkpoints (safetensors only), each with an explicit key table and every
leaf checked against ``jax.eval_shape`` of the model: ``hf_clip`` (transformers ``CLIPModel``)."""

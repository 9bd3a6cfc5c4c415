"""Task registry: ``tasks.get(name)(config)``. Modules are imported on first use."""
from __future__ import annotations

import importlib

from mfm_jax.engine.task import Task

_REGISTRY = {
    "video_diffusion": "mfm_jax.tasks.video_diffusion:VideoDiffusionTask",
    "video_control": "mfm_jax.tasks.video_control:VideoControlTask",
    "toy_regression": "mfm_jax.tasks.toy:ToyRegressionTask",
    "contrastive": "mfm_jax.tasks.contrastive:ContrastiveTask",
    "classify": "mfm_jax.tasks.classify:ClassifyTask",
    "vqa": "mfm_jax.tasks.vqa:VqaTask",
    "fit4d": "mfm_jax.tasks.fit4d:Fit4DTask",
    "autoencoder": "mfm_jax.tasks.autoencoder:AutoencoderTask",
    "compositional": "mfm_jax.tasks.compositional:CompositionalTask",
    "prompt_learning": "mfm_jax.tasks.prompt_learning:PromptLearningTask",
    "discffusion": "mfm_jax.tasks.discffusion:DiscffusionTask",
    "flex_control": "mfm_jax.tasks.flex_control:FlexControlTask",
}


def names() -> list[str]:
  return sorted(_REGISTRY)


def register(name: str, target: str) -> None:
  """Registers ``"module.path:ClassName"`` under ``name`` (used by plug-ins and later tasks)."""
  _REGISTRY[name] = target


def get(name: str) -> type[Task]:
  if name not in _REGISTRY:
    raise KeyError(f"config.task={name!r} is not a registered task; known: {names()}")
  module, _, cls = _REGISTRY[name].partition(":")
  return getattr(importlib.import_module(module), cls)

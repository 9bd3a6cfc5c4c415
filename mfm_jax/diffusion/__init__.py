"""Diffusion as pure functions: schedules, training objectives, samplers and guidance.

Nothing here is a Flax module or reads a config: models enter as ``model_fn(x, t)`` callables and
settings as static Python values, so every function can be used inside ``jax.jit``.

* ``schedules``: beta schedules and the host-side timestep / sigma tables (diffusers' numbers).
* ``objectives``: ``loss`` for epsilon / v_prediction / sample (x0) / flow, and its pieces.
* ``samplers``: ``sample`` with ddim, ddpm, euler, euler_ancestral, dpmpp_2m (DPM-Solver++ 2M),
  flow_euler, equal to diffusers' scheduler loops; ``sampler_steps`` holds their updates.
* ``guidance``: classifier-free guidance, guidance rescale, condition dropout.
"""
from mfm_jax.diffusion import guidance
from mfm_jax.diffusion import objectives
from mfm_jax.diffusion import samplers
from mfm_jax.diffusion import schedules

__all__ = ["guidance", "objectives", "samplers", "schedules"]

"""Shared Flax (Linen) building blocks, written once for every model family.

``core``: named ``Dense``, ``LayerNorm`` / ``RMSNorm``, ``Attention`` (self / cross, additive bias,
key padding mask, causal, sown maps), ``Mlp`` (``ACTIVATIONS``), ``EncoderBlock``, ``remat``
policies.
``embed``: ``patchify`` / ``unpatchify``, ``TubeletEmbed``, ``TimestepEmbed``, adaLN-Zero
(``AdaLNModulation``, ``modulate``), 3-D sin-cos / learned positions (``PosEmbed3D``).
Import from here: ``from mfm_jax.models import layers; layers.Attention(...)``.
"""
from mfm_jax.models.layers.core import (ACTIVATIONS, Attention, Dense, Dtype, EncoderBlock,
                                        Initializer, LayerNorm, Mlp, Names, RMSNorm, constrain,
                                        fan_avg_init, matmul, named, ones, remat, zeros)
from mfm_jax.models.layers.embed import (AdaLNModulation, PosEmbed3D, TimestepEmbed,
                                         TubeletEmbed, modulate, patchify, sincos_1d, sincos_3d,
                                         timestep_sinusoid, unpatchify)

__all__ = [
    "ACTIVATIONS", "AdaLNModulation", "Attention", "Dense", "Dtype", "EncoderBlock", "Initializer",
    "LayerNorm", "Mlp", "Names", "PosEmbed3D", "RMSNorm", "TimestepEmbed", "TubeletEmbed",
    "constrain", "fan_avg_init", "matmul", "modulate", "named", "ones", "patchify", "remat",
    "sincos_1d", "sincos_3d", "timestep_sinusoid", "unpatchify", "zeros",
]

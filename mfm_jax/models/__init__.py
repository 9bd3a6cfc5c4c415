"""Flax (Linen) model families; shared blocks live in ``layers``."""

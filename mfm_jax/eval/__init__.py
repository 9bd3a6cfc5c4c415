"""Evaluation metrics and benchmark harnesses (no trainer imports)."""

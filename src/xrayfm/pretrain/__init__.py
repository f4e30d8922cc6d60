"""Pretraining objectives (EVA-X masked image modeling so far)."""

"""Helpers only the notebooks use: the collectives primer's live ranks and ring pictures (primer.py)."""

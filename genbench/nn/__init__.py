"""Layers and helpers shared by several families."""

"""Figures (matplotlib, imported only when a figure is made)."""

from .images import save_images_png

__all__ = ["save_images_png"]

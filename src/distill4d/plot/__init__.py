"""Figures (matplotlib, imported only when a figure is made)."""

from .images import save_bragg_vector_map_png, save_images_png

__all__ = ["save_bragg_vector_map_png", "save_images_png"]

"""Figures (matplotlib, imported only when a figure is made)."""

from .images import images_figure, save_bragg_vector_map_png, save_images_png
from .scalebar import add_scale_bar, label_diffraction, label_real_space

__all__ = [
    "add_scale_bar",
    "images_figure",
    "label_diffraction",
    "label_real_space",
    "save_bragg_vector_map_png",
    "save_images_png",
]

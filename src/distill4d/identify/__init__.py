"""Blind crystal identification from the Bragg spots of diffraction patterns.

``encode``: rotation- and mirror-invariant features of one pattern's spots (1/Å).
``models``: a random-forest hierarchy (crystal system, space group within the system,
lattice parameters per system) with probabilities, top-k and aggregation over many
patterns of one region. ``apply``: :func:`identify` a scan's Bragg peaks (or a scan) with
the shipped model (:func:`load_default`) or another. ``setnet``: a rotation- and
mirror-invariant set network on the spot lists, an experiment kept for the benchmark's
learning curve (not shipped: it scored below the shipped model). ``metric`` and ``lattice3d``:
a pattern's 2D lattice, Laue layers and projected 3D lattice as features (experiments, not used by
the shipped model).
"""

from .apply import CrystalIdentification, identify, load_default, predict_spots
from .models import SYSTEMS, CrystalIdentifier, aggregate, top_k

__all__ = ["SYSTEMS", "CrystalIdentification", "CrystalIdentifier", "aggregate", "identify", "load_default",
           "predict_spots", "top_k"]

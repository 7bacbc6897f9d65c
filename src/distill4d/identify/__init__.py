"""Blind crystal identification from the Bragg spots of diffraction patterns.

``encode``: rotation- and mirror-invariant features of one pattern's spots (1/Å).
``models``: a random-forest hierarchy (crystal system, space group within the system,
lattice parameters per system) with calibrated probabilities, top-k and aggregation
over many patterns of one region.
"""

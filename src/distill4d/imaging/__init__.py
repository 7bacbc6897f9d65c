"""Imaging: virtual detectors, diffraction origin, centre of mass / DPC and iDPC."""

from .com import CenterOfMass, center_of_mass, estimate_scan_rotation, to_scan_frame
from .detectors import annulus_mask, circle_mask, detector_mask
from .idpc import IDPCResult, idpc
from .integrate import integrate_gradient
from .origin import find_bf_disk, find_origins, fit_origin_plane
from .virtual import virtual_image, virtual_images

__all__ = [
    "CenterOfMass",
    "IDPCResult",
    "annulus_mask",
    "center_of_mass",
    "circle_mask",
    "detector_mask",
    "estimate_scan_rotation",
    "find_bf_disk",
    "find_origins",
    "fit_origin_plane",
    "idpc",
    "integrate_gradient",
    "to_scan_frame",
    "virtual_image",
    "virtual_images",
]

"""Bragg disk detection: probe template, correlation and centre-of-mass detection, BraggPeaks, scoring."""

from .com_disks import find_bragg_disks_com, mean_pattern_spots
from .detect import (
    DetectionParameters,
    auto_detection_parameters,
    detect_batch,
    detection_setup,
    find_bragg_disks,
    kernel_ft,
)
from .peaks import BraggPeaks
from .probe import Probe, measure_disk, probe_template
from .refine import find_bragg_disks_rim, find_bragg_disks_template, rim_radius_px
from .score import DetectionScore, disk_detection_accuracy

__all__ = [
    "BraggPeaks",
    "DetectionParameters",
    "DetectionScore",
    "Probe",
    "auto_detection_parameters",
    "detect_batch",
    "detection_setup",
    "disk_detection_accuracy",
    "find_bragg_disks",
    "find_bragg_disks_com",
    "find_bragg_disks_rim",
    "find_bragg_disks_template",
    "kernel_ft",
    "mean_pattern_spots",
    "measure_disk",
    "probe_template",
    "rim_radius_px",
]

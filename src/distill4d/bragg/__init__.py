"""Bragg disk detection: probe template, correlation detection, BraggPeaks, scoring."""

from .detect import DetectionParameters, auto_detection_parameters, detect_batch, find_bragg_disks
from .peaks import BraggPeaks
from .probe import Probe, measure_disk, probe_template
from .score import DetectionScore, disk_detection_accuracy

__all__ = [
    "BraggPeaks",
    "DetectionParameters",
    "DetectionScore",
    "Probe",
    "auto_detection_parameters",
    "detect_batch",
    "disk_detection_accuracy",
    "find_bragg_disks",
    "measure_disk",
    "probe_template",
]

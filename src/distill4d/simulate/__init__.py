"""Simulated 4D-STEM data with known ground truth (for tests, benchmarks and the demo).

Light, NumPy-only simulators live here (``phase_object``: a probe scanned over a weak
phase object; ``kinematic``: convergent-beam disk patterns of a strained crystal).
Multislice simulation (abTEM) is the optional extra ``distill4d[sim]``.
"""

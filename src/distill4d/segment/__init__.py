"""Domain segmentation of images and image series: windowed-FFT features (``windows``),
read-out of channels to domain maps (``readout``), the classical baselines (``baselines``) and the
:func:`segment` API."""

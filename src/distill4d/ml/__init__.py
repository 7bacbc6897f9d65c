"""PyTorch models (one file per model) and their inference wrappers."""

#: FCU-Net test-time views (:class:`distill4d.ml.fcunet.FCUNetViews`): none, the pattern and probe
#: mirrored about the model grid's centre pixel ``N//2`` (``flips``) and, for ``dihedral``, also
#: transposed (qx <-> qy). Here, not in the model module, so that the CLI can offer them without
#: importing PyTorch.
FCUNET_VIEWS = ("none", "flips", "dihedral")

"""PyTorch models (one file per model) and their inference wrappers."""

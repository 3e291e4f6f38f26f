"""detserve.training.data."""

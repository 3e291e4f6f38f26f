"""detserve.training."""

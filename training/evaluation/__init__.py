"""detserve.training.evaluation."""

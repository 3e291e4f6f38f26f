"""detserve.serving."""

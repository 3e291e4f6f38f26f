"""detserve.export."""

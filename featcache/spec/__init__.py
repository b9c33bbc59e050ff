"""Pure vocabulary: frame policies, views, training and sweep configurations (no torch, no zarr)."""

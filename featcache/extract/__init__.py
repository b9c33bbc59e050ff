"""Stage 1: the frozen model over selected frames, written to the cache (pipeline, encoder, batch size, estimate)."""

"""Stage 2: training light heads from the cache (loop.py), metrics (metrics.py, pure),
checkpoints (checkpoint.py)."""

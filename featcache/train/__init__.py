"""Stage 2: training light heads from the cache (fit.py), evaluation and its protocols
(evaluate.py), pretext pre-training (pretrain.py), closed-form probes (probe.py), token-grid
augmentation (augment.py), metrics (metrics.py, pure), checkpoints (checkpoint.py)."""

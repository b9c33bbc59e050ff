"""Sweeps: run a grid of cells from one cache, and the leaderboard."""

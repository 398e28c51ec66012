"""Privacy measurements beyond copy detection: embedding-space metrics against a holdout set (metrics.py,
on stats.py) and membership inference against the model itself (membership.py)."""

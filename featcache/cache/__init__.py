"""The Zarr feature cache: layout facts (schema.py) and the only Zarr code (store.py)."""

"""Video decoding (decode.py, the only module that touches decord/PyAV) and frame selection
(select.py, pure numpy)."""

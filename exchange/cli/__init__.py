"""The `gx` command line: `gx.py` is the entry point, one module per command family."""

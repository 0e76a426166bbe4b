"""The benchmarks behind `gx bench`: commands that print figures (`report.py` prints them)."""

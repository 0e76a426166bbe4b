"""Market data: the process (gx.events in, gx.marketdata out) and the state it keeps (`state.py`)."""

"""Browser tests: the market page in headless Chromium against an in-process exchange."""

"""The Python SDK: an async client with ccxt-style names, a local order book, a provider agent."""

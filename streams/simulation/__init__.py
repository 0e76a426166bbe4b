"""Deterministic simulation of engine, settlement and market data on one thread (`gx sim`).

Modules: `workload` (the seeded command generator), `faults` (what can go wrong, and how often),
`sinks` (in-memory ledger and market data with the real consumers' idempotency rules),
`simulator` (the seeded run, its fault injection and its invariants).
"""

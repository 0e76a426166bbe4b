"""Helpers the tests share: the seeded market simulation and the running-gateway harness."""

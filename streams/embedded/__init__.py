"""Embedded services for the sandbox, tests and benchmarks: the mock Kafka broker, a private PostgreSQL."""

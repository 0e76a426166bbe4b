"""The PostgreSQL ledger: its schema and migrations (`schema.py`) and the queries that read it."""

"""Identifier types. Every id is an integer with a type of its own."""

from __future__ import annotations

from typing import NewType

__all__ = [
    "AccountId",
    "OrderId",
    "InstrumentId",
    "ObligationId",
    "TradeId",
    "ShardId",
    "ACCOUNT_EXTERNAL",
    "ACCOUNT_FEES",
    "ACCOUNT_FIRST_USER",
]

AccountId = NewType("AccountId", int)
OrderId = NewType("OrderId", int)
InstrumentId = NewType("InstrumentId", int)
ObligationId = NewType("ObligationId", int)
TradeId = NewType("TradeId", int)
ShardId = NewType("ShardId", int)

# System accounts: the counterparty of deposits and withdrawals, and the exchange's fee income.
# With them every cash movement has two sides, so all postings sum to zero.
ACCOUNT_EXTERNAL = AccountId(0)
ACCOUNT_FEES = AccountId(1)
ACCOUNT_FIRST_USER = AccountId(10)

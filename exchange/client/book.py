"""A local copy of one instrument's order book, built from `book` pushes and verified.

The book keeps each level's price and quantity strings exactly as received, so the checksum
(`book_checksum` over the top levels, joined as sent) matches the server's byte for byte;
levels are ordered by their Decimal value (bids highest first, asks lowest first). Every message
is checked: an update must continue the sequence (`prev_seq` = the book's `seq`, `seq` =
`prev_seq` + 1) and the checksum after it must match. A failed check raises `BookOutOfSync` and
leaves the book unsynced until the next snapshot; the owner then asks for a fresh snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from streams.marketdata.state import book_checksum

__all__ = ["LocalBook", "BookOutOfSync", "StrLevel"]

StrLevel = tuple[str, str]  # (price, qty) as received


class BookOutOfSync(Exception):
    """The local book no longer matches the server's: a sequence gap or a checksum mismatch.

    `reason` is `gap`, `checksum`, `not_synced` or `malformed`; `expected` and `found` say what
    the book expected and what the message carried.
    """

    def __init__(self, symbol: str, reason: str, expected: object, found: object) -> None:
        super().__init__(
            f"book {symbol}: out of sync ({reason}): expected {expected}, found {found}; "
            "subscribe again for a fresh snapshot"
        )
        self.symbol = symbol
        self.reason = reason
        self.expected = expected
        self.found = found


def _decimal(text: object, symbol: str, field: str) -> Decimal:
    if not isinstance(text, str):
        raise BookOutOfSync(symbol, "malformed", f"{field} as a decimal string", repr(text))
    try:
        return Decimal(text)
    except InvalidOperation:
        raise BookOutOfSync(
            symbol, "malformed", f"{field} as a decimal string", repr(text)
        ) from None


def _int(value: object, symbol: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BookOutOfSync(symbol, "malformed", f"{field} as an integer", repr(value))
    try:
        return int(value)
    except ValueError:
        raise BookOutOfSync(symbol, "malformed", f"{field} as an integer", repr(value)) from None


class _Side:
    """One side's levels keyed by Decimal price, holding the strings as received."""

    def __init__(self, descending: bool) -> None:
        self.descending = descending
        self.levels: dict[Decimal, StrLevel] = {}
        self._sorted: list[StrLevel] | None = None

    def clear(self) -> None:
        self.levels.clear()
        self._sorted = None

    def set(self, price: str, qty: str, symbol: str) -> None:
        key = _decimal(price, symbol, "price")
        if _decimal(qty, symbol, "qty") == 0:
            self.levels.pop(key, None)
        else:
            self.levels[key] = (price, qty)
        self._sorted = None

    def trim(self, depth: int) -> None:
        ordered = self.ordered()
        if len(ordered) > depth:
            for price, _ in ordered[depth:]:
                del self.levels[Decimal(price)]
            self._sorted = ordered[:depth]

    def ordered(self) -> list[StrLevel]:
        if self._sorted is None:
            keys = sorted(self.levels, reverse=self.descending)
            self._sorted = [self.levels[k] for k in keys]
        return self._sorted


class LocalBook:
    """The order book of one symbol to `depth` levels per side, verified after every message."""

    def __init__(self, symbol: str, depth: int) -> None:
        if depth <= 0:
            raise ValueError(f"depth: expected > 0, found {depth}")
        self.symbol = symbol
        self.depth = depth
        self._bids = _Side(descending=True)
        self._asks = _Side(descending=False)
        self._seq = 0
        self._synced = False
        self.checksum = 0
        self.ts_ns = 0
        self.snapshots = 0  # snapshots applied: 1 after the first, one more per resync

    @property
    def seq(self) -> int:
        """Return the sequence number of the last message applied (0 before a snapshot)."""
        return self._seq

    @property
    def synced(self) -> bool:
        """Return whether a snapshot was applied and every check since has passed."""
        return self._synced

    def bids(self, limit: int | None = None) -> list[StrLevel]:
        """Return bid levels `(price, qty)` as received, highest price first."""
        return list(self._bids.ordered()[:limit])

    def asks(self, limit: int | None = None) -> list[StrLevel]:
        """Return ask levels `(price, qty)` as received, lowest price first."""
        return list(self._asks.ordered()[:limit])

    def best_bid(self) -> StrLevel | None:
        """Return the highest bid, or None when there is none."""
        levels = self._bids.ordered()
        return levels[0] if levels else None

    def best_ask(self) -> StrLevel | None:
        """Return the lowest ask, or None when there is none."""
        levels = self._asks.ordered()
        return levels[0] if levels else None

    def compute_checksum(self) -> int:
        """Return `book_checksum` of the book as it is now."""
        return book_checksum(self._asks.ordered(), self._bids.ordered())

    def invalidate(self) -> None:
        """Mark the book unsynced: updates are refused until the next snapshot."""
        self._synced = False

    def apply(self, msg: Mapping[str, Any]) -> bool:
        """Apply a `book` snapshot or update push; return False for an already-applied update.

        Raise `BookOutOfSync` on a sequence gap, a checksum mismatch, an update before any
        snapshot, or a malformed message; the book is then unsynced until the next snapshot.
        """
        try:
            return self._apply(msg)
        except BookOutOfSync:
            self._synced = False
            raise

    def _apply(self, msg: Mapping[str, Any]) -> bool:
        kind = msg.get("type")
        seq = _int(msg.get("seq"), self.symbol, "seq")
        if kind == "snapshot":
            self._bids.clear()
            self._asks.clear()
        elif kind == "update":
            if not self._synced:
                raise BookOutOfSync(self.symbol, "not_synced", "a snapshot first", f"seq {seq}")
            if seq <= self._seq:
                return False  # a replayed update this book already holds
            prev = msg.get("prev_seq")
            prev_seq = self._seq if prev is None else _int(prev, self.symbol, "prev_seq")
            if prev_seq != self._seq or seq != prev_seq + 1:
                expected = f"seq {self._seq + 1} after {self._seq}"
                raise BookOutOfSync(self.symbol, "gap", expected, f"seq {seq} after {prev_seq}")
        else:
            raise BookOutOfSync(self.symbol, "malformed", "type snapshot or update", repr(kind))
        self._set_levels(self._bids, msg.get("bids"))
        self._set_levels(self._asks, msg.get("asks"))
        self._bids.trim(self.depth)
        self._asks.trim(self.depth)
        self._seq = seq
        self.ts_ns = _int(msg.get("ts_ns", 0), self.symbol, "ts_ns")
        self._verify(msg.get("checksum"))
        self._synced = True
        if kind == "snapshot":
            self.snapshots += 1
        return True

    def _set_levels(self, side: _Side, levels: object) -> None:
        if levels is None:
            return
        if not isinstance(levels, Iterable):
            raise BookOutOfSync(self.symbol, "malformed", "levels as a list", repr(levels))
        for level in levels:
            if not isinstance(level, Sequence) or len(level) != 2:
                raise BookOutOfSync(self.symbol, "malformed", "level [price, qty]", repr(level))
            side.set(level[0], level[1], self.symbol)

    def _verify(self, checksum: object) -> None:
        if checksum is None:
            return  # nothing to check against
        expected = _int(checksum, self.symbol, "checksum")
        local = self.compute_checksum()
        if local != expected:
            raise BookOutOfSync(self.symbol, "checksum", expected, local)
        self.checksum = local

    def __repr__(self) -> str:
        return (
            f"LocalBook({self.symbol!r}, depth={self.depth}, seq={self._seq}, "
            f"best_bid={self.best_bid()}, best_ask={self.best_ask()})"
        )

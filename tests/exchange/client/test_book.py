"""LocalBook: snapshot and updates applied as received, and every gap or mismatch detected."""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from exchange.client.book import BookOutOfSync, LocalBook
from streams.marketdata.state import book_checksum

SYMBOL = "H100-SXM.us-east.1h.2026-12-01T14"


def _crc(asks: list[list[str]], bids: list[list[str]]) -> int:
    """The checksum written out by hand: `p:q` joined by `,`, asks `|` bids, top 10 each."""
    text = ",".join(f"{p}:{q}" for p, q in asks[:10]) + "|"
    text += ",".join(f"{p}:{q}" for p, q in bids[:10])
    return zlib.crc32(text.encode())


def _snapshot(
    seq: int, bids: list[list[str]], asks: list[list[str]], checksum: int | None = None
) -> dict[str, Any]:
    return {
        "channel": "book",
        "type": "snapshot",
        "symbol": SYMBOL,
        "depth": 10,
        "seq": seq,
        "bids": bids,
        "asks": asks,
        "checksum": _crc(asks, bids) if checksum is None else checksum,
        "ts_ns": "1796083200000000000",
    }


def _update(
    seq: int,
    bids: list[list[str]],
    asks: list[list[str]],
    checksum: int,
    prev_seq: int | None = None,
) -> dict[str, Any]:
    return {
        "channel": "book",
        "type": "update",
        "symbol": SYMBOL,
        "seq": seq,
        "prev_seq": seq - 1 if prev_seq is None else prev_seq,
        "bids": bids,
        "asks": asks,
        "checksum": checksum,
        "ts_ns": "1796083200000000001",
    }


def test_checksum_string_matches_the_hand_example():
    asks = [["2.401", "3"], ["2.402", "1"]]
    bids = [["2.400", "5"]]
    expected = zlib.crc32(b"2.401:3,2.402:1|2.400:5")
    assert book_checksum(asks, bids) == expected
    book = LocalBook(SYMBOL, depth=10)
    book.apply(_snapshot(1, bids, asks, checksum=expected))
    assert book.compute_checksum() == expected
    assert book.checksum == expected


def test_snapshot_then_updates_keep_levels_as_received_in_price_order():
    book = LocalBook(SYMBOL, depth=10)
    book.apply(_snapshot(7, [["9.990", "5"], ["9.980", "2"]], [["10.010", "3"]]))
    assert book.seq == 7 and book.synced
    # Ordered by value, not by text: "10.000" > "9.990" although it sorts first as a string.
    after_bids = [["10.000", "4"], ["9.990", "5"], ["9.980", "2"]]
    after_asks = [["10.010", "1"], ["10.050", "9"]]
    update = _update(
        8, [["10.000", "4"]], [["10.010", "1"], ["10.050", "9"]], _crc(after_asks, after_bids)
    )
    assert book.apply(update) is True
    assert book.seq == 8
    assert book.bids() == [("10.000", "4"), ("9.990", "5"), ("9.980", "2")]
    assert book.asks() == [("10.010", "1"), ("10.050", "9")]
    assert book.best_bid() == ("10.000", "4")
    assert book.best_ask() == ("10.010", "1")
    assert book.bids(limit=1) == [("10.000", "4")]


def test_zero_quantity_removes_the_level():
    book = LocalBook(SYMBOL, depth=10)
    book.apply(_snapshot(1, [["2.400", "5"], ["2.399", "2"]], [["2.401", "3"], ["2.402", "1"]]))
    after_asks = [["2.402", "1"]]
    after_bids = [["2.399", "2"]]
    book.apply(_update(2, [["2.400", "0"]], [["2.401", "0"]], _crc(after_asks, after_bids)))
    assert book.bids() == [("2.399", "2")]
    assert book.asks() == [("2.402", "1")]
    assert book.best_ask() == ("2.402", "1")


def test_levels_beyond_depth_are_trimmed():
    book = LocalBook(SYMBOL, depth=2)
    bids = [["2.400", "1"], ["2.399", "1"]]
    asks = [["2.401", "1"], ["2.402", "1"]]
    book.apply(_snapshot(1, bids, asks))
    # A better bid and a better ask push the worst level of each side out of depth 2.
    after_bids = [["2.4005", "7"], ["2.400", "1"]]
    after_asks = [["2.4008", "7"], ["2.401", "1"]]
    book.apply(_update(2, [["2.4005", "7"]], [["2.4008", "7"]], _crc(after_asks, after_bids)))
    assert book.bids() == [("2.4005", "7"), ("2.400", "1")]
    assert book.asks() == [("2.4008", "7"), ("2.401", "1")]


def test_seq_gap_raises_book_out_of_sync_and_unsyncs_the_book():
    book = LocalBook(SYMBOL, depth=10)
    book.apply(_snapshot(5, [["2.400", "5"]], [["2.401", "3"]]))
    with pytest.raises(BookOutOfSync) as caught:
        book.apply(_update(7, [], [], 0))  # seq 6 was lost
    assert caught.value.reason == "gap"
    assert not book.synced
    with pytest.raises(BookOutOfSync) as again:
        book.apply(_update(8, [], [], 0))
    assert again.value.reason == "not_synced"


def test_prev_seq_that_does_not_match_the_book_is_a_gap():
    book = LocalBook(SYMBOL, depth=10)
    book.apply(_snapshot(5, [["2.400", "5"]], [["2.401", "3"]]))
    with pytest.raises(BookOutOfSync) as caught:
        book.apply(_update(6, [], [], 0, prev_seq=4))
    assert caught.value.reason == "gap"


def test_checksum_mismatch_raises_book_out_of_sync():
    book = LocalBook(SYMBOL, depth=10)
    book.apply(_snapshot(1, [["2.400", "5"]], [["2.401", "3"]]))
    wrong = _crc([["2.401", "3"]], [["2.400", "6"]])
    with pytest.raises(BookOutOfSync) as caught:
        book.apply(_update(2, [["2.400", "4"]], [], wrong))
    assert caught.value.reason == "checksum"
    assert not book.synced


def test_checksum_is_over_the_received_strings_not_their_values():
    book = LocalBook(SYMBOL, depth=10)
    # "2.40" and "2.400" are the same price, but the server summed the string it sent.
    with pytest.raises(BookOutOfSync):
        book.apply(_snapshot(1, [["2.40", "5"]], [], checksum=_crc([], [["2.400", "5"]])))
    book.apply(_snapshot(1, [["2.40", "5"]], [], checksum=_crc([], [["2.40", "5"]])))
    assert book.bids() == [("2.40", "5")]


def test_update_before_snapshot_is_refused():
    book = LocalBook(SYMBOL, depth=10)
    with pytest.raises(BookOutOfSync) as caught:
        book.apply(_update(1, [], [], _crc([], [])))
    assert caught.value.reason == "not_synced"


def test_replayed_update_is_ignored():
    book = LocalBook(SYMBOL, depth=10)
    book.apply(_snapshot(3, [["2.400", "5"]], [["2.401", "3"]]))
    assert book.apply(_update(3, [["2.400", "9"]], [], 0)) is False
    assert book.bids() == [("2.400", "5")] and book.synced


def test_new_snapshot_resyncs_after_a_gap():
    book = LocalBook(SYMBOL, depth=10)
    book.apply(_snapshot(1, [["2.400", "5"]], [["2.401", "3"]]))
    with pytest.raises(BookOutOfSync):
        book.apply(_update(9, [], [], 0))
    book.apply(_snapshot(20, [["2.390", "1"]], [["2.410", "2"]]))
    assert book.synced and book.seq == 20
    assert book.bids() == [("2.390", "1")] and book.asks() == [("2.410", "2")]


def test_checksum_covers_only_the_top_ten_levels():
    book = LocalBook(SYMBOL, depth=25)
    bids = [[f"{2.300 - i * 0.001:.3f}", "1"] for i in range(15)]
    book.apply(_snapshot(1, bids, [], checksum=_crc([], bids[:10])))
    assert len(book.bids()) == 15

"""Market-data messages on `gx.marketdata`: frozen tagged Structs, msgpack on the wire.

Prices are integer ticks, quantities integer lots, times integer UNIX nanoseconds (`ts_ns` = the
engine time of the events that caused the message). Every message has a `symbol`, which is also
its Kafka key: an instrument symbol for books, trades and candles, a GPU model (`H100-SXM`) for
the index and a curve name (`H100-SXM.us-east.1h`) for forward-curve points, so that everything a
client needs in order lands in one partition. Book messages carry a per-symbol `seq` (+1 per
delta, from 1) and `prev_seq`; a snapshot carries the `seq` of the last delta it includes.
New fields must get defaults so that old logs still decode.
"""

from __future__ import annotations

import msgspec

from schemas.codec import decode_bounded

__all__ = [
    "BookSnapshot",
    "BookDelta",
    "TradePrints",
    "Trade",
    "Candle",
    "IndexPrice",
    "ForwardCurvePoint",
    "InstrumentStatus",
    "MarketDataMessage",
    "MARKETDATA_TYPES",
    "Level",
    "encode_message",
    "decode_message",
]

Level = tuple[int, int]  # (price_ticks, lots); lots 0 in a delta = the level is gone


class _Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    symbol: str
    ts_ns: int = 0


class BookSnapshot(_Message, tag="BookSnapshot", frozen=True):
    """The L2 book after delta `seq`: bids best (highest) first, asks best (lowest) first."""

    seq: int
    bids: tuple[Level, ...] = ()
    asks: tuple[Level, ...] = ()
    checksum: int = 0  # book_checksum of the top levels (streams/marketdata/state.py)


class BookDelta(_Message, tag="BookDelta", frozen=True):
    """The levels one command changed, as absolute lots (0 = removed); apply if prev_seq matches."""

    seq: int
    prev_seq: int
    bids: tuple[Level, ...] = ()
    asks: tuple[Level, ...] = ()
    checksum: int = 0  # book_checksum of the top levels after this delta


class Trade(msgspec.Struct, frozen=True, array_like=True):
    """One trade of a `TradePrints`."""

    trade_id: int
    price_ticks: int
    lots: int
    aggressor_side: str  # "buy" or "sell"
    ts_ns: int  # the trade's engine time


class TradePrints(_Message, tag="TradePrints", frozen=True):
    """The trades of one symbol in one gx.events record (or command), in trade order.

    A burst of trades is one message and one push per subscriber, not one per trade.
    """

    trades: tuple[Trade, ...] = ()


class Candle(_Message, tag="Candle", frozen=True):
    """OHLCV of trades with ts_event in [start_ns, start_ns + interval_ns); sent when updated."""

    interval_ns: int
    start_ns: int
    open_ticks: int
    high_ticks: int
    low_ticks: int
    close_ticks: int
    volume_lots: int
    trades: int


class IndexPrice(_Message, tag="IndexPrice", frozen=True):
    """Per GPU model (`symbol`): 24 h volume-weighted price per GPU-hour over all its instruments.

    price_ticks = floor(sum(price x lots x hours) / sum(lots x hours)) over trades with
    ts_event in (ts_ns - window_ns, ts_ns]; 0 with volume 0 when the window holds no trade.
    """

    price_ticks: int
    volume_gpu_hours: int
    volume_lots: int
    trades: int
    window_ns: int


class ForwardCurvePoint(_Message, tag="ForwardCurvePoint", frozen=True):
    """One delivery start of a curve (`symbol` = GPU.REGION.PRODUCT); 0 = no price on that side.

    `active` False: the instrument closed (gate closure) and leaves the curve.
    """

    instrument: str
    start_ns: int
    hours: int
    last_ticks: int
    bid_ticks: int
    ask_ticks: int
    active: bool = True


class InstrumentStatus(_Message, tag="InstrumentStatus", frozen=True):
    """An instrument halted or trading again (published when it changes).

    `status` is "halted" or "trading"; `reason` the halt's ("operator" or "circuit_breaker");
    a circuit breaker's halt ends at the first clock tick at or after `until_ns` (0: until an
    operator resumes it)."""

    status: str
    reason: str = ""
    until_ns: int = 0


MarketDataMessage = (
    BookSnapshot | BookDelta | TradePrints | Candle | IndexPrice | ForwardCurvePoint
    | InstrumentStatus
)  # fmt: skip
MARKETDATA_TYPES = (
    BookSnapshot, BookDelta, TradePrints, Candle, IndexPrice, ForwardCurvePoint, InstrumentStatus
)  # fmt: skip

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(MarketDataMessage)


def encode_message(message: MarketDataMessage) -> bytes:
    """Encode a market-data message as msgpack (the Kafka payload)."""
    return _encoder.encode(message)


def decode_message(data: bytes) -> MarketDataMessage:
    """Decode a msgpack market-data message; raises msgspec.DecodeError naming the bad field."""
    return decode_bounded(_decoder, data)

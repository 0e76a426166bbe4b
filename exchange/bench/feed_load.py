"""The load of `gx bench feed`: a process that moves one book at a fixed rate (`python -m ...`).

`python -m exchange.bench.feed_load BOOTSTRAP TOPIC SYMBOL RATE DURATION_S OUT_PATH` produces
offer/take pairs into gx.commands (shard 0) with a producer of its own, so the gateway under test
spends nothing on the load; it writes one JSON list to OUT_PATH: the send time (ns) of every
command, in order.

An offer rests two lots at one of `offer_levels` prices at or below the take's limit, and a take
fills one lot from the best level, so the book's levels change at every engine step and every
take prints exactly one trade: the k-th trade of the load is the (2k+1)-th command.
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson
import uvloop
from aiokafka import AIOKafkaProducer

from schemas import commands as c
from schemas.codec import encode
from schemas.codes import Side, TimeInForce
from streams.topics import shard_key

__all__ = ["PROVIDER", "BUYER", "main", "orders"]

PROVIDER, BUYER = 20, 21
tick_s = 0.01  # a batch of commands every tick
offer_levels = 10  # the provider's offers cycle over this many prices
offer_price_ticks = 2400  # the lowest of them


def orders(symbol: str, first: int, count: int) -> list[c.Command]:
    """The commands `first` .. `first + count - 1` of the load (offers even, takes odd)."""
    out: list[c.Command] = []
    for n in range(first, first + count):
        if n % 2 == 0:
            price = offer_price_ticks + n // 2 % offer_levels
            out.append(c.PlaceOrder(account=PROVIDER, symbol=symbol, side=Side.SELL, lots=2,
                                    price_ticks=price))  # fmt: skip
        else:
            out.append(c.PlaceOrder(account=BUYER, symbol=symbol, side=Side.BUY, lots=1,
                                    price_ticks=offer_price_ticks + offer_levels,
                                    tif=TimeInForce.IOC))  # fmt: skip
    return out


async def _load(bootstrap: str, topic: str, symbol: str, rate: int, duration_s: float) -> list[int]:
    """Send the load at `rate` commands per second; return each command's send time."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    await producer.start()
    try:
        per_tick = max(1, round(rate * tick_s))
        total = int(rate * duration_s)
        sent_ns: list[int] = []
        start = time.monotonic()
        i = 0
        key = shard_key(0)
        while i < total:
            batch = orders(symbol, i, min(per_tick, total - i))
            now = time.time_ns()
            futures = [
                await producer.send(topic, encode(command), key=key, partition=0)
                for command in batch
            ]
            await asyncio.gather(*futures)
            sent_ns += [now] * len(batch)
            i += len(batch)
            ahead = start + i / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        return sent_ns
    finally:
        await producer.stop()


def main(argv: list[str]) -> None:
    """Run the load (arguments: BOOTSTRAP TOPIC SYMBOL RATE DURATION_S OUT_PATH)."""
    if len(argv) != 6:
        raise SystemExit(
            "usage: python -m exchange.bench.feed_load BOOTSTRAP TOPIC SYMBOL RATE DURATION_S OUT_PATH"
        )
    bootstrap, topic, symbol, rate, duration_s = (
        argv[0],
        argv[1],
        argv[2],
        int(argv[3]),
        float(argv[4]),
    )
    sent_ns = uvloop.run(_load(bootstrap, topic, symbol, rate, duration_s))
    with open(argv[5], "wb") as file:  # not stdout: see exchange/bench/feed.py, _child_result
        file.write(orjson.dumps(sent_ns))


if __name__ == "__main__":
    main(sys.argv[1:])

"""The gateway's push frames: built per subscriber without copying the shared body."""

from __future__ import annotations

import orjson
import pytest

from exchange.gateway.fanout import frame_pushes, text_frame
from exchange.wire import with_conn_seq


def _reference(bodies: list[bytes], conn_seq: int) -> bytes:
    return b"".join(
        text_frame(with_conn_seq(body, conn_seq + i + 1)) for i, body in enumerate(bodies)
    )


def _body(size: int) -> bytes:
    return orjson.dumps({"channel": "trades", "pad": "x" * size})


@pytest.mark.parametrize(
    "conn_seq", [0, 7, 8, 9, 98, 99, 999, 9_998, 10**12 - 2], ids=lambda n: f"from_{n}"
)
def test_frames_equal_the_spliced_body_framed_across_digit_and_length_boundaries(
    conn_seq: int,
) -> None:
    # bodies whose frames straddle the 126-byte and 65,536-byte header forms as digits grow
    bodies = [_body(n) for n in (0, 80, 90, 95, 96, 97, 98, 200, 65_480, 65_500, 65_520, 70_000)]
    parts: list[bytes] = []
    last = frame_pushes([b[1:] for b in bodies], conn_seq, parts)
    assert last == conn_seq + len(bodies)
    assert b"".join(parts) == _reference(bodies, conn_seq)


def test_every_size_near_the_short_header_limit_frames_like_the_reference() -> None:
    for pad in range(60, 140):
        for conn_seq in (8, 9, 10, 99):
            body = _body(pad)
            parts: list[bytes] = []
            frame_pushes([body[1:]], conn_seq, parts)
            assert b"".join(parts) == _reference([body], conn_seq), (pad, conn_seq)


def test_a_framed_push_is_json_with_conn_seq_first() -> None:
    parts: list[bytes] = []
    frame_pushes([b'{"channel":"book","seq":3}'[1:]], 41, parts)
    frame = b"".join(parts)
    assert frame[0] == 0x81 and frame[1] == len(frame) - 2
    assert orjson.loads(frame[2:]) == {"conn_seq": 42, "channel": "book", "seq": 3}

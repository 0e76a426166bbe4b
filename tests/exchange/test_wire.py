"""The wire's number parsers: a valid integer within bounds, or a WireError with a stable code,
whatever the text; never another exception."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange import wire
from exchange.wire import ErrorCode, Prices, WireError, int_from_str, qty_from_str
from schemas.units import INT_MAX

LOOSE = ["1e28", "9" * 100, "1E+999999", "1e20", "１２", "1_000", "+5", " 5 ", "5\n", "٣", "²"]
prices = Prices(1000)  # tick 0.001 USD


@pytest.mark.parametrize("text", LOOSE)
def test_loose_or_huge_numbers_are_refused_with_the_fields_code(text):
    with pytest.raises(WireError) as qty:
        qty_from_str(text)
    assert qty.value.code == ErrorCode.QTY_INVALID and qty.value.msg.startswith("qty: ")
    with pytest.raises(WireError) as price:
        prices.from_str(text)
    assert price.value.code == ErrorCode.BAD_REQUEST and price.value.msg.startswith("price: ")
    with pytest.raises(WireError) as ns:
        int_from_str(text, "expire_ns")
    assert ns.value.code == ErrorCode.BAD_REQUEST and ns.value.msg.startswith("expire_ns: ")


def test_well_formed_numbers_parse_exactly():
    assert qty_from_str("5") == 5
    assert prices.from_str("2.400") == 2400 and prices.from_str("2.4") == 2400
    assert int_from_str("1796072400000000000", "start_ns") == 1_796_072_400_000_000_000
    with pytest.raises(WireError) as off:
        prices.from_str("2.4005")
    assert off.value.code == ErrorCode.PRICE_OFF_TICK
    for refused in ("0", "-1", "1.5", "5.0", "05"):  # the document's grammar: QTY_PATTERN
        with pytest.raises(WireError) as error:
            qty_from_str(refused)
        assert error.value.code == ErrorCode.QTY_INVALID


_TEXT = st.one_of(
    st.text(alphabet="0123456789.-+eE_ \n²１٣", max_size=45),
    st.text(max_size=45),
    st.integers(-(2**70), 2**70).map(str),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
)


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(_TEXT, st.integers(), st.none(), st.floats()))
def test_parsers_answer_an_int_in_bounds_or_a_stable_code(text):
    cases = (
        (qty_from_str, {ErrorCode.QTY_INVALID, ErrorCode.BAD_REQUEST}, 1),
        (prices.from_str, {ErrorCode.BAD_REQUEST, ErrorCode.PRICE_OFF_TICK}, 1),
        (lambda t: int_from_str(t, "ts_ns"), {ErrorCode.BAD_REQUEST}, 0),
    )
    for parse, codes, least in cases:
        try:
            value = parse(text)
        except WireError as error:
            assert error.code in codes, (parse, text, error.code)
            assert error.status == 400
            continue
        assert isinstance(value, int) and least <= value <= INT_MAX, (parse, text, value)
        assert isinstance(text, str) and text.isascii() and text.strip() == text


# ---------------------------------------------------------------------- the signed string

KEY_ID = "gx" + "0a" * 12
TS_MS = 1_790_000_000_000


def _fields_of_v2(payload: bytes) -> tuple[str, str, str, str, str, bytes]:
    """Split a version 2 signed string back into (key, ts, nonce, METHOD, path, body)."""
    tag, key, ts, nonce, method, path, body = payload.split(b"\n", 6)
    assert tag == wire.SIGN_V2_TAG.encode()
    return key.decode(), ts.decode(), nonce.decode(), method.decode(), path.decode(), body


_no_line_feed = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"))


@settings(max_examples=300, deadline=None)
@given(
    key_id=st.from_regex(r"gx[0-9a-f]{24}", fullmatch=True),
    ts_ms=st.integers(0, 10**19 - 1) | st.from_regex(r"[0-9]{1,19}", fullmatch=True),
    nonce=st.from_regex(r"[A-Za-z0-9_-]{8,64}", fullmatch=True),
    method=st.sampled_from(["GET", "POST", "PATCH", "DELETE", "get"]),
    path=_no_line_feed,
    body=st.binary(max_size=64),
)
def test_v2_signed_string_splits_back_into_its_fields_one_way_only(
    key_id, ts_ms, nonce, method, path, body
):
    # The string determines every field: two requests that differ in any field (or in where
    # one field ends) sign different strings.
    payload = wire.signing_payload(key_id, ts_ms, nonce, method, path, body)
    assert _fields_of_v2(payload) == (key_id, str(ts_ms), nonce, method.upper(), path, body)


# (ts_ms, nonce, method, path, body) pairs that version 1 signs alike.
V1_COLLISIONS = [
    # a character moved from the nonce into the method
    ((TS_MS, "nonce-0001G", "ET", "/api/v1/keys", b""), (TS_MS, "nonce-0001", "GET", "/api/v1/keys", b"")),
    # three characters of the method moved into the nonce
    ((TS_MS, "nonce-0001", "DELETE", "/api/v1/orders/7", b""), (TS_MS, "nonce-0001DEL", "ETE", "/api/v1/orders/7", b"")),
    # a character moved from the method into the path
    ((TS_MS, "nonce-0001", "GET", "/api/v1/balances", b""), (TS_MS, "nonce-0001", "GE", "T/api/v1/balances", b"")),
    # the query string moved from the path into the body
    ((TS_MS, "nonce-0001", "POST", "/api/v1/orders?a=1", b""), (TS_MS, "nonce-0001", "POST", "/api/v1/orders", b"?a=1")),
    # a digit moved from the timestamp into the nonce
    ((TS_MS, "12345678", "GET", "/ws", b""), (TS_MS // 10, "012345678", "GET", "/ws", b"")),
]  # fmt: skip


@pytest.mark.parametrize(("one", "other"), V1_COLLISIONS)
def test_v1_lets_characters_move_between_fields_and_v2_does_not(one, other):
    assert wire.signing_payload_v1(*one) == wire.signing_payload_v1(*other)
    assert wire.signature_v1("s", *one) == wire.signature_v1("s", *other)
    assert wire.signing_payload(KEY_ID, *one) != wire.signing_payload(KEY_ID, *other)
    assert wire.signature("s", KEY_ID, *one) != wire.signature("s", KEY_ID, *other)


def test_v2_signs_the_documented_string_and_refuses_a_line_feed_in_a_field():
    payload = wire.signing_payload(KEY_ID, TS_MS, "nonce-0001", "post", "/api/v1/orders?a=1", b"{}")
    assert payload == (
        b"gx-v2\n" + KEY_ID.encode() + b"\n1790000000000\nnonce-0001\nPOST\n/api/v1/orders?a=1\n{}"
    )
    # the key is signed: the same request under another key id is another string
    assert payload != wire.signing_payload("gx" + "0b" * 12, TS_MS, "nonce-0001", "post",
                                           "/api/v1/orders?a=1", b"{}")  # fmt: skip
    for field, parts in (
        ("method", (KEY_ID, TS_MS, "nonce-0001", "GET\nX", "/p", b"")),
        ("path", (KEY_ID, TS_MS, "nonce-0001", "GET", "/p\nq", b"")),
        ("nonce", (KEY_ID, TS_MS, "nonce\n0001", "GET", "/p", b"")),
    ):
        with pytest.raises(ValueError, match=f"{field}: expected no line feed"):
            wire.signing_payload(*parts)
    assert wire.signing_payload(KEY_ID, TS_MS, "nonce-0001", "GET", "/p", b"a\nb").endswith(
        b"\n/p\na\nb"
    )  # the body may hold any bytes

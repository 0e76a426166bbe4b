"""GpuExchange without a gateway: the error table covers every stable code, requests are signed
as the gateway verifies them, error answers raise the mapped ccxt class.

The whole flow against a live exchange is tests/integration/test_ccxt.py.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import ccxt
import orjson
import pytest

from exchange import wire
from exchange.client.ccxt_exchange import EXACT_ERRORS, GpuExchange
from schemas.codes import Reject

SYM = "H100-SXM.us-east.1h.2026-12-01T14"


def exchange() -> GpuExchange:
    return GpuExchange(
        {"apiKey": "key-1", "secret": "secret-1", "urls": {"api": {"rest": "http://gw:9"}}}
    )


def test_every_reject_and_gateway_code_maps_to_a_ccxt_error():
    names = {code.name for code in Reject} | {str(code) for code in wire.ErrorCode}
    assert names <= set(EXACT_ERRORS), sorted(names - set(EXACT_ERRORS))
    assert all(issubclass(error, ccxt.BaseError) for error in EXACT_ERRORS.values())
    assert EXACT_ERRORS["INSUFFICIENT_CASH"] is ccxt.InsufficientFunds
    assert EXACT_ERRORS["UNKNOWN_ORDER"] is ccxt.OrderNotFound
    assert EXACT_ERRORS["BAD_SIGNATURE"] is ccxt.AuthenticationError
    assert EXACT_ERRORS["RATE_LIMITED"] is ccxt.RateLimitExceeded
    assert EXACT_ERRORS["UNKNOWN_SYMBOL"] is ccxt.BadSymbol


def test_private_requests_are_signed_over_the_exact_path_query_and_body():
    ex = exchange()
    request = ex.sign("orders/{id}", "private", "PATCH", {"id": "7", "price": "2.5", "qty": "3"})
    path = urlsplit(request["url"]).path
    assert request["url"].startswith("http://gw:9/api/v1/orders/7") and path == "/api/v1/orders/7"
    assert orjson.loads(request["body"]) == {"price": "2.5", "qty": "3"}
    h = request["headers"]
    expected = wire.signature(
        "secret-1",
        int(h[wire.HEADER_TS]),
        h[wire.HEADER_NONCE],
        "PATCH",
        path,
        request["body"].encode(),
    )
    assert h[wire.HEADER_KEY] == "key-1" and h[wire.HEADER_SIGNATURE] == expected

    listed = ex.sign("orders", "private", "GET", {"status": "open", "symbol": SYM, "x": None})
    split = urlsplit(listed["url"])
    signed_path = f"{split.path}?{split.query}"
    assert signed_path == f"/api/v1/orders?status=open&symbol={SYM}" and listed["body"] is None
    h = listed["headers"]
    assert h[wire.HEADER_SIGNATURE] == wire.signature(
        "secret-1", int(h[wire.HEADER_TS]), h[wire.HEADER_NONCE], "GET", signed_path, b""
    )


def test_public_requests_carry_no_key_and_path_parameters_are_quoted():
    request = exchange().sign("book/{symbol}", "public", "GET", {"symbol": "a/b?c", "depth": 5})
    assert request["url"] == "http://gw:9/api/v1/book/a%2Fb%3Fc?depth=5"
    assert wire.HEADER_KEY not in request["headers"]


def test_private_requests_need_credentials():
    with pytest.raises(ccxt.AuthenticationError):
        GpuExchange().sign("balances", "private", "GET", {})


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("INSUFFICIENT_CASH", ccxt.InsufficientFunds),
        ("POST_ONLY_WOULD_TAKE", ccxt.OrderImmediatelyFillable),
        ("UNKNOWN_ORDER", ccxt.OrderNotFound),
        ("NONCE_REUSED", ccxt.InvalidNonce),
        ("SOMETHING_NEW", ccxt.ExchangeError),
    ],
)
def test_error_answers_raise_the_mapped_ccxt_error(code, error):
    body = {"error": {"code": code, "msg": "refused", "retryable": False}}
    with pytest.raises(error) as raised:
        exchange().handle_errors(
            422, "", "http://gw:9/api/v1/orders", "POST", {}, orjson.dumps(body).decode(), body,
            {}, None,
        )  # fmt: skip
    assert type(raised.value) is error
    assert exchange().handle_errors(200, "", "", "GET", {}, "{}", {"orders": []}, {}, None) is None

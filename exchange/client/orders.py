"""Build order-entry request bodies, shared by REST (`POST /orders`) and WebSocket (`order.place`).

Prices go out as decimal strings, quantities as whole-lot strings, times as integer-nanosecond
strings (wire.py). The gateway refuses unknown fields, so only the fields API.md names are sent.
Every order gets a `client_order_id` (generated when the caller gives none), so a retry after a
lost answer names the same order and the gateway answers with it instead of placing another.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "Number",
    "ORDER_PARAMS",
    "CLIENT_ORDER_ID_PREFIX",
    "new_client_order_id",
    "decimal_str",
    "lots_str",
    "order_body",
    "amend_body",
    "route_body",
]

Number = Decimal | int | str | float
ORDER_PARAMS = frozenset({"tif", "post_only", "stp", "expire_ns", "client_order_id"})
CLIENT_ORDER_ID_PREFIX = "sdk-"
CLIENT_ORDER_ID_BYTES = 12  # "sdk-" + 24 hex: within the gateway's 36 characters


def new_client_order_id() -> str:
    """Return a fresh random client order id."""
    return CLIENT_ORDER_ID_PREFIX + secrets.token_hex(CLIENT_ORDER_ID_BYTES)


def _decimal(value: Number, field: str) -> Decimal:
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a number, found {value!r}")
    try:
        # repr of a float is its shortest round-trip text: 2.4 -> "2.4", not 2.39999...
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, ValueError, TypeError):
        raise ValueError(f"{field}: expected a decimal number, found {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"{field}: expected a finite number, found {value!r}")
    return number


def decimal_str(value: Number, field: str = "price") -> str:
    """Format a price or amount of money as a plain decimal string (no exponent)."""
    return format(_decimal(value, field), "f")


def lots_str(value: Number, field: str = "qty") -> str:
    """Format a quantity of whole lots; refuse fractions."""
    number = _decimal(value, field)
    if number != number.to_integral_value():
        raise ValueError(f"{field}: expected whole lots, found {value!r}")
    return str(int(number))


def order_body(
    symbol: str,
    type: str,
    side: str,
    amount: Number,
    price: Number | None = None,
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the body of `POST /orders` / `order.place`, with a client order id always set."""
    extra = dict(params or {})
    unknown = sorted(set(extra) - ORDER_PARAMS)
    if unknown:
        raise ValueError(f"params: expected keys among {sorted(ORDER_PARAMS)}, found {unknown}")
    body: dict[str, Any] = {"symbol": symbol, "side": side, "type": type, "qty": lots_str(amount)}
    if price is not None:
        body["price"] = decimal_str(price)
    for name in ("tif", "stp"):
        if extra.get(name) is not None:
            body[name] = str(extra[name])
    if extra.get("post_only") is not None:
        body["post_only"] = bool(extra["post_only"])
    if extra.get("expire_ns") is not None:
        body["expire_ns"] = str(int(extra["expire_ns"]))
    body["client_order_id"] = str(extra.get("client_order_id") or new_client_order_id())
    return body


def amend_body(price: Number, amount: Number) -> dict[str, Any]:
    """Return the body of `PATCH /orders/{id}`: the new price and remaining quantity."""
    return {"price": decimal_str(price), "qty": lots_str(amount)}


def route_body(
    gpu: str,
    gpu_hours: int,
    start_ns: int,
    end_ns: int,
    max_price: Number,
    regions: Iterable[str] = (),
    products: Iterable[str] = (),
    client_order_id: str | None = None,
) -> dict[str, Any]:
    """Return the body of `POST /route` / `order.route`."""
    return {
        "gpu": gpu,
        "gpu_hours": int(gpu_hours),
        "start_ns": str(int(start_ns)),
        "end_ns": str(int(end_ns)),
        "max_price": decimal_str(max_price, "max_price"),
        "regions": list(regions),
        "products": list(products),
        "client_order_id": client_order_id or new_client_order_id(),
    }

"""Fuzz what comes off the wire before any state is touched: numbers (`exchange/wire.py`) and
request params (`exchange/gateway/orders.py` `parse_params`, `parse_access`).

The property: a WireError with a stable code from `ErrorCode` and a short message naming the
field, or a valid value (a count within INT_MAX that formats back to itself, a Struct of the
requested kind). Budgets and the coverage summary: tests/support/fuzz.py.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.gateway.orders import (
    AmendParams,
    CancelAllParams,
    CapacityParams,
    ConfirmParams,
    DisputeParams,
    FailParams,
    OrderRef,
    PlaceParams,
    RouteParams,
    parse_access,
    parse_params,
)
from exchange.gateway.transfers import WithdrawParams
from exchange.gateway.ws import _DeadMan, _DeliveryQuery, _Logon, _SshKey, _SshKeyRef, _Subscribe
from exchange.wire import ErrorCode, Prices, WireError, int_from_str, qty_from_str, qty_to_str
from schemas.provisioning import Access, access_error
from schemas.units import INT_MAX
from tests.support.fuzz import (
    BOUNDARY_BUDGET,
    PARAMS_BUDGET,
    covered,
    json_values,
    mutated_fields,
    mutated_text,
    structs,
)

CODES = set(ErrorCode)
MSG_CHARS_MAX = 500  # a refusal quotes what it refuses, but never much of it
PRICES = Prices(1000)  # the catalog's tick: 0.001 USD

NUMBERS = st.one_of(
    st.text(alphabet="0123456789.-+eE_ ²１٣", max_size=45),
    st.from_regex(r"[0-9]{1,25}(\.[0-9]{1,8})?", fullmatch=True),
    mutated_text(st.from_regex(r"[0-9]{1,19}(\.[0-9]{1,3})?", fullmatch=True)),
    st.text(max_size=45),
    json_values(),
)


def _refusal(target: str, error: WireError, codes: set[str]) -> None:
    assert error.code in codes, (error.code, error.msg)
    assert error.status == 400 and error.msg and len(error.msg) <= MSG_CHARS_MAX
    covered(target, f"refused: {error.code}")


@BOUNDARY_BUDGET
@given(text=NUMBERS)
def test_qty_is_whole_lots_within_int_max_or_qty_invalid(text):
    try:
        lots = qty_from_str(text)
    except WireError as error:
        _refusal(
            "wire.qty_from_str",
            error,
            {"QTY_INVALID"} if isinstance(text, str) else {"BAD_REQUEST"},
        )
        return
    assert 0 < lots <= INT_MAX and qty_from_str(qty_to_str(lots)) == lots
    covered("wire.qty_from_str", "lots")


@BOUNDARY_BUDGET
@given(text=NUMBERS)
def test_price_is_whole_ticks_within_int_max_or_a_stable_refusal(text):
    try:
        ticks = PRICES.from_str(text)
    except WireError as error:
        _refusal("wire.Prices.from_str", error, {"BAD_REQUEST", "PRICE_OFF_TICK"})
        return
    assert 0 < ticks <= INT_MAX and PRICES.from_str(PRICES.to_str(ticks)) == ticks
    covered("wire.Prices.from_str", "ticks")


@BOUNDARY_BUDGET
@given(text=NUMBERS)
def test_ns_and_path_ids_are_digits_within_int_max_or_bad_request(text):
    try:
        value = int_from_str(text, "ts_ns")
    except WireError as error:
        _refusal("wire.int_from_str", error, {"BAD_REQUEST"})
        return
    assert 0 <= value <= INT_MAX and int_from_str(str(value), "ts_ns") == value
    covered("wire.int_from_str", "parsed")


# ---------------------------------------------------------------------- request params

KINDS = [
    PlaceParams, OrderRef, AmendParams, CancelAllParams, RouteParams, CapacityParams,
    ConfirmParams, FailParams, DisputeParams, WithdrawParams,
    _Logon, _Subscribe, _DeadMan, _SshKey, _SshKeyRef, _DeliveryQuery,
]  # fmt: skip
NAMES = sorted({name for kind in KINDS for name in kind.__struct_fields__})
_big = st.sampled_from(["x" * 20_000, "9" * 5000, "[" * 3000])  # what 16 KB of params may hold
PARAM_VALUES = st.one_of(json_values(), _big, st.integers(-(2**70), 2**70))


@functools.cache
def _params(kind: type[msgspec.Struct], how: str) -> st.SearchStrategy[Any]:
    if how == "random":
        return st.one_of(PARAM_VALUES, st.dictionaries(st.sampled_from(NAMES), PARAM_VALUES))
    valid = structs(kind).map(msgspec.to_builtins)
    return mutated_fields(valid, PARAM_VALUES, NAMES + ["x" * 5000])


@pytest.mark.parametrize("how", ["random", "mutated"])
@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.__name__)
@PARAMS_BUDGET
@given(data=st.data())
def test_params_are_the_struct_or_bad_request_naming_the_field(kind, how, data):
    params = data.draw(_params(kind, how), label="params")
    try:
        parsed = parse_params(params, kind)
    except WireError as error:
        _refusal("orders.parse_params", error, {"BAD_REQUEST"})
        return
    assert isinstance(parsed, kind)
    for name, value in msgspec.structs.asdict(parsed).items():
        if isinstance(value, int) and not isinstance(value, bool):
            assert -INT_MAX <= value <= INT_MAX, name  # every JSON integer is a WireInt
    covered("orders.parse_params", f"{kind.__name__}")


FIT_ACCESS = st.builds(
    Access,
    host=st.one_of(
        st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9-]{1,10}){0,3}\.[a-z]{2,6}", fullmatch=True),
        st.ip_addresses().map(str),
    ),
    port=st.integers(1, 65535),
    user=st.from_regex(r"[a-z_][a-z0-9_.-]{0,15}", fullmatch=True),
    instructions=st.text(max_size=50),
).map(msgspec.to_builtins)


@BOUNDARY_BUDGET
@given(
    value=st.one_of(
        PARAM_VALUES,
        FIT_ACCESS,
        mutated_fields(FIT_ACCESS, PARAM_VALUES, [*Access.__struct_fields__]),
        st.builds(
            dict,
            host=mutated_text(st.just("gpu-7.example.com")),
            port=st.just(22),
            user=mutated_text(st.just("root")),
        ),
    )
)
def test_access_is_fit_for_a_holder_or_bad_access(value):
    try:
        access = parse_access(value)
    except WireError as error:
        _refusal("orders.parse_access", error, {"BAD_ACCESS"})
        return
    assert isinstance(access, Access) and access_error(access) is None
    covered("orders.parse_access", "fit")

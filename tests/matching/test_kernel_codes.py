"""The kernels' code constants are the schemas' codes: every member has one, and nothing more."""

from __future__ import annotations

from enum import IntEnum

import pytest

from matching import layout as lay
from matching.kernels import _base
from schemas import ids, units
from schemas.codes import (
    CancelReason,
    CashReason,
    DeliveryOutcome,
    ExpireReason,
    HaltReason,
    PositionReason,
    Reject,
)

pytestmark = pytest.mark.nojit

# Kernel constant prefix -> the schemas enum its constants copy.
PREFIXES: dict[str, type[IntEnum]] = {
    "R_": Reject,
    "CX_": CancelReason,
    "XP_": ExpireReason,
    "CR_": CashReason,
    "PR_": PositionReason,
    "DO_": DeliveryOutcome,
    "HR_": HaltReason,
}


def kernel_constants(prefix: str) -> dict[str, int]:
    return {k: v for k, v in vars(_base).items() if k.startswith(prefix) and isinstance(v, int)}


@pytest.mark.parametrize("prefix", sorted(PREFIXES))
def test_kernel_codes_are_the_schema_codes_one_for_one(prefix: str) -> None:
    constants = kernel_constants(prefix)
    codes = sorted(int(m) for m in PREFIXES[prefix])
    assert sorted(constants.values()) == codes, (
        f"{prefix}* in matching/kernels/_base.py: expected one constant per "
        f"{PREFIXES[prefix].__name__} member {codes}, found {constants}"
    )


def test_reject_constants_are_named_for_their_member() -> None:
    for name, value in kernel_constants("R_").items():
        assert Reject(value).name == name.removeprefix("R_")


def test_kernel_units_and_accounts_are_the_schemas() -> None:
    assert _base.NS_PER_HOUR == units.NS_PER_HOUR
    assert _base.BPS == units.BPS_PER_UNIT
    assert _base.ACCOUNT_FIRST_USER == ids.ACCOUNT_FIRST_USER
    assert (lay.ACCT_EXTERNAL, lay.ACCT_FEES) == (ids.ACCOUNT_EXTERNAL, ids.ACCOUNT_FEES)


def test_every_kernel_constant_is_checked() -> None:
    """A new family of codes in _base must join PREFIXES (or, if it is no code, NOT_CODES)."""
    own = {
        k
        for k, v in vars(_base).items()
        if k.isupper() and isinstance(v, int) and not hasattr(lay, k)
    }
    unchecked = {k for k in own if not k.startswith(tuple(PREFIXES))} - NOT_CODES
    assert not unchecked


# Constants of _base that copy no schemas enum (the units and accounts are checked above).
NOT_CODES = {"NS_PER_HOUR", "BPS", "ACCOUNT_FIRST_USER", "EMPTY"}

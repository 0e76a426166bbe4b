"""The event table: every kind has its columns, they fit the row, and its emitter writes them."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from matching import layout as lay
from matching.kernels import _base

pytestmark = pytest.mark.nojit

EMITTERS = {
    lay.EV_ACCEPTED: _base._emit_accepted,
    lay.EV_REJECTED: _base._emit_rejected,
    lay.EV_CANCELLED: _base._emit_cancelled,
    lay.EV_EXPIRED: _base._emit_expired,
    lay.EV_AMENDED: _base._emit_amended,
    lay.EV_TRADE: _base._emit_trade,
    lay.EV_CASH: _base._emit_cash,
    lay.EV_POSITION: _base._emit_position,
    lay.EV_CAPACITY: _base._emit_capacity,
    lay.EV_CLOSED: _base._emit_closed,
    lay.EV_ASSIGNED: _base._emit_assigned,
    lay.EV_STARTED: _base._emit_started,
    lay.EV_SETTLED: _base._emit_settled,
    lay.EV_LISTED: _base._emit_listed,
    lay.EV_DISPUTED: _base._emit_disputed,
    lay.EV_RESOLVED: _base._emit_resolved,
    lay.EV_DEPOSITED: _base._emit_deposited,
    lay.EV_WD_REQUESTED: _base._emit_wd_requested,
    lay.EV_WD_SETTLED: _base._emit_wd_settled,
    lay.EV_HALTED: _base._emit_halted,
    lay.EV_RESUMED: _base._emit_resumed,
    lay.EV_INSTR_CANCELLED: _base._emit_instr_cancelled,
    lay.EV_SUSPENDED: _base._emit_suspended,
    lay.EV_REINSTATED: _base._emit_reinstated,
}


def test_every_event_kind_has_columns_and_an_emitter():
    names = [k for k, v in vars(lay).items() if k.startswith("EV_") and isinstance(v, int)]
    kinds = {getattr(lay, k) for k in names if k != "EV_WIDTH"}
    assert set(lay.EV_COLUMNS) == kinds
    assert set(EMITTERS) == kinds


@pytest.mark.parametrize("kind", sorted(lay.EV_COLUMNS))
def test_columns_follow_the_row_head_and_fit_the_row(kind):
    columns = lay.EV_COLUMNS[kind]
    assert tuple(columns) == tuple(range(lay.E_FIRST, lay.E_FIRST + len(columns)))
    assert lay.E_FIRST + len(columns) <= lay.EV_WIDTH


@pytest.mark.parametrize("kind", sorted(EMITTERS))
def test_emitter_takes_its_kinds_columns_in_order(kind):
    emitter = getattr(EMITTERS[kind], "py_func", EMITTERS[kind])
    params = list(inspect.signature(emitter).parameters)
    assert params[:3] == ["ev", "n", "ci"]
    assert tuple(params[3:]) == type(lay.EV_COLUMNS[kind])._fields


@pytest.mark.parametrize("kind", sorted(EMITTERS))
def test_emitter_writes_its_columns_and_zeros_the_rest(kind):
    columns = lay.EV_COLUMNS[kind]
    ev = np.full((2, lay.EV_WIDTH), -7, dtype=np.int64)
    values = [100 + i for i in range(len(columns))]
    assert EMITTERS[kind](ev, 1, 5, *values) == 2
    assert ev[1, lay.E_TYPE] == kind and ev[1, lay.E_CMD] == 5
    assert [int(ev[1, col]) for col in columns] == values
    assert not ev[1, lay.E_FIRST + len(columns) :].any()
    assert (ev[0] == -7).all()

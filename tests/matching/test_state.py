"""The state tuple's shape: field names and order agree with the layout's ST_* indexes."""

from __future__ import annotations

import pytest

from matching import layout as lay
from matching.state import State, new_state
from tests.conftest import SMALL

pytestmark = pytest.mark.nojit


def test_state_fields_follow_the_layout_indexes():
    indexes = {
        "meta": lay.ST_META,
        "cfg": lay.ST_CFG,
        "accounts": lay.ST_ACCTS,
        "instruments": lay.ST_INSTRS,
        "orders": lay.ST_ORDERS,
        "levels": lay.ST_LEVELS,
        "level_ht": lay.ST_LEVEL_HT,
        "positions": lay.ST_POS,
        "position_ht": lay.ST_POS_HT,
        "capacity": lay.ST_CAP,
        "capacity_ht": lay.ST_CAP_HT,
        "obligations": lay.ST_OBL,
        "gtd_heap": lay.ST_GTD,
        "withdrawals": lay.ST_WDS,
        "deposit_refs": lay.ST_REFS,
        "scratch": lay.ST_SCRATCH,
    }
    assert State._fields == lay.ST_NAMES
    assert {name: State._fields.index(name) for name in State._fields} == indexes
    assert len(State._fields) == lay.ST_COUNT


def test_new_state_is_a_state_whose_names_and_indexes_are_the_same_arrays(catalog):
    st = new_state(SMALL, catalog)
    assert isinstance(st, State)
    for i, name in enumerate(State._fields):
        assert getattr(st, name) is st[i]

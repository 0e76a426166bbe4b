"""Fuzzing helpers: named budgets, what each fuzz covered, and strategies for wire values.

Every fuzz runs with a fixed seed (`derandomize=True`) and a named example budget, so a run is
repeatable and its time is bounded; `covered(target, outcome)` counts each example by target
and outcome (also a Hypothesis `event`), and the session summary prints the counts
(tests/conftest.py `pytest_terminal_summary`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

__all__ = [
    "DECODER_BUDGET",
    "BOUNDARY_BUDGET",
    "PARAMS_BUDGET",
    "GATEWAY_BUDGET",
    "LOGON_BUDGET",
    "COVERED",
    "covered",
    "summary_lines",
    "structs",
    "wire_values",
    "json_values",
    "deep_msgpack",
    "deep_json",
    "mutated_bytes",
    "mutated_fields",
    "mutated_text",
    "MSGPACK_INT_MIN",
    "MSGPACK_INT_MAX",
]

_fixed = {
    "derandomize": True,  # a fixed seed: every run tries the same inputs
    "deadline": None,  # the machine is shared: time per example is no property
    "database": None,  # nothing written to .hypothesis/, nothing replayed from it
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
# Examples per fuzz test: a pure decoder and one kind of input, a parser of numbers or symbols,
# one params Struct of the gateway (32 of them), the live gateway's WebSocket or REST, its logon.
DECODER_BUDGET = settings(max_examples=200, **_fixed)
BOUNDARY_BUDGET = settings(max_examples=400, **_fixed)
PARAMS_BUDGET = settings(max_examples=80, **_fixed)
GATEWAY_BUDGET = settings(max_examples=1000, **_fixed)
LOGON_BUDGET = settings(max_examples=200, **_fixed)  # a fresh socket per example: slower

# target -> outcome -> examples
COVERED: defaultdict[str, Counter[str]] = defaultdict(Counter)


def covered(target: str, outcome: str) -> None:
    """Count one example of `target` with its outcome ("refused: DecodeError", "PlaceOrder")."""
    COVERED[target][outcome] += 1
    event(f"{target}: {outcome}")


def summary_lines() -> list[str]:
    """One line per fuzz target: examples run, then the most frequent outcomes."""
    lines = []
    for target in sorted(COVERED):
        outcomes = COVERED[target]
        # The fault suite's few counts are its figures (RELIABILITY.md): all of them.
        top = len(outcomes) if target.startswith("fault") else 4
        shown = ", ".join(f"{name} {n}" for name, n in outcomes.most_common(top))
        more = f", +{len(outcomes) - top} more outcomes" if len(outcomes) > top else ""
        lines.append(f"{target}: {sum(outcomes.values())} examples ({shown}{more})")
    return lines


# ---------------------------------------------------------------------- values

MSGPACK_INT_MIN = -(2**63)
MSGPACK_INT_MAX = 2**64 - 1  # what a msgpack integer can carry
_EDGE_INTS = [0, 1, -1, 2**31, 2**53 + 1, 2**63 - 2, 2**63 - 1, 2**63, -(2**63), 2**64 - 1]
_ints = st.one_of(
    st.sampled_from(_EDGE_INTS),
    st.integers(-1000, 1000),
    st.integers(MSGPACK_INT_MIN, MSGPACK_INT_MAX),
)
# Strings that look almost like numbers, symbols or enum values: what loose parsing takes.
_NEAR = [
    "", " ", "1", "0", "-1", "+1", "1e3", "1E+999999", "NaN", "Infinity", "1_000", " 1", "1\n",
    "１", "٣", "²", "0x10", "1.", ".5", "1..0", "9" * 40, "buy", "BUY", "limit", "gtc", "ioc",
    "\x00", "\ud7ff", "é", "a" * 300, "H100-SXM.us-east.1h.2026-12-01T14",
]  # fmt: skip
_text = st.one_of(st.sampled_from(_NEAR), st.text(max_size=24))


def _values(binary: bool) -> st.SearchStrategy[Any]:
    scalars: list[st.SearchStrategy[Any]] = [
        st.none(),
        st.booleans(),
        _ints,
        st.floats(allow_nan=binary, allow_infinity=binary),
        _text,
    ]
    if binary:
        scalars.append(st.binary(max_size=16))
    return st.recursive(
        st.one_of(scalars),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=4)
        ),
        max_leaves=12,
    )


def wire_values() -> st.SearchStrategy[Any]:
    """Any value msgpack can carry (bytes and NaN included), nested a little."""
    return _values(binary=True)


def json_values() -> st.SearchStrategy[Any]:
    """Any value JSON can carry, nested a little; integers within 64 bits."""
    return _values(binary=False)


_DEPTHS = st.one_of(st.sampled_from([10, 900, 1100, 5000, 100_000]), st.integers(1, 20_000))


def deep_msgpack() -> st.SearchStrategy[bytes]:
    """A msgpack array nested `depth` deep (decoders recurse on nesting)."""
    return _DEPTHS.map(lambda depth: b"\x91" * depth + b"\xc0")


def deep_json() -> st.SearchStrategy[bytes]:
    """A JSON array nested `depth` deep."""
    return _DEPTHS.map(lambda depth: b"[" * depth + b"]" * depth)


# ---------------------------------------------------------------------- Structs from their types


def _strategy(info: mi.Type) -> st.SearchStrategy[Any]:
    if isinstance(info, mi.IntType):
        low = info.ge if info.ge is not None else MSGPACK_INT_MIN
        high = info.le if info.le is not None else MSGPACK_INT_MAX
        small = st.integers(max(low, -1000), min(high, 1000))
        return st.one_of(small, st.integers(low, high))
    if isinstance(info, mi.StrType):
        low = info.min_length or 0
        return st.text(min_size=low, max_size=max(low, min(info.max_length or 24, 24)))
    if isinstance(info, mi.BoolType):
        return st.booleans()
    if isinstance(info, mi.NoneType):
        return st.none()
    if isinstance(info, mi.EnumType):
        return st.sampled_from(list(info.cls))
    if isinstance(info, mi.LiteralType):
        return st.sampled_from(info.values)
    if isinstance(info, mi.UnionType):
        return st.one_of([_strategy(t) for t in info.types])
    if isinstance(info, mi.VarTupleType):
        return st.lists(_strategy(info.item_type), max_size=4).map(tuple)
    if isinstance(info, mi.ListType):
        return st.lists(_strategy(info.item_type), max_size=4)
    if isinstance(info, mi.TupleType):
        return st.tuples(*[_strategy(t) for t in info.item_types])
    if isinstance(info, mi.StructType):
        fields = {f.name: _strategy(f.type) for f in info.fields}
        return st.builds(info.cls, **fields)
    if isinstance(info, mi.AnyType):
        return json_values()
    if isinstance(info, mi.Metadata):  # documentation only (Annotated): fuzz the type under it
        return _strategy(info.type)
    raise TypeError(f"no fuzz strategy for {info}")


def structs(*types: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    """Valid instances of any of `types`, every field drawn from its declared type."""
    return st.one_of([_strategy(mi.type_info(t)) for t in types])


# ---------------------------------------------------------------------- mutations

# Bytes that mean much to a msgpack reader: never-used, nil, huge array/map/str/ext lengths,
# uint64 and int64 heads.
_MSGPACK_HEADS = [
    b"\xc1", b"\xc0", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
    b"\xc9\xff\xff\xff\xff\x01", b"\xcf", b"\xd3", b"\xd4\xff", b"\xd7\xff",
]  # fmt: skip


@st.composite
def mutated_bytes(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A valid encoding with 1-4 byte edits: overwrite, insert, delete, truncate."""
    data = bytearray(draw(base))
    inserts = st.one_of(st.sampled_from(_MSGPACK_HEADS), st.binary(min_size=1, max_size=8))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["overwrite", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, len(data)))
        if op == "overwrite" and data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(inserts)
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


@st.composite
def mutated_fields(
    draw: st.DrawFn,
    base: st.SearchStrategy[dict[str, Any]],
    values: st.SearchStrategy[Any],
    names: list[str],
) -> dict[str, Any]:
    """A valid message as builtins with 1-3 field edits: a new value, a dropped field, an
    unknown or another type's field (`names`)."""
    obj = dict(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "drop", "add"]))
        keys = sorted(obj)
        if op == "set" and keys:
            obj[draw(st.sampled_from(keys))] = draw(values)
        elif op == "drop" and keys:
            del obj[draw(st.sampled_from(keys))]
        else:
            obj[draw(st.one_of(st.sampled_from(names), st.text(max_size=8)))] = draw(values)
    return obj


_CHARS = st.one_of(
    st.sampled_from(list(" .-_:T0t\n\t\x00١٣２²") + ["é", "\u200b"]), st.characters()
)


@st.composite
def mutated_text(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """A valid string with 1-3 character edits: replace, insert, delete, case, repeat."""
    text = list(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "case", "repeat"]))
        at = draw(st.integers(0, max(0, len(text) - 1)))
        if op == "replace" and text:
            text[at] = draw(_CHARS)
        elif op == "insert":
            text.insert(at, draw(_CHARS))
        elif op == "delete" and text:
            del text[at]
        elif op == "case" and text:
            text[at] = text[at].swapcase()
        elif text:
            text[at:at] = text[at : at + draw(st.integers(1, 4))]
    return "".join(text)

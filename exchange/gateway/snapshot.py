"""The gateway's projections saved with the log positions they were built from.

A gateway's projections (accounts and their resume buffers, books, trades, candles, deliveries,
outstanding provisioning requests, the half-read command of each shard) are a pure function of
the prefix of gx.events, gx.marketdata and gx.provisioning it has read. So every
`gateway_snapshot_every_events` messages applied a gateway saves them, with the next offset of every
partition, and a starting gateway loads the newest snapshot and reads only the tail: its start
no longer grows with the log.

Storage: the engine's snapshot table (streams/snapshots.py), one concept once. Its rows are
keyed by (writer, position): the gateway writes under `GATEWAY_SNAPSHOT_KEY` with position =
the sum of its next offsets, which only grows as a gateway reads on. Several gateways may write:
each row describes some prefix of the log, any of them is a correct place to start, saving a
position twice keeps the first (ON CONFLICT DO NOTHING), a row is written in one transaction
with its digest (a half-written one never shows), and on load the highest position that restores
wins (the kept ones are tried newest first, each fetched alone).
PostgreSQL rather than a compacted Kafka topic: the store, its pruning and its race handling
exist already, and a snapshot of megabytes would need the topic's record size raised.

Encoding: msgspec MessagePack of a `GatewaySnapshot` whose `state` is a tree of lists tagged
by their first item (`_Tag`), with shared objects written once and referenced after (an order
is both in its account's live orders and in its client-id index). Only classes of our own
modules are rebuilt (msgspec Structs, enums, and the projections' internal classes listed in
`_OBJECTS`): a snapshot names data, never code. The row's `state_hash` is the BLAKE2b of the
payload, so a damaged row is noticed before it is decoded. A snapshot of another format, one
that fails to decode, or one ahead of the log (the broker was reset) is ignored with a warning
and the gateway replays the whole log.

What is left out: the connections' state (a book depth's subscriber count and its update
stream exist while someone watches; a restarted gateway has no watchers), caches, and the
answers kept for commands this gateway sent (a restart forgets its commands).

Cost: a capture walks the whole state on the gateway's loop (it must see one state), so it runs
only once the hub is ready and takes at most `snapshot_duty_max` of the loop's time (hub.py);
the state is bounded by the retention per account (closed orders, fills, resume buffers), so a
snapshot is as large as that retention, whatever the log's length.
"""

from __future__ import annotations

import enum
import hashlib
import importlib
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from streams.snapshots import Snapshot, SnapshotStore

__all__ = [
    "FORMAT",
    "GATEWAY_SNAPSHOT_KEY",
    "GatewaySnapshot",
    "GatewaySnapshots",
    "SnapshotInvalid",
    "capture",
    "restore",
]

log = logging.getLogger("gx.gateway")

FORMAT = 1  # raise when the tree's meaning changes: older snapshots are then ignored
GATEWAY_SNAPSHOT_KEY = -1  # the writer column of streams/snapshots.py: engine shards are >= 0
_OWN_MODULES = ("schemas.", "streams.", "exchange.")
# Attributes that wire a projection to others or cache what it derives: not state. By class:
# `_accounts` is the Accounts' own state but, in Deliveries, the Accounts it numbers pushes with.
_WIRING = frozenset({"prices", "_handlers", "keys_of", "_price_strs"})
_NOT_STATE: dict[str, frozenset[str]] = {
    "exchange.gateway.deliveries:Deliveries": _WIRING | {"_accounts"}
}
# Per class, attributes that belong to the connections, saved as empty.
_TRANSIENT: dict[str, dict[str, Any]] = {
    "exchange.gateway.market_feed:_Book": {"views": dict, "snapshots": dict}
}
# The plain classes a snapshot may rebuild (besides our msgspec Structs and enums).
_OBJECTS = frozenset(
    {
        "exchange.gateway.accounts:_Order",
        "exchange.gateway.accounts:_Account",
        "exchange.gateway.market_feed:_Stream",
        "exchange.gateway.market_feed:_Book",
        "exchange.gateway.market_feed:_Candles",
        "exchange.gateway.market_feed:_Curve",
        "exchange.gateway.deliveries:_Delivery",
        "exchange.gateway.ticker:_Minute",
        "exchange.gateway.ticker:DayStats",
    }
)


# Values written as they are (exact types: an enum member subclasses int or str but is tagged).
_SCALARS = frozenset({type(None), bool, int, float, str, bytes})


class _Tag(enum.IntEnum):
    REF = 0
    LIST = 1
    TUPLE = 2
    DICT = 3
    ORDERED = 4
    DEQUE = 5
    SET = 6
    STRUCT = 7
    ENUM = 8
    OBJECT = 9


class SnapshotInvalid(ValueError):
    """Raise when a snapshot cannot be rebuilt: it names what was wrong."""


class GatewaySnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The projections (`state`, a tagged tree) after reading each partition up to its offset."""

    format: int
    offsets: list[tuple[str, int, int]]  # (topic, partition, next offset to read)
    roots: list[str]  # the projections' names, in the order of `state`
    state: list[Any]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(GatewaySnapshot)


def _name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _fields(obj: object) -> list[str]:
    slots = getattr(type(obj), "__slots__", None)
    return _fields_of(type(obj), slots if slots is not None else list(vars(obj)))


def _fields_of(cls: type, names: Any) -> list[str]:
    wiring = _NOT_STATE.get(_name(cls), _WIRING)
    return [n for n in names if n not in wiring]


class _Writer:
    def __init__(self) -> None:
        self.memo: dict[int, int] = {}  # id(object) -> its number, in writing order
        self.keep: list[object] = []  # the objects numbered, alive until the tree is written

    def tree(self, v: Any) -> Any:
        if type(v) in _SCALARS:  # most of a state: checked inline by the callers too
            return v
        if isinstance(v, tuple):
            return [_Tag.TUPLE, *[self.tree(x) for x in v]]
        if isinstance(v, enum.Enum):
            return [_Tag.ENUM, _name(type(v)), v.value]
        if isinstance(v, msgspec.Struct):  # messages: immutable values, written whole
            return [
                _Tag.STRUCT,
                _name(type(v)),
                *[self.tree(getattr(v, f)) for f in v.__struct_fields__],
            ]
        number = self.memo.get(id(v))
        if number is not None:
            return [_Tag.REF, number]
        self.memo[id(v)] = len(self.memo)
        self.keep.append(v)
        if isinstance(v, list):
            return [_Tag.LIST, *[x if type(x) in _SCALARS else self.tree(x) for x in v]]
        if isinstance(v, OrderedDict):
            return [_Tag.ORDERED, *self._pairs(v)]
        if isinstance(v, dict):
            return [_Tag.DICT, *self._pairs(v)]
        if isinstance(v, deque):
            return [_Tag.DEQUE, v.maxlen, *[x if type(x) in _SCALARS else self.tree(x) for x in v]]
        if isinstance(v, (set, frozenset)):
            return [_Tag.SET, *[self.tree(x) for x in v]]
        name = _name(type(v))
        if name not in _OBJECTS:
            raise TypeError(f"gateway snapshot: {name} is not a known projection class")
        transient = _TRANSIENT.get(name, {})
        out: list[Any] = [_Tag.OBJECT, name]
        for field in _fields(v):
            value = transient[field]() if field in transient else getattr(v, field)
            out += [field, value if type(value) in _SCALARS else self.tree(value)]
        return out

    def _pairs(self, d: dict[Any, Any]) -> list[Any]:
        out: list[Any] = []
        tree = self.tree
        for k, x in d.items():
            out.append(k if type(k) in _SCALARS else tree(k))
            out.append(x if type(x) in _SCALARS else tree(x))
        return out


def _resolve(name: str, *, plain: bool) -> type:
    module, _, qualname = name.partition(":")
    if not module.startswith(_OWN_MODULES) or (plain and name not in _OBJECTS):
        raise SnapshotInvalid(f"class {name!r}: expected one of the gateway's own classes")
    try:
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError):
        raise SnapshotInvalid(f"class {name!r}: not found in this version") from None
    if not isinstance(cls, type):
        raise SnapshotInvalid(f"class {name!r}: not a class")
    return cls


class _Reader:
    def __init__(self) -> None:
        self.objects: list[Any] = []
        self.classes: dict[str, type] = {}
        self.fields: dict[str, list[str]] = {}  # class -> the field names already checked

    def cls(self, name: str, *, plain: bool = False) -> type:
        found = self.classes.get(name)
        if found is None:
            found = self.classes[name] = _resolve(name, plain=plain)
        return found

    def value(self, node: Any) -> Any:
        if not isinstance(node, list):
            return node
        tag, rest = node[0], node[1:]
        if tag == _Tag.TUPLE:
            return tuple(self.value(x) for x in rest)
        if tag == _Tag.REF:
            return self.objects[rest[0]]
        if tag == _Tag.ENUM:
            return self.cls(rest[0])(rest[1])
        if tag == _Tag.STRUCT:
            cls = self.cls(rest[0])
            if not issubclass(cls, msgspec.Struct):
                raise SnapshotInvalid(f"class {rest[0]!r}: expected a msgspec Struct")
            return cls(
                **dict(zip(cls.__struct_fields__, (self.value(x) for x in rest[1:]), strict=True))
            )
        value = self.value
        if tag == _Tag.LIST:
            out: Any = []
            self.objects.append(out)
            out.extend(x if type(x) is not list else value(x) for x in rest)
        elif tag in (_Tag.DICT, _Tag.ORDERED):
            out = {} if tag == _Tag.DICT else OrderedDict()
            self.objects.append(out)
            items = iter(rest)
            for k, x in zip(items, items, strict=True):
                out[k if type(k) is not list else value(k)] = x if type(x) is not list else value(x)
        elif tag == _Tag.DEQUE:
            out = deque(maxlen=rest[0])
            self.objects.append(out)
            out.extend(x if type(x) is not list else value(x) for x in rest[1:])
        elif tag == _Tag.SET:
            out = set()
            self.objects.append(out)
            out.update(self.value(x) for x in rest)
        elif tag == _Tag.OBJECT:
            plain: Any = self.cls(rest[0], plain=True)
            out = plain.__new__(plain)
            self.objects.append(out)
            saved = rest[1::2]
            if saved != self.fields.get(rest[0]):
                slots = getattr(plain, "__slots__", None)
                if slots is not None and sorted(saved) != sorted(_fields_of(plain, slots)):
                    raise SnapshotInvalid(
                        f"class {rest[0]!r}: the saved fields differ from {slots}"
                    )
                self.fields[rest[0]] = saved
            for name, x in zip(saved, rest[2::2], strict=True):
                setattr(out, name, x if type(x) is not list else value(x))
        else:
            raise SnapshotInvalid(
                f"tree node tag {tag!r}: expected one of {[int(t) for t in _Tag]}"
            )
        return out


def capture(roots: dict[str, object], offsets: dict[tuple[str, int], int]) -> bytes:
    """Encode the projections `roots` (name -> projection) read up to `offsets`."""
    writer = _Writer()
    # per root, its attributes as [name, tree] pairs, in `roots` order
    grouped = [
        [[f, writer.tree(getattr(root, f))] for f in _fields(root)] for root in roots.values()
    ]
    snapshot = GatewaySnapshot(
        format=FORMAT,
        offsets=[(topic, p, o) for (topic, p), o in sorted(offsets.items())],
        roots=list(roots),
        state=grouped,
    )
    return _encoder.encode(snapshot)


def restore(
    payload: bytes, roots: dict[str, object], *, ends: dict[tuple[str, int], int]
) -> dict[tuple[str, int], int]:
    """Rebuild the projections `roots` in place from `payload`; return its offsets.

    Raises SnapshotInvalid, leaving `roots` untouched, when the payload does not decode, is of
    another format, names other projections, or read past `ends` (where the log ends now: a
    snapshot of a longer log is of another log, e.g. a broker that was reset).
    """
    try:
        snapshot = _decoder.decode(payload)
    except msgspec.DecodeError as error:
        raise SnapshotInvalid(f"payload: does not decode ({error})") from None
    if snapshot.format != FORMAT:
        raise SnapshotInvalid(f"format: expected {FORMAT}, found {snapshot.format}")
    if snapshot.roots != list(roots):
        raise SnapshotInvalid(f"projections: expected {list(roots)}, found {snapshot.roots}")
    ahead = [(t, p, o) for t, p, o in snapshot.offsets if o > ends.get((t, p), -1)]
    if ahead:
        raise SnapshotInvalid(f"offsets: {ahead[:3]} past the end of this log (another log?)")
    reader = _Reader()
    rebuilt: list[list[tuple[str, Any]]] = []
    try:
        for root, fields in zip(roots.values(), snapshot.state, strict=True):
            known = set(_fields(root))
            pairs = [(str(name), reader.value(node)) for name, node in fields]
            if {name for name, _ in pairs} != known:
                raise SnapshotInvalid(
                    f"{type(root).__name__}: the saved fields differ from {sorted(known)}"
                )
            rebuilt.append(pairs)
    except SnapshotInvalid:
        raise
    except (
        TypeError,
        ValueError,
        IndexError,
        KeyError,
        AttributeError,
        msgspec.ValidationError,
    ) as error:
        raise SnapshotInvalid(
            f"state: does not rebuild ({type(error).__name__}: {error})"
        ) from None
    for root, pairs in zip(roots.values(), rebuilt, strict=True):
        for name, value in pairs:
            setattr(root, name, value)
    return {(topic, p): o for topic, p, o in snapshot.offsets}


def digest(payload: bytes) -> str:
    """The payload's BLAKE2b, stored beside it to notice a damaged row."""
    return hashlib.blake2b(payload, digest_size=32).hexdigest()


class GatewaySnapshots:
    """Save and load the gateway's snapshots in the engine's snapshot store."""

    def __init__(self, dsn: str) -> None:
        """Describe the store in the database at `dsn`."""
        self.store = SnapshotStore(dsn)
        self.saved = 0
        self.damaged = 0  # snapshots passed over at starts because their digest differed
        self.loaded_position: int | None = None  # where the last start began (None: full replay)

    async def open(self) -> None:
        """Connect and create the table if missing."""
        await self.store.open()

    async def close(self) -> None:
        """Close the connection."""
        await self.store.close()

    async def save(self, payload: bytes, offsets: dict[tuple[str, int], int]) -> None:
        """Store one snapshot at position = the sum of its offsets."""
        await self.store.save(
            Snapshot(
                shard=GATEWAY_SNAPSHOT_KEY,
                input_offset=sum(offsets.values()),
                event_seq=FORMAT,  # the engine's column: here the format the payload is in
                state_hash=digest(payload),
                snapshot=payload,
            )
        )
        self.saved += 1

    async def candidates(self) -> AsyncIterator[bytes]:
        """The kept snapshots' payloads, newest first, one at a time (each may be large).

        Damaged ones are passed over with a warning. The caller starts from the first that
        restores: one that does not (another format, a bug) is passed over for the one before
        it, never loaded in part.
        """
        for position in await self.store.newest(GATEWAY_SNAPSHOT_KEY, self.store.kept):
            row = await self.store.at(GATEWAY_SNAPSHOT_KEY, position)
            if row is None:
                continue  # pruned by a gateway saving a newer one meanwhile
            if digest(row.snapshot) != row.state_hash:
                self.damaged += 1
                log.warning(
                    "gateway snapshot at position %d is damaged (its digest differs): "
                    "passing it over", row.input_offset,
                )  # fmt: skip
                continue
            yield row.snapshot

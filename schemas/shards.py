"""The shard map: which shard owns each (GPU model, region) pair of the catalog.

Shards: a shard is one partition of gx.commands and gx.events and the one engine that reads it.
Each (GPU model, region) pair of the catalog belongs to exactly one shard, and with it every
instrument of that pair (all products, all delivery hours) and its providers' capacity. By
default the catalog's pairs, sorted, are dealt round-robin over `GX_SHARDS` shards; `GX_SHARD_MAP`
("H100-SXM/us-east=0,A100-80G/eu-west=1,...", every pair named once) sets the map by hand.

Every process builds the map with `shard_map(settings, catalog)`, so the gateway that routes a
command and the engine that accepts it read the same owner. The map is part of the log's
configuration: an engine records its digest in its snapshots and refuses to start under another
map (streams/engine_runner.py), because the same commands replayed under another map would list
other instruments and produce other events. Ids carry their shard (schemas/ids.py).
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import msgspec

from schemas.catalog import Catalog
from schemas.ids import SHARDS_MAX
from schemas.symbols import parse_symbol

__all__ = ["Pair", "ShardMap", "build_shard_map", "shard_map"]

Pair = tuple[str, str]  # (GPU model, region)


class _ShardSettings(Protocol):
    """What the map reads from the settings (streams/settings.py Settings)."""

    @property
    def shards(self) -> int: ...

    @property
    def shard_map(self) -> str: ...


class ShardMap(msgspec.Struct, frozen=True, kw_only=True):
    """The owner of every (GPU model, region) pair: `owners[i]` owns `pairs[i]` (pairs sorted)."""

    shards: int
    pairs: tuple[Pair, ...]
    owners: tuple[int, ...]

    def shard_of(self, gpu: str, region: str) -> int:
        """Return the shard owning a pair; raise KeyError for a pair not in the catalog."""
        for pair, owner in zip(self.pairs, self.owners, strict=True):
            if pair == (gpu, region):
                return owner
        raise KeyError(f"{gpu}/{region}: not a GPU model and region of the catalog")

    def shard_of_symbol(self, symbol: str) -> int:
        """Return the shard owning an instrument; raise SymbolError or KeyError if none does."""
        key = parse_symbol(symbol)
        return self.shard_of(key.gpu, key.region)

    def pairs_of(self, shard: int) -> tuple[Pair, ...]:
        """Return the pairs a shard owns, sorted (empty for a shard that owns none)."""
        return tuple(p for p, owner in zip(self.pairs, self.owners, strict=True) if owner == shard)

    def text(self) -> str:
        """Return the map in `GX_SHARD_MAP` form (it builds this same map back)."""
        return ",".join(f"{g}/{r}={s}" for (g, r), s in zip(self.pairs, self.owners, strict=True))

    def digest(self) -> str:
        """Return a hash of the map (hex BLAKE2b-128), the same in every process and run."""
        canonical = f"shards={self.shards};{self.text()}".encode()
        return hashlib.blake2b(canonical, digest_size=16).hexdigest()


def build_shard_map(catalog: Catalog, shards: int, text: str = "") -> ShardMap:
    """Build the map of `shards` shards: round-robin over the sorted pairs, or `text` if given.

    Raise ValueError naming the entry that is wrong: a shard count out of range, a pair not in
    the catalog, a pair named twice or not at all, a shard out of range.
    """
    if not isinstance(shards, int) or not 1 <= shards <= SHARDS_MAX:
        raise ValueError(f"GX_SHARDS: expected 1..{SHARDS_MAX}, found {shards!r}")
    pairs = tuple(sorted((g.model, r) for g in catalog.gpus for r in catalog.regions))
    if not text.strip():
        return ShardMap(
            shards=shards, pairs=pairs, owners=tuple(i % shards for i in range(len(pairs)))
        )
    owner: dict[Pair, int] = {}
    for entry in text.split(","):
        pair, shard = _entry(entry.strip(), shards)
        if pair not in pairs:
            raise ValueError(
                f"GX_SHARD_MAP: {entry.strip()!r} names {pair[0]}/{pair[1]}, which is not a GPU "
                f"model and region of the catalog"
            )
        if pair in owner:
            raise ValueError(f"GX_SHARD_MAP: {pair[0]}/{pair[1]} is mapped twice")
        owner[pair] = shard
    missing = [f"{g}/{r}" for g, r in pairs if (g, r) not in owner]
    if missing:
        raise ValueError(
            f"GX_SHARD_MAP: every GPU model and region must have a shard; missing "
            f"{', '.join(missing)}"
        )
    return ShardMap(shards=shards, pairs=pairs, owners=tuple(owner[p] for p in pairs))


def _entry(entry: str, shards: int) -> tuple[Pair, int]:
    """Parse one `GPU/region=shard` entry of GX_SHARD_MAP."""
    pair_text, equals, shard_text = entry.partition("=")
    gpu, slash, region = pair_text.strip().partition("/")
    if not (equals and slash and gpu and region):
        raise ValueError(f"GX_SHARD_MAP: expected GPU/region=shard entries, found {entry!r:.80}")
    shard_text = shard_text.strip()
    if not shard_text.isascii() or not shard_text.isdigit() or not 0 <= int(shard_text) < shards:
        raise ValueError(
            f"GX_SHARD_MAP: {entry!r:.80}: the shard must be 0..{shards - 1} (GX_SHARDS={shards})"
        )
    return (gpu, region), int(shard_text)


def shard_map(settings: _ShardSettings, catalog: Catalog) -> ShardMap:
    """Build the exchange's one shard map from the settings (GX_SHARDS, GX_SHARD_MAP)."""
    return build_shard_map(catalog, settings.shards, settings.shard_map)

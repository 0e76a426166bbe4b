"""Numba kernels: the whole single-writer state machine over preallocated int64 arrays.

Private by convention (`_name`): only `matching.engine` calls them, after validating input.
`_apply` takes the state (`matching.state.State`, a named tuple of arrays) and hands it down:
kernels that touch several pools take it and bind the arrays they use on their first line, leaf
kernels take plain arrays; kernels index 2-D arrays directly, never through row views.

Every kernel is compiled with `_nrt=False`: no Numba runtime, so no reference counting on any
array argument (it was most of the time per command) and no allocation. Kernels write event rows
into `ev` and return the new count; `_apply` checks the room a command can need before running
it. They never raise on bad input (refusals are events) and never read a clock or a random source.

One module per concern, imported in this order: `_base` (codes, event rows, cash), `pools`
(hash tables, positions, capacity), `book` (levels, orders), `expiry` (GTD heap), `trades`
(matching and fills), `orders` (order commands and risk), `accounts` (cash and capacity),
`lifecycle` (listing, clock, gate closure, delivery), `dispatch` (`_apply`, `_rebuild`).
"""

from matching.kernels.dispatch import _apply, _rebuild

__all__ = ["_apply", "_rebuild"]

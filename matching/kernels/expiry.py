"""The GTD expiry heap."""

from __future__ import annotations

from numba import njit

from matching.kernels._base import EMPTY
from matching.kernels.book import _order_slot
from matching.layout import M_GTD_SIZE


@njit(cache=True, _nrt=False)
def _heap_less(heap, a, b):
    return heap[a, 0] < heap[b, 0] or (heap[a, 0] == heap[b, 0] and heap[a, 1] < heap[b, 1])


@njit(cache=True, _nrt=False)
def _heap_swap(heap, a, b):
    t0 = heap[a, 0]
    t1 = heap[a, 1]
    heap[a, 0] = heap[b, 0]
    heap[a, 1] = heap[b, 1]
    heap[b, 0] = t0
    heap[b, 1] = t1


@njit(cache=True, _nrt=False)
def _gtd_push(meta, gtd, expire, order_id):
    heap = gtd
    i = meta[0, M_GTD_SIZE]
    meta[0, M_GTD_SIZE] = i + 1
    heap[i, 0] = expire
    heap[i, 1] = order_id
    while i > 0:
        parent = (i - 1) // 2
        if not _heap_less(heap, i, parent):
            break
        _heap_swap(heap, i, parent)
        i = parent


@njit(cache=True, _nrt=False)
def _gtd_pop(meta, gtd):
    heap = gtd
    size = meta[0, M_GTD_SIZE] - 1
    meta[0, M_GTD_SIZE] = size
    order_id = heap[0, 1]
    heap[0, 0] = heap[size, 0]
    heap[0, 1] = heap[size, 1]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            break
        child = left
        if left + 1 < size and _heap_less(heap, left + 1, left):
            child = left + 1
        if not _heap_less(heap, child, i):
            break
        _heap_swap(heap, i, child)
        i = child
    return order_id


@njit(cache=True, _nrt=False)
def _gtd_live(orders, gtd, size):
    live = 0
    for i in range(size):
        if _order_slot(orders, gtd[i, 1]) != EMPTY:
            live += 1
    return live


@njit(cache=True, _nrt=False)
def _gtd_compact(meta, orders, gtd):
    """Drop the entries of orders no longer live and restore the heap order."""
    size = 0
    for i in range(meta[0, M_GTD_SIZE]):
        if _order_slot(orders, gtd[i, 1]) != EMPTY:
            gtd[size, 0] = gtd[i, 0]
            gtd[size, 1] = gtd[i, 1]
            size += 1
    meta[0, M_GTD_SIZE] = size
    for start in range(size // 2 - 1, -1, -1):
        i = start
        while True:
            left = 2 * i + 1
            if left >= size:
                break
            child = left
            if left + 1 < size and _heap_less(gtd, left + 1, left):
                child = left + 1
            if not _heap_less(gtd, child, i):
                break
            _heap_swap(gtd, i, child)
            i = child


@njit(cache=True, _nrt=False)
def _gtd_due(heap, size, now):
    """How many heap entries expire at `now` (a tick's worth of work; no allocation)."""
    count = 0
    for i in range(size):
        if heap[i, 0] <= now:
            count += 1
    return count

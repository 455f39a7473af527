"""Holding Python's cyclic garbage collector off during a bulk pass.

A pass over a thousand canaries (the health evaluation, the deployments tick) keeps a few hundred
thousand small containers alive at once: rows, logs, histograms, judgements. None are in cycles,
so reference counting frees them when the pass is done with them, but their allocation sets off
collections that walk every object the process holds, again and again: a third of such a pass's
time in profiles. The collector's next run after the pass finds the heap back to its usual size.

Passes in several threads share one hold: the collector is on again when the last one ends, if
it was on when the first began.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_restore = False


@contextmanager
def collector_paused() -> Iterator[None]:
    global _depth, _restore
    with _lock:
        if _depth == 0:
            _restore = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _restore:
                gc.enable()

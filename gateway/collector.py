"""The cyclic garbage collector of a served gateway, kept out of the task path's way.

A served gateway is one long-lived process, so two things the collector does by default cost
it dearly:
- every full collection walks what start-up made (modules, config, services, their runtimes:
  ~70,000 objects that live as long as the process);
- a young-generation collection runs every 700 net container allocations. With 16 runs in
  flight the objects they hold alone are near that, so a collection ran every ~3 tasks and a
  middle one every ~30, each walking the in-flight tasks again: ~110 µs of CPU per `/run`.

So start-up's objects are frozen (after start-up's garbage is collected) and the first
threshold is raised to GEN0_THRESHOLD (config: `gc_young_threshold`), which still collects
cycles every few hundred tasks.
Apps built for tests (many per process) are left alone; both are undone when serving stops.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

GEN0_THRESHOLD = 7_000  # the default of `gc_young_threshold` (config)


@contextmanager
def served_collector(young_threshold: int = GEN0_THRESHOLD) -> Iterator[None]:
    """Freeze start-up's objects and collect the young generation every `young_threshold`
    net allocations (0: leave Python's threshold as it is), until exit."""
    gc.collect()
    gc.freeze()
    before = gc.get_threshold()
    if young_threshold > 0:
        gc.set_threshold(young_threshold, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()

"""The collector's settings, applied in a process of their own (they are process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

from runtime.collector import OLDER_THRESHOLDS, YOUNG_THRESHOLD

PROBE = """
import gc, json
from runtime.collector import tune_collector

class Node:
    pass

kept = [object() for _ in range(3)]
tune_collector()
frozen = gc.get_freeze_count()
gc.disable()  # nothing collects behind the probe's back from here on
cycle = Node()
cycle.self = cycle  # garbage that only the collector can free
del cycle
found = gc.collect()
print(json.dumps({"threshold": gc.get_threshold(), "frozen": frozen, "found": found}))
"""


def test_startup_objects_are_frozen_and_cycles_still_collected() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout

    result = json.loads(out)
    assert tuple(result["threshold"]) == (YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    assert result["frozen"] > 1000  # the modules, classes and functions imported so far
    assert result["found"] >= 1  # the cycle made after the freeze

"""The API process's heap after start-up: the inference stack loaded and frozen out of the cycle collector's reach."""

import json
import subprocess
import sys

from service.main import GC_GEN0_THRESHOLD

PROBE = """
import gc, json, sys
from service.main import settle_heap
before = len(gc.get_objects())
settle_heap()
print(json.dumps({"torch": "torch" in sys.modules, "before": before, "frozen": gc.get_freeze_count(),
                  "tracked": len(gc.get_objects()), "threshold": gc.get_threshold()}))
"""


def test_settle_heap_loads_torch_and_leaves_the_collector_only_what_is_allocated_afterwards():
    # in a fresh interpreter: freezing is process-wide and would change how this test process collects
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    heap = json.loads(done.stdout.strip().splitlines()[-1])
    assert heap["torch"]
    assert heap["frozen"] > heap["before"]  # the app's imports and torch's
    assert heap["tracked"] < heap["frozen"] / 100
    assert heap["threshold"][0] == GC_GEN0_THRESHOLD

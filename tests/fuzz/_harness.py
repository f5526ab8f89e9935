"""bench/fuzz.py (the harness) and bench/fuzz_targets.py, imported for the fuzz tests."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "data" / "fuzz"


def load_harness():
    if "bench_fuzz" not in sys.modules:
        sys.path.insert(0, str(ROOT / "bench"))
        spec = importlib.util.spec_from_file_location("bench_fuzz", ROOT / "bench" / "fuzz.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bench_fuzz"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["bench_fuzz"]

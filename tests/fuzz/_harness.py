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


def known_pending(target: str) -> set[tuple[str, str]]:
    """(exception, file:function) of the crashes saved under pending/<target>/: found,
    routed to the owner of their file, not fixed yet."""
    import json
    out = set()
    for meta in sorted((CORPUS / "pending" / target).glob("*.json")):
        m = json.loads(meta.read_text())
        out.add((m["exc"], _where(m.get("site") or "")))
    return out


def _where(site: str) -> str:
    """'path:line:function' -> 'path:function' (lines move with edits)."""
    parts = site.split(":")
    return f"{parts[0]}:{parts[-1]}" if len(parts) == 3 else site

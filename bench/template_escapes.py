"""The template-escape table (issue 16): each hostile chat template of the regression corpus
(`tests/formats/test_template_sandbox.py` ATTACKS) rendered once with a one-message
conversation under the default limits: the outcome, the seconds it took and the peak
Python memory it allocated (tracemalloc).

    python bench/template_escapes.py
Writes bench/results/template_escapes.json and prints a markdown table.
"""
from __future__ import annotations

import importlib.util
import json
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _attacks() -> list[tuple[str, str, str]]:
    path = ROOT / "tests" / "formats" / "test_template_sandbox.py"
    spec = importlib.util.spec_from_file_location("test_template_sandbox", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ATTACKS


def attempt(template: str) -> dict:
    """Render `template` once; the outcome (the error's class and message, or "rendered")."""
    from edgeformer.errors import EdgeformerError
    from edgeformer.formats.chat_template import render_chat
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        out = render_chat(template, [{"role": "user", "content": "hi"}])
        outcome, message = "rendered", f"{len(out)} characters"
    except EdgeformerError as e:
        outcome, message = type(e).__name__, getattr(e, "what", str(e))
    except Exception as e:   # noqa: BLE001 - what the table is for
        outcome, message = f"RAW {type(e).__name__}", str(e)[:200]
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"outcome": outcome, "message": message, "seconds": round(seconds, 4), "peak_mb": round(peak / 2**20, 2)}


def main() -> None:
    rows = [{"attack": name, "template": tmpl, **attempt(tmpl)} for name, tmpl, _ in _attacks()]
    out = ROOT / "bench" / "results" / "template_escapes.json"
    out.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    print("| attack | outcome | time (s) | peak MB | message |\n| --- | --- | ---: | ---: | --- |")
    for r in rows:
        msg = r["message"].replace("|", "\\|")
        print(f"| {r['attack']} | {r['outcome']} | {r['seconds']:.3f} | {r['peak_mb']:.1f} | {msg} |")


if __name__ == "__main__":
    main()

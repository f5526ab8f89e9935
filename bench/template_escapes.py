"""The template-escape table (issue 16): each hostile chat template of the regression corpus
(`tests/formats/test_template_sandbox.py` ATTACKS) rendered once with a one-message
conversation under the default limits: the outcome, the seconds it took and the peak
Python memory it allocated (tracemalloc). Then the other side of the limits: real
templates (the built-in families, SmolLM2's own, and Qwen2.5-Coder's with 50 tools when
its GGUF is in the cache) on long conversations, bounded vs plain Jinja, same output.

    python bench/template_escapes.py
Writes bench/results/template_escapes.json and prints two markdown tables.
"""
from __future__ import annotations

import importlib.util
import json
import random
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


def _real_templates() -> dict[str, str]:
    from edgeformer.formats import load_checkpoint
    from edgeformer.formats.chat_template import BUILTIN_FAMILIES, builtin_template
    from edgeformer.models.shipped import cache_dir, resolve_model
    out = {f"built-in {f}": builtin_template(f) for f in BUILTIN_FAMILIES}
    files = {"SmolLM2-135M-Instruct": resolve_model("smollm2-135m-instruct"),
             "Qwen2.5-Coder-0.5B-Instruct": cache_dir() / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"}
    for name, path in files.items():
        if path.is_file():
            out[name] = load_checkpoint(path, validate=False).tokenizer.gguf_metadata["tokenizer.chat_template"]
    return out


def _conversation(n: int, words: int, rng: random.Random) -> list[dict]:
    vocab = "the quick brown fox jumps over a lazy dog 中文 😀 <b>x</b> 'q' \"d\"".split()
    conv = [{"role": "user" if i % 2 == 0 else "assistant", "content": " ".join(rng.choices(vocab, k=words))}
            for i in range(n)]
    return conv + [{"role": "user", "content": "the end"}]


def real_renders() -> list[dict]:
    """Bounded vs plain-Jinja (transformers' environment) render times of real templates."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from edgeformer.formats.chat_template import ChatTemplate
    plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    plain.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: \
        json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    tools = [{"type": "function", "function": {"name": f"f{i}", "description": "d" * 200, "parameters": {
        "type": "object", "properties": {f"p{j}": {"type": "string", "description": "x" * 50} for j in range(10)}}}}
        for i in range(50)]
    rows, rng = [], random.Random(0)
    for name, src in _real_templates().items():
        kw = {"tools": tools} if "Qwen" in name else {}
        for n, words in ((4, 10), (2000, 400), (20000, 40)):
            conv = _conversation(n, words, rng)
            t0 = time.perf_counter()
            ours = ChatTemplate(src).render(conv, **kw)
            t1 = time.perf_counter()
            ref = plain.from_string(src).render(messages=conv, add_generation_prompt=True, tools=kw.get("tools"))
            t2 = time.perf_counter()
            rows.append({"template": name, "messages": len(conv), "input_mb": round(sum(len(m["content"].encode())
                         for m in conv) / 1e6, 2), "output_mb": round(len(ours.encode()) / 1e6, 2),
                         "bounded_ms": round((t1 - t0) * 1e3, 1), "plain_ms": round((t2 - t1) * 1e3, 1),
                         "same": ours == ref})
    return rows


def main() -> None:
    rows = [{"attack": name, "template": tmpl, **attempt(tmpl)} for name, tmpl, _ in _attacks()]
    real = real_renders()
    out = ROOT / "bench" / "results" / "template_escapes.json"
    out.write_text(json.dumps({"attacks": rows, "real": real}, indent=1, ensure_ascii=False) + "\n")
    print("| attack | outcome | time (s) | peak MB | message |\n| --- | --- | ---: | ---: | --- |")
    for r in rows:
        msg = r["message"].removeprefix("chat template fails on a one-message conversation: ").replace("|", "\\|")
        print(f"| {r['attack']} | {r['outcome']} | {r['seconds']:.3f} | {r['peak_mb']:.1f} | {msg} |")
    print("\n| template | messages | input MB | output MB | bounded ms | plain Jinja ms | same output |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in real:
        print(f"| {r['template']} | {r['messages']} | {r['input_mb']} | {r['output_mb']} | {r['bounded_ms']} "
              f"| {r['plain_ms']} | {r['same']} |")


if __name__ == "__main__":
    main()

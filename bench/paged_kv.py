"""Paged KV cache on the real SmolLM2-135M: KV storage KLD vs f32, prefix-sharing TTFT,
batched decode throughput. Writes bench/results/paged_kv.json.

    python bench/paged_kv.py [cpu|numpy] [all|kld|ttft|tput]
"""
import json
import sys
import time
from pathlib import Path
import numpy as np
from edgeformer.backends import get_backend
from edgeformer.formats import load_checkpoint
from edgeformer.models import Decoder
from edgeformer.models.shipped import resolve_model
from edgeformer.quant.metrics import kl_divergence, top1_agreement
from edgeformer.runtime.kv_cache import PagedKVCache
from edgeformer.runtime.scheduler import BatchEngine
from edgeformer.runtime.sampler import SamplingParams
from edgeformer.formats.tokenizer import Tokenizer

backend = sys.argv[1] if len(sys.argv) > 1 else "cpu"
what = sys.argv[2] if len(sys.argv) > 2 else "all"
path = resolve_model("smollm2-135m-instruct")
ck = load_checkpoint(path)
dec = Decoder(ck, get_backend(backend))
tok = Tokenizer.from_gguf_metadata(ck.tokenizer.gguf_metadata, source=path)
ROOT = Path(__file__).resolve().parents[1]
text = (ROOT / "README.md").read_text() + (ROOT / "docs" / "ARCHITECTURE.md").read_text()
ids = tok.encode(text, add_bos=False)
out = {}
if what in ("all", "kld"):
    seq = ids[:320]
    def run(dtype):
        c = PagedKVCache.for_model(dec, budget_bytes=64 << 20, dtype=dtype, max_chunk=64)
        v, outs = c.new_sequence(), []
        for a in range(0, len(seq), 64):
            outs.append(dec.forward(np.array(seq[a:a + 64]), v))
            v.commit(seq[a:a + 64])
        return np.concatenate(outs)
    ref = run("f32")
    for dt in ("f16", "bf16", "int8"):
        got = run(dt)
        out[f"kld_{dt}"] = kl_divergence(ref, got)
        out[f"top1_{dt}"] = top1_agreement(ref, got)
    print(json.dumps(out), flush=True)
if what in ("all", "ttft"):
    system = ids[:500]
    q1, q2 = tok.encode(" What is edgeformer?", add_bos=False), tok.encode(" How do I run it?", add_bos=False)
    res = {}
    for sharing in (False, True):
        eng = BatchEngine(dec, tok, kv_budget_bytes=256 << 20, kv_dtype="f16", prefill_chunk=256,
                          prefix_sharing=sharing)
        p = SamplingParams(temperature=0, max_tokens=4)
        h1 = eng.submit(system + q1, p)
        eng.run_until_idle()
        r1 = h1.result()
        h2 = eng.submit(system + q2, p)
        eng.run_until_idle()
        r2 = h2.result()
        res[sharing] = r2
        out[f"ttft_first_s_sharing={sharing}"] = r1.stats.ttft_s
        out[f"ttft_second_s_sharing={sharing}"] = r2.stats.ttft_s
        out[f"cached_tokens_second_sharing={sharing}"] = r2.stats.cached_tokens
    out["same_tokens_with_and_without_sharing"] = res[True].token_ids == res[False].token_ids
    print(json.dumps(out), flush=True)
if what in ("all", "tput"):
    for inv in ((True, False) if backend == "numpy" else (True,)):
        for nb in (1, 16):
            eng = BatchEngine(dec, tok, kv_budget_bytes=256 << 20, kv_dtype="f16", max_batch=16,
                              batch_invariant=inv, prefix_sharing=False)
            hs = [eng.submit(ids[i * 7:i * 7 + 20], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
                  for i in range(nb)]
            while any(eng.scheduler.running[h.id].prefilling if h.id in eng.scheduler.running else True
                      for h in hs) :
                eng.step()
            t, n0 = time.perf_counter(), eng.metrics()["tokens_generated"]
            eng.run_until_idle()
            dt = time.perf_counter() - t
            out[f"decode_tok_s_batch{nb}_invariant={inv}"] = (eng.metrics()["tokens_generated"] - n0) / dt
            print(json.dumps(out), flush=True)

res_dir = ROOT / "bench" / "results"
res_dir.mkdir(parents=True, exist_ok=True)
(res_dir / f"paged_kv_{backend}.json").write_text(json.dumps(out, indent=1, default=str))

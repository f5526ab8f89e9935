"""Print the decoder parity table: family x load path -> max relative logits error vs
`transformers` (max |a - b| / max |b| over prompts of 1, 7 and 33 tokens + 8 more).

    python tests/models/parity_table.py

Paths: `hf` (safetensors dir), `incremental` (hf path, prefill then 8 one-token steps vs
transformers), each on the numpy reference and the Numba `cpu` backend; GGUF written by `formats.convert` or by gguf-py's writer (llama.cpp's)
from `to_gguf()` + `extra_gguf_tensors`, in F32 and F16 (F16 compared with a
transformers model holding the same F16-rounded matrices).
"""
from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))   # tests/: the support package

from support.families import (FAMILIES, N_DECODE, PROMPT_LENS,  # noqa: E402
                      checkpoint_from_hf_dir, convert_gguf, hf_logits, hf_model, prompt, rel_err,
                      round_matrices_f16, save_hf, write_gguf_reference)

PATHS = ["hf", "incremental", "hf cpu", "incremental cpu", "convert F32", "convert F16", "gguf-py F32",
         "gguf-py F16"]


def _full_err(dec, model) -> float:
    errs = []
    for n in PROMPT_LENS:
        toks = prompt(n + N_DECODE)
        errs.append(rel_err(dec.forward(toks, dec.make_cache(64)), hf_logits(model, toks)))
    return max(errs)


def _incremental_err(dec, model) -> float:
    errs = []
    for n in PROMPT_LENS:
        toks = prompt(n + N_DECODE)
        cache = dec.make_cache(64)
        steps = [dec.forward(toks[:n], cache)] + [dec.forward(toks[n + j:n + j + 1], cache)
                                                  for j in range(N_DECODE)]
        errs.append(rel_err(np.concatenate(steps), hf_logits(model, toks)))
    return max(errs)


def family_row(fam, root: Path) -> dict[str, str]:
    from edgeformer.backends import get_backend
    from edgeformer.formats import load_checkpoint
    from edgeformer.models import Decoder
    model = hf_model(fam)
    hf_dir = save_hf(model, root / fam.name)
    row: dict[str, str] = {}
    for path in PATHS:
        try:
            ref = model
            be = get_backend("cpu" if path.endswith("cpu") else "numpy")
            if path.split()[0] in ("hf", "incremental"):
                ck = checkpoint_from_hf_dir(hf_dir)
            else:
                writer, qtype = path.split()
                out = root / f"{fam.name}-{writer}-{qtype}.gguf"
                if writer == "convert":
                    convert_gguf(hf_dir, out, qtype)
                else:
                    write_gguf_reference(hf_dir, out, qtype == "F16")
                ck = load_checkpoint(out)
                if qtype == "F16":
                    ref = hf_model(fam)
                    round_matrices_f16(ref)
            dec = Decoder(ck, be)
            err = _incremental_err(dec, ref) if path.startswith("incremental") else _full_err(dec, ref)
            row[path] = f"{err:.1e}" + ("" if err <= 1e-4 else " FAIL")
        except Exception as e:  # noqa: BLE001  (the table reports every cell)
            row[path] = f"ERR {type(e).__name__}"
    return row


def main() -> None:
    warnings.filterwarnings("ignore")
    import transformers
    transformers.logging.set_verbosity_error()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        rows = {fam.name: family_row(fam, Path(d)) for fam in FAMILIES}
    print("| family | features | " + " | ".join(PATHS) + " |")
    print("|---|---|" + "---|" * len(PATHS))
    for fam in FAMILIES:
        print(f"| {fam.name} | {fam.notes} | " + " | ".join(rows[fam.name][p] for p in PATHS) + " |")
    print(f"\nmax |a-b| / max |b| vs transformers (fp32, eager), prompts {PROMPT_LENS} + {N_DECODE}; "
          f"bound 1e-4; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()

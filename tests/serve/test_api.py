"""The server's OpenAI API through the official `openai` client, on the tiny random model,
checked against transformers (same weights, same tokenizer, HF's own chat template)."""
from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick brown fox"}]


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.base_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def hf(tiny_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    return model, tok


def _token_bytes(tok, tid: int) -> bytes:
    """Bytes of one token of the byte-level BPE, decoded from GPT-2's byte<->unicode table."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    inv = {c: b for b, c in bytes_to_unicode().items()}
    s = tok.convert_ids_to_tokens(tid)
    if tid in tok.all_special_ids:
        return s.encode()
    return bytes(inv[c] for c in s)


def _hf_greedy(model, ids: list[int], n: int) -> list[tuple[int, torch.Tensor]]:
    """[(greedy token, log-softmax row)] for n steps from transformers, from scratch each step."""
    out, ids = [], list(ids)
    with torch.no_grad():
        for _ in range(n):
            lsm = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
            t = int(lsm.argmax())
            out.append((t, lsm))
            ids.append(t)
    return out


def test_completion_greedy_and_logprobs_match_transformers(client, hf, tiny_engine):
    model, tok = hf
    ids = tok("Edge devices run small")["input_ids"]
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=10, temperature=0, logprobs=3)
    ch = r.choices[0]
    lp = ch.logprobs
    ref = _hf_greedy(model, ids, len(lp.tokens) + 1)
    stop_ids = tiny_engine.tokenizer.stop_ids()
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(lp.tokens)
    for k, (t, lsm) in enumerate(ref[:len(lp.tokens)]):
        assert lp.tokens[k] == _token_bytes(tok, t).decode("utf-8", errors="replace")
        assert lp.token_logprobs[k] == pytest.approx(float(lsm[t]), abs=2e-4)
        want: dict[str, float] = {}
        for v, j in zip(*torch.topk(lsm, 3)):   # OpenAI's dict: tokens that render alike collapse
            want.setdefault(_token_bytes(tok, int(j)).decode("utf-8", errors="replace"), float(v))
        assert lp.top_logprobs[k] == pytest.approx(want, abs=2e-4)
        assert lp.text_offset[k] == sum(len(x) for x in lp.tokens[:k])
    if ch.finish_reason == "stop":      # ended on an end-of-generation token: HF's next greedy one
        assert ref[len(lp.tokens)][0] in stop_ids
    else:
        assert ch.finish_reason == "length" and len(lp.tokens) == 10
    assert ch.text == "".join(lp.tokens) or "\ufffd" in ch.text   # partial UTF-8 tokens render as U+FFFD


def test_chat_uses_the_chat_template_like_transformers(client, hf):
    model, tok = hf
    # HF renders the template; the prompt text is then tokenized with BOS, as llama.cpp's
    # server does for a chat prompt (HF's apply_chat_template(tokenize=True) adds none)
    text = tok.apply_chat_template(MSGS, add_generation_prompt=True, tokenize=False)
    ids = tok(text)["input_ids"]
    chat = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=12, temperature=0, logprobs=True,
                                          top_logprobs=2)
    comp = client.completions.create(model="tiny", prompt=ids, max_tokens=12, temperature=0)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.usage.prompt_tokens == len(ids)
    assert chat.choices[0].message.content == comp.choices[0].text
    assert chat.choices[0].finish_reason == comp.choices[0].finish_reason
    ref = _hf_greedy(model, ids, len(chat.choices[0].logprobs.content))
    for e, (t, lsm) in zip(chat.choices[0].logprobs.content, ref):
        assert e.token == _token_bytes(tok, t).decode("utf-8", errors="replace")
        assert bytes(e.bytes) in (_token_bytes(tok, t), e.token.encode())   # raw, or as rendered
        assert e.logprob == pytest.approx(float(lsm[t]), abs=2e-4)
        assert [x.logprob for x in e.top_logprobs] == pytest.approx(torch.topk(lsm, 2).values.tolist(), abs=2e-4)


def test_chat_streaming_matches_non_streaming(client):
    kw = dict(model="tiny", messages=MSGS, max_completion_tokens=10, temperature=0, logprobs=True)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant" and not chunks[0].choices[0].delta.content
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == full.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    body = [c.choices[0] for c in chunks[1:-1]]
    assert "".join(c.delta.content or "" for c in body) == full.choices[0].message.content
    assert body[-1].finish_reason == full.choices[0].finish_reason and body[-1].delta.content is None
    assert all(c.finish_reason is None for c in body[:-1])
    streamed = [e.logprob for c in body if c.logprobs for e in c.logprobs.content]
    assert streamed == [e.logprob for e in full.choices[0].logprobs.content]


def test_completion_streaming_and_n(client):
    kw = dict(model="tiny", prompt=["Hello world", "The quick"], max_tokens=6, temperature=0.9, seed=5, n=2)
    full = client.completions.create(**kw)
    assert [c.index for c in full.choices] == [0, 1, 2, 3]
    text = {i: "" for i in range(4)}
    finish = {}
    for c in client.completions.create(**kw, stream=True):
        assert c.object == "text_completion"
        for ch in c.choices:
            text[ch.index] += ch.text
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    assert [text[i] for i in range(4)] == [c.text for c in full.choices]
    assert [finish[i] for i in range(4)] == [c.finish_reason for c in full.choices]


def test_seed_reproducible(client):
    kw = dict(model="tiny", messages=MSGS, max_tokens=16, temperature=1.0, n=2)
    a = client.chat.completions.create(**kw, seed=1234)
    b = client.chat.completions.create(**kw, seed=1234)
    c = client.chat.completions.create(**kw, seed=999)
    texts = [ch.message.content for ch in a.choices]
    assert texts == [ch.message.content for ch in b.choices]
    assert texts[0] != texts[1]                      # choice i draws with seed + i
    assert texts != [ch.message.content for ch in c.choices]


def test_stop_cuts_before_the_stop_string(client):
    ids = [5, 40, 77, 120, 200, 31]
    base = client.completions.create(model="tiny", prompt=ids, max_tokens=20, temperature=0).choices[0].text
    if len(base) < 8:
        pytest.skip("greedy text too short to cut")
    stop = base[4:6]
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=20, temperature=0, stop=[stop, "never-seen"])
    assert r.choices[0].text == base[:base.find(stop)] and r.choices[0].finish_reason == "stop"


def test_logit_bias_and_sampling_params_reach_the_sampler(client, hf, tiny_engine):
    from edgeformer.runtime.sampler import SamplingParams
    _, tok = hf
    tid = tok.convert_tokens_to_ids("ick")
    r = client.completions.create(model="tiny", prompt="The", max_tokens=5, temperature=0, logit_bias={str(tid): 100})
    assert r.choices[0].text == "ick" * 5
    # the same settings through the Engine directly (its sampler is tested against its own
    # contract in tests/runtime): the server must pass every field through unchanged
    kw = dict(temperature=0.7, top_p=0.9, presence_penalty=0.5, frequency_penalty=0.3, seed=3)
    ids = tiny_engine.encode("Hello world")
    served = client.completions.create(model="tiny", prompt="Hello world", max_tokens=12, **kw).choices[0].text
    direct = tiny_engine.generate(ids, SamplingParams(max_tokens=12, penalty_last_n=-1, **kw)).text
    assert served == direct


def test_models_health_metrics(client, tiny_server):
    import httpx
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    assert httpx.get(tiny_server.url + "/health").json() == {"status": "ok"}
    text = httpx.get(tiny_server.url + "/metrics").text
    for name in ("edgeformer_requests_total", "edgeformer_generation_tokens_total", "edgeformer_kv_blocks_used",
                 "edgeformer_kv_blocks_free", "edgeformer_batch_size",
                 "edgeformer_time_to_first_token_seconds_bucket", "edgeformer_inter_token_latency_seconds_count"):
        assert name in text

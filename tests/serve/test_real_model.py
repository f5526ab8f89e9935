"""The server on the real shipped SmolLM2-135M-Instruct (cpu backend), against llama.cpp
on the same GGUF: same chat prompt (template + tokenization), same greedy reply."""
from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")

# llama.cpp's greedy path for this prompt has a top-1 margin >= 1 logit at each of its first
# 10 tokens, far above the Q8_1-activation rounding that separates the two engines (~0.3)
MSGS = [{"role": "user", "content": "Count from 1 to 5."}]
N = 10


@pytest.fixture(scope="module")
def llama(real_server):
    llama_cpp = pytest.importorskip("llama_cpp")
    from edgeformer.models.shipped import resolve_model
    return llama_cpp.Llama(str(resolve_model("smollm2-135m-instruct")), n_ctx=512, n_threads=2, verbose=False)


def test_chat_matches_llama_cpp(real_server, llama):
    client = openai.OpenAI(base_url=real_server.base_url, api_key="unused", max_retries=0, timeout=300)
    ours = client.chat.completions.create(model="smollm2-135m-instruct", messages=MSGS, max_tokens=N, temperature=0)
    ref = llama.create_chat_completion(messages=MSGS, max_tokens=N, temperature=0.0, top_k=1)
    assert ours.usage.prompt_tokens == ref["usage"]["prompt_tokens"]
    assert ours.choices[0].message.content == ref["choices"][0]["message"]["content"]
    assert ours.choices[0].finish_reason == ref["choices"][0]["finish_reason"]


def test_streaming_and_logprobs_on_the_real_model(real_server):
    client = openai.OpenAI(base_url=real_server.base_url, api_key="unused", max_retries=0, timeout=300)
    full = client.chat.completions.create(model="smollm2-135m-instruct", messages=MSGS, max_tokens=N,
                                          temperature=0, logprobs=True, top_logprobs=3)
    chunks = list(client.chat.completions.create(model="smollm2-135m-instruct", messages=MSGS, max_tokens=N,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    content = full.choices[0].logprobs.content
    # the reply's text is the concatenation of its tokens' bytes; greedy picks the top one
    assert b"".join(bytes(e.bytes) for e in content).decode() == full.choices[0].message.content
    for e in content:
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == e.logprob <= 0
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)

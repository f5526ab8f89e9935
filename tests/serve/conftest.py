"""Live servers for the serve tests: uvicorn in a thread on a free loopback port, over a
tiny random HF Llama (byte-level BPE trained here, chat template) or the real shipped
SmolLM2 on the cpu backend."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

CHAT_TEMPLATE = ("{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}")
CORPUS = ["The quick brown fox jumps over the lazy dog.",
          "Edge devices run small language models with tight memory budgets.",
          "Hello world! Numbers 12345 and 67890, tabs\tand newlines\n.",
          "Quantization stores weights in blocks of thirty-two values."] * 20
TINY_CTX = 256


def build_tiny_llama(d):
    """A random LlamaForCausalLM (2 layers, dim 64) + tokenizer.json with a chat template in `d`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start|>", "<|end|>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=330, special_tokens=specials, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos, eos = tok.token_to_id("<|begin_of_text|>"), tok.token_to_id("<|end_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(with_added_tokens=True), hidden_size=64, intermediate_size=96,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=TINY_CTX, rope_theta=10000.0, bos_token_id=bos, eos_token_id=eos)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():   # larger weights than the default init, so greedy outputs are not flat
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn_like(p) / (p.shape[-1] ** 0.5 if p.ndim == 2 and "embed" not in name else 1))
    model.save_pretrained(d)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(d)
    return d


@dataclass
class LiveServer:
    url: str            # http://127.0.0.1:PORT
    app: Any
    server: Any
    thread: threading.Thread

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def state(self) -> Any:
        return self.app.state.server

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def start_server(app: Any) -> LiveServer:
    """Run `app` under uvicorn in a daemon thread on a free 127.0.0.1 port; returns once
    it accepts connections."""
    import uvicorn
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not th.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return LiveServer(f"http://127.0.0.1:{port}", app, server, th)


def spawn_server(*args: str) -> tuple[Any, str]:
    """`edgeformer serve ARGS` in a subprocess on a free loopback port (stdout and stderr
    together in its stdout); returns (process, base url) once /health answers."""
    import subprocess
    import sys

    import httpx
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "edgeformer.cli", "serve", *args, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not come up: {proc.communicate()[0]}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return build_tiny_llama(tmp_path_factory.mktemp("serve_tiny"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_dir):
    from edgeformer.api import load
    return load(tiny_dir, backend="numpy", n_ctx=TINY_CTX)


@contextlib.contextmanager
def serving(engine, name: str = "tiny", **kw):
    from edgeformer.serve.app import create_app
    live = start_server(create_app(engine, model_name=name, **kw))
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def tiny_server(tiny_engine):
    # f32 KV: outputs are compared with transformers at float32 tolerance
    with serving(tiny_engine, max_body_bytes=1 << 20, kv_dtype="f32") as live:
        yield live


@pytest.fixture(scope="session")
def real_server():
    """The shipped SmolLM2-135M-Instruct on the cpu backend (skipped when not installed)."""
    from edgeformer.api import load
    from edgeformer.errors import InputError
    try:
        engine = load("smollm2-135m-instruct", backend="cpu", n_ctx=2048)
    except InputError as e:
        pytest.skip(f"shipped SmolLM2 unavailable: {e}")
    with serving(engine, "smollm2-135m-instruct") as live:
        yield live

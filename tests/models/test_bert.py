"""BERT parity with transformers' BertModel (random weights, odd sizes, eager attention),
and all-MiniLM-L6-v2 sentence embeddings vs transformers + sentence-transformers'
pooling recipe, tokenized by the `tokenizers` library from its tokenizer.json."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from edgeformer.backends import get_backend  # noqa: E402
from edgeformer.encoder_config import BertConfig  # noqa: E402
from edgeformer.errors import ConfigError, FormatError, InputError, UnsupportedError  # noqa: E402
from edgeformer.models.bert import Bert, TextEmbedder, bert_tensors_from_hf, shipped_minilm_dir  # noqa: E402


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def randomize(model: "torch.nn.Module", seed: int) -> None:
    """Weights far from their init (norm weights around 1, everything else N(0, 0.2)), so
    every tensor visibly matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.2
            p.copy_(1 + noise if "LayerNorm.weight" in name or "norm" in name.lower() and name.endswith("weight") else noise)


def tiny_bert(seed: int = 0, **kw) -> "transformers.BertModel":
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=72, num_hidden_layers=2, num_attention_heads=3,
                                  intermediate_size=37, max_position_embeddings=40, type_vocab_size=2,
                                  attn_implementation="eager", **kw)
    torch.manual_seed(seed)
    m = transformers.BertModel(cfg).eval()
    randomize(m, seed)
    return m


def ours(m) -> Bert:
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    return Bert(BertConfig.from_hf(m.config.to_dict()), bert_tensors_from_hf(sd), get_backend("numpy"))


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
def test_bert_matches_transformers(act):
    m = tiny_bert(1, hidden_act=act)
    b = ours(m)
    rng = np.random.default_rng(2)
    for t in (1, 7, 33):
        ids = rng.integers(0, 97, t)
        types = rng.integers(0, 2, t)
        with torch.no_grad():
            out = m(torch.tensor(ids)[None], token_type_ids=torch.tensor(types)[None])
        hidden = b.forward(ids, types)
        assert hidden.shape == (t, 72)
        assert rel_err(hidden, out.last_hidden_state[0].numpy()) <= 1e-4
        assert rel_err(b.pooled(hidden), out.pooler_output[0].numpy()) <= 1e-4


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_bert_packed_batch_matches_transformers_padded(backend):
    """forward_packed on sequences of different lengths == transformers on the padded
    batch with an attention mask (rows past each length ignored) == forward one by one."""
    m = tiny_bert(5)
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    b = Bert(BertConfig.from_hf(m.config.to_dict()), bert_tensors_from_hf(sd), get_backend(backend))
    rng = np.random.default_rng(6)
    lens = [9, 1, 33, 17, 2]
    seqs = [rng.integers(0, 97, n) for n in lens]
    types = [rng.integers(0, 2, n) for n in lens]
    ids, tt, mask = (torch.zeros(len(lens), max(lens), dtype=torch.long) for _ in range(3))
    for i, (s_, t_) in enumerate(zip(seqs, types)):
        ids[i, :s_.size], tt[i, :s_.size], mask[i, :s_.size] = torch.tensor(s_), torch.tensor(t_), 1
    with torch.no_grad():
        ref = m(ids, token_type_ids=tt, attention_mask=mask).last_hidden_state.numpy()
    got = b.forward_packed(seqs, types)
    assert [g.shape for g in got] == [(n, 72) for n in lens]
    for i, n in enumerate(lens):
        assert rel_err(got[i], ref[i, :n]) <= 1e-4
        assert rel_err(got[i], b.forward(seqs[i], types[i])) <= 1e-5
    with pytest.raises(InputError):
        b.forward_packed([])
    with pytest.raises(InputError):
        b.forward_packed([[1, 2], []])
    with pytest.raises(InputError):
        b.forward_packed([[1, 2]], [[0, 1], [0]])


def test_bert_bad_input():
    b = ours(tiny_bert(3))
    with pytest.raises(InputError):
        b.forward([])
    with pytest.raises(InputError):
        b.forward(np.zeros(41, np.int64))        # over max_position_embeddings
    with pytest.raises(InputError):
        b.forward([5, 97])                       # id out of vocabulary
    with pytest.raises(UnsupportedError):
        BertConfig.from_hf({**tiny_bert(3).config.to_dict(), "position_embedding_type": "relative_key"})
    with pytest.raises(ConfigError):
        BertConfig.from_hf({"model_type": "bert", "hidden_size": 72})


def test_bert_missing_tensor_is_format_error():
    m = tiny_bert(4)
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items() if "layer.1.output.dense.weight" not in k}
    with pytest.raises(FormatError, match="blk.1.ffn_down.weight"):
        Bert(BertConfig.from_hf(m.config.to_dict()), bert_tensors_from_hf(sd), get_backend("numpy"))


SENTENCES = [
    "This framework generates embeddings for each input sentence.",
    "Sentences are passed as a list of string.",
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé, emoji 🚀 and numbers 3.14159 — all tokenized by WordPiece!",
    "a",
]


@pytest.fixture(scope="module")
def minilm_dir():
    try:
        return shipped_minilm_dir()
    except InputError as e:
        pytest.skip(str(e))


def test_minilm_embeddings_match_transformers(minilm_dir):
    from tokenizers import Tokenizer
    emb = TextEmbedder(minilm_dir, get_backend("numpy"))
    got = emb.embed(SENTENCES)
    assert got.shape == (len(SENTENCES), 384)

    # reference: transformers BertModel on the same files + sentence-transformers' recipe
    model = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="eager").eval()
    tk = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tk.no_padding()
    tk.enable_truncation(json.loads((minilm_dir / "sentence_bert_config.json").read_text())["max_seq_length"])
    tk.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tk.encode_batch(SENTENCES)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    with torch.no_grad():
        tok = model(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask[..., None].float()
    ref = (tok * m).sum(1) / m.sum(1).clamp(min=1e-9)
    ref = torch.nn.functional.normalize(ref, p=2, dim=1).numpy()
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999, cos
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_minilm_batched_embeddings_equal_one_by_one(minilm_dir, monkeypatch):
    """Packed chunks (a tiny token budget forces several) give each text's embedding alone."""
    import edgeformer.models.bert as bert
    emb = TextEmbedder(minilm_dir, get_backend("cpu"))
    texts = SENTENCES * 3
    alone = np.stack([emb.embed([t])[0] for t in texts])
    monkeypatch.setattr(bert, "BATCH_TOKENS", 40)
    chunked = emb.embed(texts)
    monkeypatch.setattr(bert, "BATCH_TOKENS", 4096)
    whole = emb.embed(texts)
    assert np.abs(chunked - alone).max() <= 1e-5 and np.abs(whole - alone).max() <= 1e-5


def test_embed_cli_prints_json(minilm_dir, capsys):
    from edgeformer.cli.__main__ import main
    assert main(["embed", "hello world", "second text"]) == 0
    out = json.loads(capsys.readouterr().out)
    emb = TextEmbedder(minilm_dir, get_backend("numpy")).embed(["hello world", "second text"])
    vecs = np.array([row["embedding"] for row in out["data"]], dtype=np.float32)
    assert vecs.shape == (2, 384)
    assert np.allclose(vecs, emb, atol=1e-6)


def test_embed_cli_errors(tmp_path, capsys):
    from edgeformer.cli.__main__ import main
    assert main(["embed", "x", "--model", str(tmp_path / "missing")]) == 1
    assert "error" in capsys.readouterr().err

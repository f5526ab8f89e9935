"""Tiny random HF Llama directories for the format tests, built with transformers and a
small byte-level BPE trained here with the `tokenizers` library (no hub)."""
from __future__ import annotations

import json

import pytest

CHAT_TEMPLATE = ("{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}")
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Edge devices run small language models with tight memory budgets.",
    "Hello world! Numbers 12345 and 67890, tabs\tand newlines\n.",
    "def main():\n    return 42  # code too",
    "Quantization stores weights in blocks of thirty-two values.",
] * 20


def build_tokenizer():
    """Byte-level BPE (GPT-2 style pre-tokenizer) with BOS added by a post-processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start|>", "<|end|>"]
    trainer = trainers.BpeTrainer(vocab_size=330, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    return tok


def build_spm_model() -> bytes:
    """A small SentencePiece BPE model with byte fallback and no normalization (Llama 2 /
    Mistral style): unk=0, <s>=1, </s>=2."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=400,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
                                   # Llama 2's normalizer: none (llama.cpp's "llama" vocab has none)
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   split_digits=True, allow_whitespace_only_pieces=True)
    return buf.getvalue()


def build_llama_dir(d, *, intermediate_size=96, extra_vocab=3, dtype="float32",
                    tie=False, max_shard_size=None, seed=0, spm_model: bytes | None = None):
    """Save a random LlamaForCausalLM + tokenizer in `d` (byte-level BPE tokenizer.json,
    or with `spm_model` a SentencePiece tokenizer.model only); returns d."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if spm_model is not None:
        import sentencepiece as spm
        n_vocab, bos, eos = spm.SentencePieceProcessor(model_proto=spm_model).vocab_size(), 1, 2
    else:
        tok = build_tokenizer()
        n_vocab = tok.get_vocab_size(with_added_tokens=True)
        bos, eos = tok.token_to_id("<|begin_of_text|>"), tok.token_to_id("<|end_of_text|>")
    cfg = LlamaConfig(vocab_size=n_vocab + extra_vocab, hidden_size=64, intermediate_size=intermediate_size,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
                      tie_word_embeddings=tie, bos_token_id=bos, eos_token_id=eos)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype)).eval()
    with torch.no_grad():  # random norms, so a missing/misplaced norm weight shows
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(d, **kw)
    if spm_model is not None:
        (d / "tokenizer.model").write_bytes(spm_model)
        (d / "tokenizer_config.json").write_text(json.dumps(
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
             "add_eos_token": False, "chat_template": CHAT_TEMPLATE}))
        return d
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                   eos_token="<|end_of_text|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A float32 tiny Llama; ffn rows (96) a multiple of 32 but not of 256."""
    return build_llama_dir(tmp_path_factory.mktemp("tiny_llama"))

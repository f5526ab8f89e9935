"""HF -> GGUF conversion checked against references nobody here wrote: gguf-py's reader,
TensorNameMap and quantizers, the HF tokenizer, and llama.cpp itself."""
from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest
from safetensors import safe_open

from edgeformer.cli.__main__ import main
from edgeformer.errors import UnsupportedError
from edgeformer.formats import load_checkpoint
from edgeformer.formats.convert import convert
from edgeformer.formats.hf import to_float32
from edgeformer.quant.qtypes import QType

from .conftest import CHAT_TEMPLATE, build_llama_dir

VT = gguf.GGUFValueType


@pytest.fixture(scope="module")
def f32_gguf(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "tiny-f32.gguf"
    convert(tiny_llama, out, "F32")
    return out


def _hf_tensors(d) -> dict[str, np.ndarray]:
    with safe_open(d / "model.safetensors", "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _field(r: gguf.GGUFReader, key: str):
    f = r.get_field(key)
    assert f is not None, key
    return f


def test_names_and_data_match_llama_cpp_naming(tiny_llama, f32_gguf):
    r = gguf.GGUFReader(f32_gguf)
    hf = _hf_tensors(tiny_llama)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    want = {name_map.get_name(k, try_suffixes=(".weight", ".bias")): k for k in hf}
    got = {t.name: t for t in r.tensors}
    assert set(got) == set(want)
    for gname, t in got.items():
        a = hf[want[gname]]
        assert tuple(int(x) for x in t.shape) == tuple(reversed(a.shape))
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        data = np.asarray(t.data).reshape(a.shape)
        if gname.endswith(("attn_q.weight", "attn_k.weight")):
            # rows permuted within each head (rope layout), values otherwise unchanged
            n_head = 4 if "attn_q" in gname else 2
            for h_ours, h_hf in zip(np.split(data, n_head), np.split(a, n_head)):
                np.testing.assert_array_equal(np.sort(h_ours, axis=0), np.sort(h_hf, axis=0))
            assert not np.array_equal(data, a)
        else:
            np.testing.assert_array_equal(data, a)


def test_metadata_as_llama_cpp_writes_it(tiny_llama, f32_gguf):
    from transformers import AutoTokenizer

    r = gguf.GGUFReader(f32_gguf)
    assert _field(r, "general.architecture").contents() == "llama"
    for key, val in [("llama.context_length", 128), ("llama.embedding_length", 64),
                     ("llama.block_count", 2), ("llama.feed_forward_length", 96),
                     ("llama.attention.head_count", 4), ("llama.attention.head_count_kv", 2),
                     ("general.file_type", 0), ("general.quantization_version", 2)]:
        f = _field(r, key)
        assert f.types == [VT.UINT32] and f.contents() == val, key
    eps = _field(r, "llama.attention.layer_norm_rms_epsilon")
    assert eps.types == [VT.FLOAT32] and eps.contents() == pytest.approx(1e-5)

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    n_tok = len(tok)
    tokens = _field(r, "tokenizer.ggml.tokens").contents()
    assert len(tokens) == n_tok + 3  # model vocab_size is 3 larger than the tokenizer
    assert tokens[:n_tok] == tok.convert_ids_to_tokens(list(range(n_tok)))
    assert tokens[n_tok:] == [f"[PAD{i}]" for i in range(n_tok, n_tok + 3)]
    types = _field(r, "tokenizer.ggml.token_type")
    assert types.types == [VT.ARRAY, VT.INT32]
    tt = types.contents()
    specials = set(tok.all_special_ids) | {tok.convert_tokens_to_ids("<|start|>"), tok.convert_tokens_to_ids("<|end|>")}
    assert all((tt[i] == 3) == (i in specials) for i in range(n_tok))        # CONTROL
    assert all(tt[i] == 1 for i in range(n_tok) if i not in specials)          # NORMAL
    assert tt[n_tok:] == [5, 5, 5]                                              # UNUSED
    assert _field(r, "tokenizer.ggml.model").contents() == "gpt2"
    assert _field(r, "tokenizer.ggml.pre").contents() == "gpt-2"
    merges = _field(r, "tokenizer.ggml.merges").contents()
    assert len(merges) > 10 and all(len(m.split(" ")) == 2 for m in merges)
    bos = _field(r, "tokenizer.ggml.bos_token_id")
    assert bos.types == [VT.UINT32] and bos.contents() == tok.bos_token_id
    assert _field(r, "tokenizer.ggml.eos_token_id").contents() == tok.eos_token_id
    assert _field(r, "tokenizer.ggml.add_bos_token").contents() is True
    assert _field(r, "tokenizer.chat_template").contents() == CHAT_TEMPLATE


def test_gguf_checkpoint_equals_hf_checkpoint(tiny_llama, f32_gguf):
    g, h = load_checkpoint(f32_gguf), load_checkpoint(tiny_llama)
    assert g.format == "gguf" and h.format == "hf"
    for field in ("arch", "vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                  "ffn_dim", "max_seq_len", "rope_neox"):
        assert getattr(g.config, field) == getattr(h.config, field), field
    for field in ("norm_eps", "rope_theta"):  # GGUF stores these as float32
        assert getattr(g.config, field) == np.float32(getattr(h.config, field)), field
    assert set(g.tensors) == set(h.tensors)
    for name in h.tensors:
        np.testing.assert_array_equal(to_float32(g.tensors[name]), to_float32(h.tensors[name]))
    assert g.chat_template == h.chat_template == CHAT_TEMPLATE
    assert g.tokenizer.gguf_metadata["tokenizer.ggml.model"] == "gpt2"
    assert g.file_bytes == f32_gguf.stat().st_size


def test_q8_0_with_fallback_matches_gguf_quantizer(tmp_path):
    d = build_llama_dir(tmp_path / "odd", intermediate_size=40)  # ffn_down rows of 40
    f32, q8 = tmp_path / "f32.gguf", tmp_path / "q8.gguf"
    convert(d, f32, "F32")
    report = convert(d, q8, QType.Q8_0)
    assert [(n, w, g) for n, w, g in report.fallbacks] == [
        (f"blk.{i}.ffn_down.weight", QType.Q8_0, QType.F16) for i in range(2)]
    ref32 = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(f32).tensors}
    for t in gguf.GGUFReader(q8).tensors:
        a = ref32[t.name].reshape(tuple(reversed([int(x) for x in t.shape])))
        if a.ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            np.testing.assert_array_equal(np.asarray(t.data).reshape(a.shape), a)
        elif "ffn_down" in t.name:
            assert t.tensor_type == gguf.GGMLQuantizationType.F16
            np.testing.assert_array_equal(np.asarray(t.data).reshape(a.shape), a.astype(np.float16))
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
            want = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            np.testing.assert_array_equal(np.asarray(t.data).reshape(-1), want.reshape(-1))


def test_k_quant_falls_back_like_llama_cpp(tmp_path):
    """Q6_K on rows of 64: llama.cpp's fallback Q8_0; rows of 40: F16."""
    from edgeformer.formats.convert import plan_qtype

    assert plan_qtype((8, 512), QType.F32, QType.Q6_K) == QType.Q6_K
    assert plan_qtype((8, 64), QType.F32, QType.Q6_K) == QType.Q8_0
    assert plan_qtype((8, 64), QType.BF16, QType.Q4_K) == QType.Q5_0
    assert plan_qtype((8, 40), QType.F32, QType.Q6_K) == QType.F16
    assert plan_qtype((64,), QType.F16, QType.Q8_0) == QType.F32
    assert plan_qtype((8, 40), QType.F32, QType.BF16) == QType.BF16
    d = build_llama_dir(tmp_path / "odd", intermediate_size=40)
    report = convert(d, tmp_path / "q6.gguf", "Q6_K")
    got = {n: q for n, _, q in report.fallbacks}
    assert got["blk.0.ffn_down.weight"] == QType.F16 and got["blk.0.attn_q.weight"] == QType.Q8_0
    assert QType.Q6_K not in report.qtype_counts


def test_gguf_to_gguf_bf16_keeps_metadata(tmp_path, f32_gguf):
    out = tmp_path / "bf16.gguf"
    convert(f32_gguf, out, "BF16")
    src, dst = gguf.GGUFReader(f32_gguf), gguf.GGUFReader(out)
    for key, f in src.fields.items():
        if key.startswith("GGUF.") or key == "general.file_type":
            continue
        g = dst.get_field(key)
        assert g is not None and g.types == f.types, key
        assert g.contents() == f.contents(), key
    assert dst.get_field("general.file_type").contents() == 32
    ref = {t.name: np.asarray(t.data) for t in src.tensors}
    for t in dst.tensors:
        a = ref[t.name]
        if len(t.shape) == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.BF16
            want = gguf.quants.quantize(a.astype(np.float32), gguf.GGMLQuantizationType.BF16)
            np.testing.assert_array_equal(np.asarray(t.data).view(np.uint16).reshape(-1),
                                          want.view(np.uint16).reshape(-1))


def test_cli_convert_and_info(tmp_path, tiny_llama, capsys):
    out = tmp_path / "cli.gguf"
    assert main(["convert", str(tiny_llama), "-o", str(out), "--qtype", "Q4_0", "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    r = gguf.GGUFReader(out)
    n_params = sum(int(t.n_elements) for t in r.tensors)
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "llama" in text and f"{n_params:,}" in text and "context length: 128" in text
    assert f"{out.stat().st_size:,}" in text
    n_q4 = sum(t.tensor_type == gguf.GGMLQuantizationType.Q4_0 for t in r.tensors)
    q4_bytes = sum(int(t.n_bytes) for t in r.tensors if t.tensor_type == gguf.GGMLQuantizationType.Q4_0)
    assert any(line.split()[:3] == ["Q4_0", str(n_q4), f"{q4_bytes:,}"] for line in text.splitlines())
    # HF directory: counts straight from the safetensors library
    with safe_open(tiny_llama / "model.safetensors", "np") as f:
        hf_params = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    assert main(["info", str(tiny_llama)]) == 0
    text = capsys.readouterr().out
    assert f"{hf_params:,}" in text and "F32" in text


def test_cli_convert_bad_input(tmp_path, capsys):
    assert main(["convert", str(tmp_path), "-o", str(tmp_path / "x.gguf"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "config.json" in err
    assert not (tmp_path / "x.gguf").exists()


def test_bad_target_type_is_unsupported(tmp_path, tiny_llama):
    for qtype in ("Q9_9", 999, QType.IQ4_NL):
        with pytest.raises(UnsupportedError):
            convert(tiny_llama, tmp_path / "x.gguf", qtype)
    with pytest.raises(SystemExit):   # the CLI's choices name the targets
        main(["convert", str(tiny_llama), "-o", str(tmp_path / "x.gguf"), "--qtype", "Q9_9"])
    assert not (tmp_path / "x.gguf").exists()


def _copy_hf(src, dst, config_changes=None, drop=()):
    """`src` HF directory copied to `dst`, with config.json keys changed and tensors dropped."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **(config_changes or {})}))
    if drop:
        tensors = load_file(dst / "model.safetensors")
        save_file({k: v for k, v in tensors.items() if k not in drop}, dst / "model.safetensors")
    return dst


@pytest.mark.parametrize("changes,drop,message", [
    ({"model_type": "gpt_neox"}, (), "unsupported HF model_type 'gpt_neox'; supported: llama, mistral"),
    ({"hidden_size": "big"}, (), "config.json: HF config ('llama') has a bad value"),
    ({"num_attention_heads": 0, "head_dim": None}, (), "config.json: llama: n_heads must be an int in [1, 1024], got 0"),
    ({"rope_parameters": {"rope_type": "su-per", "factor": 2.0}}, (), "unsupported rope scaling type 'su-per'"),
    ({}, ("model.layers.1.mlp.up_proj.weight",), "missing tensor(s) the llama config needs: blk.1.ffn_up.weight"),
])
def test_cli_convert_names_what_is_wrong(tmp_path, tiny_llama, capsys, changes, drop, message):
    """Every error a bad source can cause reaches the user as one `edgeformer: error:` line."""
    src = _copy_hf(tiny_llama, tmp_path / "src", changes, drop)
    assert main(["convert", str(src), "-o", str(tmp_path / "x.gguf"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edgeformer: error: ") and message in err and str(src) in err
    assert not (tmp_path / "x.gguf").exists()


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(tmp_path, tiny_llama):
    """The file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes a write fail midway, as a
    full disk does: one line naming the path and the cause, exit 1, nothing at the path."""
    import resource
    import signal
    import subprocess
    import sys

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    out = tmp_path / "full.gguf"
    r = subprocess.run([sys.executable, "-m", "edgeformer.cli", "convert", str(tiny_llama), "-o", str(out),
                        "--no-progress"], capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"cannot write {out}: File too large (nothing was written there)" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_no_space_left_is_a_clear_error(tmp_path, tiny_llama, monkeypatch):
    import errno

    import edgeformer.formats.gguf as g
    from edgeformer.errors import InputError

    def full(f, t, size):
        f.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(g, "_write_tensor", full)
    out = tmp_path / "x.gguf"
    with pytest.raises(InputError, match="No space left on device"):
        convert(tiny_llama, out, "F32")
    assert list(tmp_path.iterdir()) == []

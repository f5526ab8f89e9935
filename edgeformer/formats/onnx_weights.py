"""ONNX files -> vision-encoder weights: read the initializers (the `onnx` package) of a
ViT / DINOv2 backbone exported from transformers by torch.onnx, and map them to our
tensor names (`models/vision.py`, through `tensor_map.vision_tensors_from_hf`).

The exporter keeps module names for parameters used directly (`backbone.embeddings.
cls_token`, `...norm1.weight`, biases, layer scales) but constant-folds the rest into
anonymous initializers (`onnx::MatMul_1966`, `onnx::Reshape_1962`). Those are named by
the graph around them:

- a 2-D MatMul right operand is a linear weight, stored (in, out): its name is that of
  the bias added to the MatMul's output (`X.bias` -> `X.weight`), else the MatMul node's
  scope (`/backbone/encoder/layer.0/attention/attention/key/MatMul`); it is transposed;
- in the embeddings scope, a (1, 1, D) operand of Concat and a (1, N, D) operand of
  Reshape (N a square) are the class and patch halves of the position embeddings.

Anything else inside the encoder's scope raises FormatError ("unknown layout"); other
initializers (a task head, e.g. a decoder) are left out and listed in `unmapped`.
The config (dims, heads, eps, activation) is read from the weights and the graph.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeformer.encoder_config import EncoderConfig, VisionConfig
from edgeformer.errors import FormatError, UnsupportedError
from edgeformer.extras import require
from edgeformer.formats.tensor_map import vision_tensors_from_hf

# Most nodes (and initializers) a graph may have: the exports read here have a few
# thousand (DINOv2-S 1.5k, a Piper voice 2.8k); every one is walked in Python.
MAX_NODES = 1 << 16
_LAYER_IDX = re.compile(r"encoder\.layer\.(\d+)\.")


@dataclass
class OnnxVision:
    """What `load_onnx_vision` returns: config, tensors under our names, the encoder's
    prefix in the file (e.g. "backbone."), and initializers outside the encoder."""

    path: Path
    config: VisionConfig
    tensors: dict[str, np.ndarray]
    prefix: str
    unmapped: list[str] = field(default_factory=list)


def read_onnx(source: str | os.PathLike | Any) -> tuple[Any, Path]:
    """(ModelProto, path) for a file path or an already loaded ModelProto. FormatError if
    the file is missing or not an ONNX model."""
    import onnx
    if isinstance(source, onnx.ModelProto):
        return source, Path("<onnx model>")
    p = Path(source)
    if not p.is_file():
        raise FormatError(p, "no such ONNX file")
    try:
        model = onnx.load(str(p))
    except Exception as e:   # protobuf DecodeError and friends
        raise FormatError(p, f"not a readable ONNX model: {str(e)[:300]}") from None
    g = model.graph
    if max(len(g.node), len(g.initializer)) > MAX_NODES:
        raise FormatError(p, f"graph of {len(g.node)} nodes and {len(g.initializer)} initializers is over the "
                             f"limit of {MAX_NODES} each")
    _check_names(model, p)
    return model, p


def _check_names(model: Any, path: Path) -> None:
    """FormatError unless the graph's names are text: protobuf hands a proto2 string
    field holding invalid UTF-8 back as bytes."""
    g = model.graph
    names = [t.name for t in g.initializer] + [v.name for v in (*g.input, *g.output)]
    for n in g.node:
        names += [n.name, n.op_type, *n.input, *n.output, *(a.name for a in n.attribute)]
    bad = next((x for x in names if not isinstance(x, str)), None)
    if bad is not None:
        raise FormatError(path, f"graph name {bad[:60]!r} is not UTF-8")


def _array(t: Any, path: Path) -> np.ndarray:
    """A TensorProto as numpy; FormatError when its data does not fit its dims/type."""
    from onnx import numpy_helper
    try:
        return numpy_helper.to_array(t)
    except Exception as e:   # ValueError (size vs dims), TypeError/KeyError (data type), OSError (external)
        raise FormatError(path, f"tensor {t.name!r}: unreadable data ({type(e).__name__}: {str(e)[:200]})") from None


def initializers(model: Any, path: Path = Path("<onnx model>")) -> dict[str, np.ndarray]:
    """name -> numpy array of every graph initializer (external data included)."""
    return {t.name: _array(t, path) for t in model.graph.initializer}


def _scope(node: Any) -> str:
    """Module path of a node from its exported name: '/backbone/encoder/layer.0/mlp/fc1/MatMul'
    -> 'backbone.encoder.layer.0.mlp.fc1'."""
    name = node.name or (node.output[0] if node.output else "")
    parts = [p for p in name.split("/") if p]
    return ".".join(parts[:-1])


def _is_named(name: str, prefix: str) -> bool:
    """An encoder parameter kept under its module name (not `onnx::...` or `/scope/...`)."""
    return name.startswith(prefix) and "::" not in name and not name.startswith("/")


def _constants(model: Any, path: Path) -> dict[str, np.ndarray]:
    out = {}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value" and n.output:
            out[n.output[0]] = _array(n.attribute[0].t, path)
    return out


def _name_anonymous(model: Any, inits: dict[str, np.ndarray], prefix: str, path: Path) -> tuple[dict, list[str]]:
    """HF-style names (without `prefix`) for anonymous encoder initializers, and the names
    of initializers outside the encoder scope."""
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    scope_prefix = prefix.rstrip(".")
    mapped: dict[str, np.ndarray] = {}
    unmapped: list[str] = []
    pos_parts: dict[str, np.ndarray] = {}
    for name, arr in inits.items():
        if _is_named(name, prefix):
            continue
        users = consumers.get(name, [])
        inside = [u for u in users if not scope_prefix or _scope(u) == scope_prefix
                  or _scope(u).startswith(scope_prefix + ".")]
        if not inside:
            unmapped.append(name)
            continue
        u = inside[0]
        scope = _scope(u)[len(prefix):] if prefix else _scope(u)
        if u.op_type == "MatMul" and len(u.input) == 2 and u.input[1] == name and arr.ndim == 2:
            bias = next((i for a in consumers.get(next(iter(u.output), ""), []) if a.op_type == "Add"
                         for i in a.input if i.startswith(prefix) and i.endswith(".bias")), None)
            wname = bias[len(prefix):-len(".bias")] if bias else scope
            mapped[f"{wname}.weight"] = np.ascontiguousarray(arr.T)     # MatMul stores (in, out)
            continue
        if scope.startswith("embeddings") and arr.ndim == 3 and arr.shape[0] == 1:
            if u.op_type == "Concat" and arr.shape[1] == 1:
                pos_parts["class"] = arr
                continue
            n_patch = arr.shape[1]
            if u.op_type == "Reshape" and math.isqrt(n_patch) ** 2 == n_patch:
                pos_parts["patch"] = arr
                continue
        raise FormatError(path, f"initializer {name!r} {list(arr.shape)} used by {u.op_type} in "
                                f"{_scope(u) or '<root>'}: unknown layout")
    if pos_parts:
        if set(pos_parts) != {"class", "patch"} or pos_parts["class"].shape[2] != pos_parts["patch"].shape[2]:
            raise FormatError(path, f"position embeddings split into {sorted(pos_parts)} parts: unknown layout")
        mapped["embeddings.position_embeddings"] = np.concatenate([pos_parts["class"], pos_parts["patch"]], axis=1)
    return mapped, unmapped


def _heads(model: Any, consts: dict[str, np.ndarray], prefix: str, dim: int) -> int | None:
    """Heads from the first attention's reshape to (B, T, heads, head_dim): a Concat
    whose two trailing inputs are constants multiplying to dim."""
    want = prefix.rstrip(".") + ".encoder.layer.0.attention"
    for n in model.graph.node:
        if n.op_type != "Concat" or not _scope(n).startswith(want) or len(n.input) < 4:
            continue
        a, b = consts.get(n.input[-2]), consts.get(n.input[-1])
        if a is not None and b is not None and a.size == 1 and b.size == 1 and a.dtype.kind in "iu" \
                and b.dtype.kind in "iu":
            h, hd = int(a.reshape(-1)[0]), int(b.reshape(-1)[0])
            if h > 0 and h * hd == dim:
                return h
    return None


def _eps(model: Any, consts: dict[str, np.ndarray], prefix: str, norm: str) -> float | None:
    """LayerNorm epsilon: the scalar constant added to the variance in layer 0's `norm`."""
    want = f"{prefix.rstrip('.')}.encoder.layer.0.{norm}"
    for n in model.graph.node:
        if n.op_type == "Add" and _scope(n) == want:
            for i in n.input:
                c = consts.get(i)
                if c is not None and c.size == 1 and c.dtype.kind == "f":
                    return float(c.reshape(-1)[0])
    return None


def _activation(model: Any, prefix: str) -> str:
    """exact gelu if layer 0's MLP computes Erf, the tanh approximation if it uses Tanh."""
    want = f"{prefix.rstrip('.')}.encoder.layer.0."
    ops = {n.op_type for n in model.graph.node if (_scope(n) + ".").startswith(want)}
    if "Erf" in ops:
        return "gelu"
    if "Tanh" in ops:
        return "gelu_tanh"
    raise UnsupportedError(f"cannot tell the MLP activation of {want.rstrip('.')} (no Erf or Tanh node)")


def load_onnx_vision(source: str | os.PathLike | Any, n_heads: int | None = None) -> OnnxVision:
    """A ViT/DINOv2 encoder's config and weights (our names) from an ONNX export.
    `n_heads` overrides what the graph says. FormatError for a file we cannot read or an
    initializer of unknown layout; UnsupportedError for an encoder family we do not know."""
    require("onnx", "vision", "ONNX vision weights")
    model, path = read_onnx(source)
    inits = initializers(model, path)
    keys = [k for k in inits if k.endswith("embeddings.patch_embeddings.projection.weight")]
    if not keys:
        raise UnsupportedError(f"{path}: no ViT/DINOv2 patch embedding among the initializers")
    prefix = keys[0][: -len("embeddings.patch_embeddings.projection.weight")]
    hf = {k[len(prefix):]: v for k, v in inits.items() if _is_named(k, prefix)}
    anon, unmapped = _name_anonymous(model, inits, prefix, path)
    hf.update(anon)
    tensors = vision_tensors_from_hf(hf, origin=path)
    config = _infer_config(model, inits, tensors, prefix, path, n_heads)
    return OnnxVision(path, config, tensors, prefix, unmapped)


def _infer_config(model: Any, inits: dict[str, np.ndarray], t: dict[str, np.ndarray], prefix: str, path: Path,
                  n_heads: int | None) -> VisionConfig:
    if "blk.0.ls1" in t and "blk.0.attn_norm.weight" in t:
        family = "dinov2"
    elif "blk.0.attn_norm.weight" in t:
        family = "vit"
    else:
        raise UnsupportedError(f"{path}: cannot tell the encoder family from its tensors")
    need = {"patch_embd.weight": 2, "position_embd": 2, "class_embd": 1, "blk.0.ffn_up.weight": 2}
    missing = [k for k in need if k not in t]
    if missing:
        raise FormatError(path, f"encoder tensors missing after mapping: {', '.join(missing)}")
    for k, rank in need.items():
        if t[k].ndim != rank or 0 in t[k].shape:
            raise FormatError(path, f"{k} has shape {list(t[k].shape)}, expected {rank} non-empty dims")
    d = t["class_embd"].shape[-1]
    n_in = t["patch_embd.weight"].shape[1]
    n_pos = t["position_embd"].shape[0] - 1
    grid = math.isqrt(max(n_pos, 0))
    # the flattened patch weight is (D, C*P*P): C and P come from the 4-D initializer
    _, n_ch, p, _ = inits[prefix + "embeddings.patch_embeddings.projection.weight"].shape
    if n_ch * p * p != n_in or grid * grid != n_pos or n_pos == 0:
        raise FormatError(path, "patch embedding / position embedding shapes are inconsistent")
    layers = {int(m.group(1)) for k in inits for m in [_LAYER_IDX.search(k)] if m}
    n_layers = len(layers)
    if layers != set(range(n_layers)):
        raise FormatError(path, f"encoder layers are not numbered 0..{n_layers - 1}: {sorted(layers)[:8]}...")
    consts = _constants(model, path)
    heads = n_heads or _heads(model, consts, prefix, d)
    if heads is None:
        raise FormatError(path, "cannot find the number of attention heads in the graph; pass n_heads")
    norm = "norm1" if family == "dinov2" else "layernorm_before"
    eps = _eps(model, consts, prefix, norm) or (1e-6 if family == "dinov2" else 1e-12)
    enc = EncoderConfig(dim=d, n_layers=n_layers, n_heads=heads, ffn_dim=t["blk.0.ffn_up.weight"].shape[0],
                        norm_eps=eps, act=_activation(model, prefix), layer_scale=family == "dinov2",
                        ffn_gated="blk.0.ffn_gate.weight" in t)
    if family == "dinov2":
        return VisionConfig("dinov2", enc, grid * p, p, n_ch, pooling="cls", pos_interp_default=True)
    return VisionConfig("vit", enc, grid * p, p, n_ch, pooling="dense_tanh" if "pooler.weight" in t else "none")

"""Vision encoders vs transformers (random weights, odd sizes, eager attention, fp32):
ViTModel, Dinov2Model (MLP and SwiGLU), Dinov2WithRegistersModel, CLIPVisionModel,
SiglipVisionModel; last_hidden_state and pooler_output, at the trained resolution and
with interpolated position embeddings on a non-square patch grid."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from edgeformer.backends import get_backend  # noqa: E402
from edgeformer.encoder_config import VisionConfig  # noqa: E402
from edgeformer.errors import FormatError, InputError, UnsupportedError  # noqa: E402
from edgeformer.formats.tensor_map import vision_tensors_from_hf  # noqa: E402
from edgeformer.models.vision import VisionEncoder, bicubic_matrix  # noqa: E402

COMMON = dict(hidden_size=72, num_hidden_layers=2, num_attention_heads=3, image_size=30, patch_size=6,
              attn_implementation="eager")


def rel_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def randomize(model, seed: int) -> None:
    """Every parameter far from its init: norm weights and layer scales ~1 + N(0, 0.2),
    the rest N(0, 0.2); so a dropped or misplaced tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.2
            ones = ("norm" in name.lower() and name.endswith("weight")) or "lambda1" in name
            p.copy_(1 + noise if ones else noise)


CASES = {
    "vit": lambda: transformers.ViTModel(transformers.ViTConfig(intermediate_size=37, **COMMON)),
    "vit_gelu_tanh": lambda: transformers.ViTModel(transformers.ViTConfig(intermediate_size=37, hidden_act="gelu_new",
                                                                          **COMMON)),
    "dinov2": lambda: transformers.Dinov2Model(transformers.Dinov2Config(mlp_ratio=1, **COMMON)),
    "dinov2_swiglu": lambda: transformers.Dinov2Model(transformers.Dinov2Config(mlp_ratio=2, use_swiglu_ffn=True,
                                                                                **COMMON)),
    "dinov2_registers": lambda: transformers.Dinov2WithRegistersModel(
        transformers.Dinov2WithRegistersConfig(mlp_ratio=1, num_register_tokens=3, **COMMON)),
    "clip": lambda: transformers.CLIPVisionModel(transformers.CLIPVisionConfig(intermediate_size=37, **COMMON)),
    "siglip": lambda: transformers.SiglipVisionModel(transformers.SiglipVisionConfig(intermediate_size=37, **COMMON)),
}
# families whose transformers forward takes interpolate_pos_encoding (DINOv2 always does it)
ASK_INTERP = {"vit", "vit_gelu_tanh", "clip", "siglip"}


def build(case: str, seed: int = 0):
    torch.manual_seed(seed)
    m = CASES[case]().eval()
    randomize(m, seed + 1)
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    cfg = VisionConfig.from_hf(m.config.to_dict())
    return m, VisionEncoder(cfg, vision_tensors_from_hf(sd), get_backend("numpy"))


def hf_forward(m, case, pixels, interpolate):
    kw = {"interpolate_pos_encoding": True} if interpolate and case in ASK_INTERP else {}
    with torch.no_grad():
        out = m(pixel_values=torch.tensor(pixels)[None], **kw)
    pooled = out.pooler_output
    return out.last_hidden_state[0].numpy(), None if pooled is None else pooled[0].numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_vision_matches_transformers(case):
    m, ours = build(case)
    rng = np.random.default_rng(5)
    for shape, interp in (((3, 30, 30), False), ((3, 42, 36), True)):
        pixels = rng.standard_normal(shape).astype(np.float32)
        ref_h, ref_p = hf_forward(m, case, pixels, interp)
        got = ours.forward(pixels, interpolate=interp or None)
        assert got.last_hidden_state.shape == ref_h.shape
        assert rel_err(got.last_hidden_state, ref_h) <= 1e-4, (case, shape)
        assert ref_p is not None and got.pooled is not None
        assert rel_err(got.pooled, ref_p) <= 1e-4, (case, shape)


def test_dinov2_interpolates_by_default_others_refuse():
    m, ours = build("dinov2", 2)
    pixels = np.random.default_rng(1).standard_normal((3, 24, 36)).astype(np.float32)
    ref_h, _ = hf_forward(m, "dinov2", pixels, True)
    assert rel_err(ours.forward(pixels).last_hidden_state, ref_h) <= 1e-4
    _, vit = build("vit", 2)
    with pytest.raises(InputError, match="patch grid"):
        vit.forward(pixels)
    with pytest.raises(InputError):
        vit.forward(pixels[:2])                  # 2 channels
    with pytest.raises(InputError):
        vit.forward(np.zeros((3, 5, 5), np.float32))


def test_bicubic_matrix_matches_torch_interpolate():
    # one axis of F.interpolate on a ramp-free random signal, both kernels, up and down
    rng = np.random.default_rng(0)
    for n_in, n_out in ((5, 7), (7, 3), (37, 16), (4, 4)):
        x = rng.standard_normal((n_in, n_in))
        for aa in (False, True):
            ref = torch.nn.functional.interpolate(torch.tensor(x)[None, None], size=(n_out, n_out), mode="bicubic",
                                                  align_corners=False, antialias=aa)[0, 0].numpy()
            w = bicubic_matrix(n_in, n_out, aa)
            assert np.allclose(w @ x @ w.T, ref, atol=1e-10), (n_in, n_out, aa)


def test_bad_checkpoints():
    m, _ = build("vit", 3)
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    cfg = VisionConfig.from_hf(m.config.to_dict())
    with pytest.raises(UnsupportedError):
        vision_tensors_from_hf({**sd, "embeddings.something_new": np.zeros(3, np.float32)})
    bad = dict(sd)
    bad["embeddings.position_embeddings"] = sd["embeddings.position_embeddings"][:, :-1]
    with pytest.raises(FormatError, match="position_embd"):
        VisionEncoder(cfg, vision_tensors_from_hf(bad), get_backend("numpy"))
    with pytest.raises(UnsupportedError):
        VisionConfig.from_hf({"model_type": "convnext"})


@pytest.mark.parametrize("case,proc_cls,proc_kw", [
    ("dinov2", "BitImageProcessorPil", dict(size={"shortest_edge": 40}, crop_size={"height": 30, "width": 30})),
    ("siglip", "SiglipImageProcessorPil", dict(size={"height": 30, "width": 30})),
])
def test_saved_model_dir_end_to_end(tmp_path, case, proc_cls, proc_kw):
    """save_pretrained (checkpoint names on disk) + preprocessor_config.json -> our loader,
    from an image file, vs transformers' processor + model."""
    from PIL import Image
    from edgeformer.models.vision import encode_image, load_vision
    m, _ = build(case, 7)
    m.save_pretrained(tmp_path)
    proc = getattr(transformers, proc_cls)(**proc_kw)
    proc.save_pretrained(tmp_path)
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(8).integers(0, 256, (45, 61, 3), dtype=np.uint8)).save(img)
    enc, ours_proc = load_vision(tmp_path, get_backend("numpy"))
    got = encode_image(enc, ours_proc, img)
    pixels = proc(images=Image.open(img), return_tensors="np")["pixel_values"][0]
    ref_h, ref_p = hf_forward(m, case, pixels, False)
    assert rel_err(got.last_hidden_state, ref_h) <= 1e-4
    assert rel_err(got.pooled, ref_p) <= 1e-4
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"GIF89a not really")
    with pytest.raises(InputError):
        encode_image(enc, ours_proc, bad)

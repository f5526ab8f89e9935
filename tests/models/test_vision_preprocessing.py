"""Image preprocessing vs transformers' PIL image processors (ViT, BiT/DINOv2, CLIP,
SigLIP) on random images of odd sizes and modes; and bad image files -> InputError."""
from __future__ import annotations

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from edgeformer.errors import ConfigError, InputError  # noqa: E402
from edgeformer.models.image_processing import PRESETS, ImageProcessor, load_image  # noqa: E402

HF = {
    "vit": transformers.ViTImageProcessorPil,
    "bit": transformers.BitImageProcessorPil,
    "clip": transformers.CLIPImageProcessorPil,
    "siglip": transformers.SiglipImageProcessorPil,
}
# small non-default settings too, so size/crop handling is exercised at odd sizes
SMALL = {
    "vit": dict(size={"height": 30, "width": 31}),
    "bit": dict(size={"shortest_edge": 33}, crop_size={"height": 30, "width": 29}),
    "clip": dict(size={"shortest_edge": 31}, crop_size={"height": 31, "width": 31}),
    "siglip": dict(size={"height": 29, "width": 30}),
}


def random_images(seed: int) -> list:
    rng = np.random.default_rng(seed)
    ims = []
    for h, w in ((37, 53), (301, 17), (13, 11), (64, 64), (225, 224)):
        ims.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB"))
    ims.append(Image.fromarray(rng.integers(0, 256, (41, 29, 4), dtype=np.uint8), "RGBA"))
    ims.append(Image.fromarray(rng.integers(0, 256, (23, 47), dtype=np.uint8), "L"))
    return ims


def hf_pixels(proc, image) -> np.ndarray:
    return np.asarray(proc(images=image.convert("RGB") if image.mode == "L" else image,
                           return_tensors="np")["pixel_values"][0])


@pytest.mark.parametrize("name", list(HF))
@pytest.mark.parametrize("small", [False, True])
def test_preprocessing_matches_transformers(name, small):
    kw = SMALL[name] if small else {}
    hf = HF[name](**kw)
    ours = ImageProcessor.from_hf(hf.to_dict()) if small else PRESETS[name]
    if not small:   # the presets are transformers' class defaults
        assert ImageProcessor.from_hf(hf.to_dict()) == ours
    for im in random_images(hash(name) % 1000 + small):
        if name == "vit" and im.mode == "RGBA":
            continue   # ViT's processor does not convert to RGB: it would keep 4 channels
        ref = hf_pixels(hf, im)
        got = ours(im)
        assert got.shape == ref.shape, (name, im.size)
        # Pillow does the resampling in both, and the float steps are the same: bit-exact
        np.testing.assert_array_equal(got, ref, err_msg=f"{name} {im.size} {im.mode}")


def test_numpy_input_equals_pil_input():
    a = np.random.default_rng(3).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    p = PRESETS["clip"]
    assert np.array_equal(p(a), p(Image.fromarray(a)))


def test_bad_images(tmp_path):
    f = tmp_path / "fake.png"
    f.write_text("this is not an image")
    with pytest.raises(InputError, match="not a readable image"):
        load_image(f)
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(good)
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    with pytest.raises(InputError):
        load_image(trunc)
    with pytest.raises(InputError):
        load_image(tmp_path / "missing.jpg")
    assert load_image(good).size == (20, 20)
    with pytest.raises(InputError):
        PRESETS["vit"](np.zeros((5, 5, 3), np.float32))
    with pytest.raises(InputError):
        PRESETS["vit"]("not an image")
    with pytest.raises(ConfigError):
        ImageProcessor({"height": 5})


def test_load_image_decodes_only_the_listed_formats(tmp_path):
    """Photos and web images load; Pillow's other decoders (PCX, SGI, ICO... and EPS,
    which runs Ghostscript) are never tried on a file: InputError."""
    import io
    im = Image.new("RGB", (8, 6), (10, 200, 30))
    for fmt, ok in (("PNG", True), ("WEBP", True), ("PCX", False), ("SGI", False), ("ICO", False)):
        buf = io.BytesIO()
        im.save(buf, format=fmt)
        p = tmp_path / f"x.{fmt.lower()}"
        p.write_bytes(buf.getvalue())
        if ok:
            assert load_image(p).size == (8, 6)
        else:
            with pytest.raises(InputError, match="not a readable image"):
                load_image(p)

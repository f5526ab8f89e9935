"""LLaVA parity: tiny random-weight transformers LlavaForConditionalGeneration models (CLIP
or SigLIP tower, Llama or Gemma text model, odd sizes) saved with save_pretrained, loaded
by `models.vlm`, compared on logits at every position and on greedy generation."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("PIL")

from edgeformer.backends import get_backend  # noqa: E402
from edgeformer.errors import ConfigError, InputError, UnsupportedError  # noqa: E402
from edgeformer.models.vlm import VLMConfig, is_vlm_dir, load_llava  # noqa: E402
from edgeformer.runtime.vlm_engine import load_vlm  # noqa: E402
from edgeformer.runtime.sampler import SamplingParams  # noqa: E402

VOCAB, IMG = 61, 60        # text vocabulary; the image token is its last id
VISION = dict(hidden_size=36, intermediate_size=37, num_hidden_layers=3, num_attention_heads=3, image_size=30,
              patch_size=6, attn_implementation="eager")
TEXT = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=12, attn_implementation="eager")

CASES = {
    # (tower, text, vision_feature_layer, strategy, projector act)
    "clip_llama": ("clip", "llama", -2, "default", "gelu"),
    "clip_llama_layers_full": ("clip", "llama", [0, -1], "full", "gelu"),
    "siglip_gemma": ("siglip", "gemma", -1, "full", "gelu_pytorch_tanh"),
}


def rel_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def build(case: str, seed: int = 0):
    tower, text, layer, strategy, act = CASES[case]
    vc = (transformers.CLIPVisionConfig if tower == "clip" else transformers.SiglipVisionConfig)(**VISION)
    tc = (transformers.LlamaConfig if text == "llama" else transformers.GemmaConfig)(**TEXT)
    cfg = transformers.LlavaConfig(vision_config=vc, text_config=tc, image_token_index=IMG, vision_feature_layer=layer,
                                   vision_feature_select_strategy=strategy, projector_hidden_act=act)
    torch.manual_seed(seed)
    m = transformers.LlavaForConditionalGeneration(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():    # every parameter far from its init, so a misplaced tensor shows
        for name, p in m.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.2
            p.copy_(1 + noise if "norm" in name.lower() and name.endswith("weight") and text != "gemma" else noise)
    m.generation_config.eos_token_id = None      # generate exactly max_new_tokens
    m.generation_config.pad_token_id = 0
    return m


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cache = {}

    def get(case: str):
        if case not in cache:
            d = tmp_path_factory.mktemp(case)
            m = build(case)
            m.save_pretrained(d)
            cache[case] = (m, d)
        return cache[case]
    return get


def hf_logits(m, ids, pixels):
    with torch.no_grad():
        return m(input_ids=torch.tensor([ids]), pixel_values=torch.tensor(pixels)[None]).logits[0].numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_greedy_match_transformers(saved, case):
    m, d = saved(case)
    model, _, _ = load_llava(d, get_backend("numpy"))
    pixels = np.random.default_rng(3).standard_normal((3, 30, 30)).astype(np.float32)
    feats = model.image_features(pixels)
    n = model.config.n_image_tokens
    assert feats.shape == (n, TEXT["hidden_size"])
    ids = [1, 5, 9] + [IMG] * n + [7, 8, 33, 2]
    ref = hf_logits(m, ids, pixels)
    cache = model.decoder.make_cache(128)
    got = model.forward(np.array(ids), cache, [feats])
    assert got.shape == ref.shape
    assert rel_err(got, ref) <= 1e-4, case

    # greedy: HF generate vs our step-by-step decode on the same cache
    with torch.no_grad():
        out = m.generate(input_ids=torch.tensor([ids]), pixel_values=torch.tensor(pixels)[None], max_new_tokens=6,
                         do_sample=False)[0, len(ids):].tolist()
    toks, logits = [], got[-1]
    for _ in range(6):
        toks.append(int(np.argmax(logits)))
        logits = model.forward(np.array(toks[-1:]), cache, last_only=True)[-1]
    assert toks == out


def test_wrong_image_token_count_is_refused(saved):
    _, d = saved("clip_llama")
    model, _, _ = load_llava(d, get_backend("numpy"))
    feats = model.image_features(np.zeros((3, 30, 30), np.float32))
    with pytest.raises(InputError, match="do not match"):
        model.forward(np.array([1, IMG, 3]), model.decoder.make_cache(64), [feats])
    with pytest.raises(InputError, match="image token"):
        model.expand_prompt([1, 2, 3], [feats])
    with pytest.raises(InputError, match="patch grid"):   # the tower's trained size only, as HF
        model.image_features(np.zeros((3, 36, 30), np.float32))


def _tokenizer_files(d):
    """A word-level tokenizer.json covering the whole vocabulary, `<image>` a special
    added token at IMG, `<s>` added as BOS by the post-processor."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, IMG)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<s>", "</s>", "<image>"])
    assert tok.token_to_id("<image>") == IMG
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                         "unk_token": "<unk>"}))


@pytest.mark.parametrize("case", ["clip_llama", "siglip_gemma"])
def test_engine_from_image_file_matches_transformers(saved, case, tmp_path):
    """load_vlm + an image file + a text prompt with <image>: our preprocessing, image-token
    expansion and generation vs transformers' processor pixels and generate()."""
    from PIL import Image
    m, d = saved(case)
    _tokenizer_files(d)
    if case == "clip_llama":
        hf_proc = transformers.CLIPImageProcessorPil(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    else:
        hf_proc = transformers.SiglipImageProcessorPil(size={"height": 30, "width": 30})
    hf_proc.save_pretrained(d)
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (41, 53, 3), dtype=np.uint8)).save(img)
    assert is_vlm_dir(d)
    eng = load_vlm(d, "numpy", n_ctx=96)
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    res = eng.generate("w5 w9 <image> w7 w11", params, images=[img])
    ids = res.prompt_token_ids
    n = eng.vlm.config.n_image_tokens
    assert ids == [1, 5, 9] + [IMG] * n + [7, 11]
    pixels = hf_proc(images=Image.open(img), return_tensors="np")["pixel_values"][0]
    with torch.no_grad():
        ref = m.generate(input_ids=torch.tensor([ids]), pixel_values=torch.tensor(pixels)[None], max_new_tokens=5,
                         do_sample=False)[0, len(ids):].tolist()
    assert res.token_ids == ref
    # same image again: the cached prefix is reused and the answer is the same
    again = eng.generate("w5 w9 <image> w7 w11", params, images=[img])
    assert again.token_ids == ref and again.stats.cached_tokens == len(ids) - 1
    # another image at the same place must not reuse the first image's cache entries
    img2 = tmp_path / "img2.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(img2)
    other = eng.generate("w5 w9 <image> w7 w11", params, images=[img2])
    assert other.stats.cached_tokens == 3
    pixels2 = hf_proc(images=Image.open(img2), return_tensors="np")["pixel_values"][0]
    with torch.no_grad():
        ref2 = m.generate(input_ids=torch.tensor([ids]), pixel_values=torch.tensor(pixels2)[None], max_new_tokens=5,
                          do_sample=False)[0, len(ids):].tolist()
    assert other.token_ids == ref2
    # bad inputs: a file that is not an image; no <image> in the prompt; two for one image
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InputError, match="not a readable image"):
        eng.generate("w5 <image>", params, images=[bad])
    with pytest.raises(InputError, match="0 image token"):
        eng.generate("w5 w9", params, images=[img])
    with pytest.raises(InputError, match="2 image token"):
        eng.generate("<image> w5 <image>", params, images=[img])


def test_llava_pad_to_square_processor(saved, tmp_path):
    """preprocessor_config.json with do_pad (LlavaImageProcessor) -> same pixels as HF."""
    from PIL import Image
    from edgeformer.models.vlm import llava_processor
    _, d = saved("clip_llama")
    hf_proc = transformers.LlavaImageProcessorPil(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30},
                                                  do_pad=True)
    out = tmp_path / "p"
    hf_proc.save_pretrained(out)
    ours = llava_processor(out, VLMConfig.from_hf(json.loads((d / "config.json").read_text())).vision)
    for shape in ((17, 40, 3), (50, 23, 3)):
        im = Image.fromarray(np.random.default_rng(6).integers(0, 256, shape, dtype=np.uint8))
        ref = hf_proc(images=im, return_tensors="np")["pixel_values"][0]
        assert np.array_equal(ours(im), ref), shape


def test_config_errors(saved):
    _, d = saved("clip_llama")
    cfg = json.loads((d / "config.json").read_text())
    with pytest.raises(UnsupportedError):
        VLMConfig.from_hf({**cfg, "model_type": "llava_next"})
    with pytest.raises(UnsupportedError):
        VLMConfig.from_hf({**cfg, "vision_config": {**cfg["vision_config"], "model_type": "vit"}})
    with pytest.raises(ConfigError, match="select_strategy"):
        VLMConfig.from_hf({**cfg, "vision_feature_select_strategy": "cls"})
    with pytest.raises(ConfigError, match="vision_feature_layer"):
        VLMConfig.from_hf({**cfg, "vision_feature_layer": 4})
    with pytest.raises(ConfigError, match="image_token_index"):
        VLMConfig.from_hf({**cfg, "image_token_index": VOCAB})


def test_cli_run_with_image(saved, tmp_path, capsys):
    """`edgeformer run DIR --image F -p ...` prints what VLMEngine.generate returns; a
    non-image file and a text-only model with --image are clear errors (exit 1)."""
    from PIL import Image
    from edgeformer.cli.__main__ import main
    _, d = saved("clip_llama")
    _tokenizer_files(d)
    transformers.CLIPImageProcessorPil(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}
                                       ).save_pretrained(d)
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (33, 30, 3), dtype=np.uint8)).save(img)
    ref = load_vlm(d, "numpy", n_ctx=64).generate("w3 <image> w4", SamplingParams(temperature=0, max_tokens=4,
                                                                                   ignore_eos=True), images=[img])
    argv = ["run", str(d), "--image", str(img), "-p", "w3 <image> w4", "--temp", "0", "-n", "4", "--ignore-eos",
            "--no-stats", "-c", "64"]
    assert main(argv) == 0
    assert capsys.readouterr().out == ref.text + "\n"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    assert main(argv[:3] + [str(bad)] + argv[4:]) == 1
    assert "not a readable image" in capsys.readouterr().err
    assert main(argv[:4] + ["-p", "w3 w4"] + argv[6:]) == 1           # image given, no <image>
    assert "image token" in capsys.readouterr().err
    assert main(["run", str(tmp_path), "--image", str(img), "-p", "x"]) == 1
    assert "vision-language" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["transformers5_in_memory", "llava_hf_v4"])
def test_tensor_name_layouts(saved, tmp_path, layout):
    """Other names of the same tensors: transformers-5 in-memory names (`model.vision_tower.`,
    `model.language_model.`, `lm_head.`) and llava-hf's 4.x checkpoints
    (`vision_tower.vision_model.`, `language_model.model.`, `language_model.lm_head.`)."""
    from safetensors.torch import save_file
    m, d = saved("clip_llama")
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    if layout == "llava_hf_v4":
        ren = (("model.vision_tower.", "vision_tower.vision_model."),
               ("model.language_model.", "language_model.model."),
               ("lm_head.", "language_model.lm_head."), ("model.multi_modal_projector.", "multi_modal_projector."))
        sd = {next((new + k[len(old):] for old, new in ren if k.startswith(old)), k): v for k, v in sd.items()}
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((d / "config.json").read_text())
    model, _, _ = load_llava(tmp_path, get_backend("numpy"))
    pixels = np.random.default_rng(11).standard_normal((3, 30, 30)).astype(np.float32)
    ids = [4] + [IMG] * model.config.n_image_tokens + [6, 13]
    got = model.forward(np.array(ids), model.decoder.make_cache(64), [model.image_features(pixels)])
    assert rel_err(got, hf_logits(m, ids, pixels)) <= 1e-4


def test_chat_with_image(saved, tmp_path):
    """chat(): `<image>` inside a message becomes the image token (as HF processors
    tokenize the rendered template), then generation matches transformers."""
    from PIL import Image
    from edgeformer.formats.tokenizer_load import tokenizer_from_hf
    from edgeformer.runtime.vlm_engine import VLMEngine
    m, d = saved("clip_llama")
    _tokenizer_files(d)
    model, _, proc = load_llava(d, get_backend("numpy"))
    tok = tokenizer_from_hf(d / "tokenizer.json", json.loads((d / "tokenizer_config.json").read_text()))
    tmpl = "{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}{% if add_generation_prompt %}w5{% endif %}"
    eng = VLMEngine(model, tok, proc, tmpl, "numpy", n_ctx=64)
    img = Image.fromarray(np.random.default_rng(12).integers(0, 256, (30, 30, 3), dtype=np.uint8))
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    res = eng.chat([{"role": "user", "content": "<image> w7"}], params, images=[img])
    ids = res.prompt_token_ids
    assert ids == [1, 3] + [IMG] * model.config.n_image_tokens + [7, 4, 5]
    pixels = proc(img)
    with torch.no_grad():
        ref = m.generate(input_ids=torch.tensor([ids]), pixel_values=torch.tensor(pixels)[None], max_new_tokens=4,
                         do_sample=False)[0, len(ids):].tolist()
    assert res.token_ids == ref
    # a text-only turn after it reuses the cache up to the image and stays text-only
    plain = eng.chat([{"role": "user", "content": "w8 w9"}], params)
    assert plain.stats.cached_tokens == 2

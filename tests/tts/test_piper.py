"""The shipped Piper voice (en_US-joe-medium) run by our VITS against onnxruntime on the
same ONNX file: same phoneme ids, same noise (the graph's two RandomNormalLike nodes are
turned into inputs and fed the draws our model made)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from support.speech import needs_espeak

from edgeformer.errors import FormatError, InputError

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

# Measured: relative L2 error 1.7e-5 (deterministic) on "The quick brown fox...": float32
# convolutions summed in a different order over ~20 layers. 1e-4 leaves margin and still
# catches any wrong tensor, scale or padding (those give errors of order 1).
REL_TOL = 1e-4
# a fixed id sequence (Piper layout: ^ _ p _ p _ ... $) so this test needs no espeak-ng:
# "hɐlˈoʊ wˈɜːld." from the voice's own phoneme_id_map
PHONEMES = list("hɐlˈoʊ wˈɜːld.")


def _ids(voice) -> list[int]:
    from edgeformer.tts.phonemize import phoneme_ids
    return phoneme_ids(PHONEMES, voice.phoneme_id_map)


def _ort_session(path, with_noise_inputs: bool):
    from onnx import TensorProto, helper
    m = onnx.load(str(path))
    names = {}
    if with_noise_inputs:
        for n in list(m.graph.node):
            if n.op_type == "RandomNormalLike":
                names["dp" if n.name.startswith("/dp/") else "flow"] = n.output[0]
                m.graph.node.remove(n)
                m.graph.input.append(helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None))
        assert set(names) == {"dp", "flow"}, names
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]), names


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_config_read_from_the_file(joe_voice):
    c = joe_voice.model.config
    # Piper "medium" (piper_train/vits/config.py): resblock "2", kernels 3/5/7, upsample 8,8,4
    assert (c.dim, c.ffn_dim, c.n_heads, c.n_layers, c.window_size, c.flow_dim) == (192, 768, 2, 6, 4, 192)
    assert c.resblock == "2" and c.resblock_kernels == (3, 5, 7)
    assert c.resblock_dilations == ((1, 2), (2, 6), (3, 12))
    assert c.up_rates == (8, 8, 4) and c.up_initial == 256 and joe_voice.sample_rate == 22050


def test_deterministic_waveform_matches_onnxruntime(joe_voice):
    ids = _ids(joe_voice)
    sess, _ = _ort_session(joe_voice.path, with_noise_inputs=False)
    want = sess.run(None, {"input": np.array([ids], np.int64), "input_lengths": np.array([len(ids)], np.int64),
                           "scales": np.array([0.0, 1.0, 0.0], np.float32)})[0].reshape(-1)
    got = joe_voice.model.synthesize_ids(ids, noise_scale=0.0, length_scale=1.0, noise_w=0.0)
    assert got.shape == want.shape
    assert _rel(got, want) <= REL_TOL


def test_long_input_on_cpu_backend_matches_onnxruntime(joe_voice):
    """The cpu backend on ~170 ids: relative attention over several query blocks of the
    blocked attention kernel, Numba convs, the whole decoder."""
    from edgeformer.backends import get_backend
    from edgeformer.models import vits
    from edgeformer.tts.piper import load_piper_voice
    from edgeformer.tts.phonemize import phoneme_ids
    ids = phoneme_ids(PHONEMES * 6, joe_voice.phoneme_id_map)
    assert len(ids) > 2 * vits.REL_BLOCK
    sess, _ = _ort_session(joe_voice.path, with_noise_inputs=False)
    want = sess.run(None, {"input": np.array([ids], np.int64), "input_lengths": np.array([len(ids)], np.int64),
                           "scales": np.array([0.0, 1.0, 0.0], np.float32)})[0].reshape(-1)
    voice = load_piper_voice(joe_voice.path, backend=get_backend("cpu"))
    got = voice.model.synthesize_ids(ids, noise_scale=0.0, length_scale=1.0, noise_w=0.0)
    assert got.shape == want.shape
    assert _rel(got, want) <= REL_TOL


def test_noisy_waveform_matches_onnxruntime_with_the_same_noise(joe_voice):
    ids = _ids(joe_voice)
    draws = []
    rng = np.random.default_rng(3)

    def noise(shape):
        draws.append(rng.standard_normal(shape, dtype=np.float32))
        return draws[-1]

    scales = (0.667, 1.2, 0.8)     # Piper's noise_scale, length_scale, noise_w
    got = joe_voice.model.synthesize_ids(ids, noise_scale=scales[0], length_scale=scales[1], noise_w=scales[2],
                                         noise=noise)
    sess, names = _ort_session(joe_voice.path, with_noise_inputs=True)
    want = sess.run(None, {"input": np.array([ids], np.int64), "input_lengths": np.array([len(ids)], np.int64),
                           "scales": np.array(scales, np.float32),
                           names["dp"]: draws[0][None], names["flow"]: draws[1][None]})[0].reshape(-1)
    assert got.shape == want.shape
    assert _rel(got, want) <= REL_TOL


@needs_espeak
def test_synthesize_text(joe_voice):
    audio, sr = joe_voice.synthesize("Hi. Go!", seed=1)
    # two sentences with 0.2 s between them, each a whole number of 256-sample frames
    assert sr == 22050 and audio.dtype == np.float32
    gap = int(0.2 * sr)
    assert (audio.size - gap) % 256 == 0
    assert np.abs(audio).max() <= 1.0 and np.abs(audio).max() > 0.05
    again, _ = joe_voice.synthesize("Hi. Go!", seed=1)
    np.testing.assert_array_equal(audio, again)


@needs_espeak
@pytest.mark.parametrize("text", ["", "   ", "...!!", "?!", "\ue000\u200b"])
def test_text_without_phonemes_is_input_error(joe_voice, text):
    with pytest.raises(InputError):
        joe_voice.synthesize(text)


def test_bad_voice_files(tmp_path):
    from edgeformer.tts.piper import load_piper_voice
    with pytest.raises(InputError):
        load_piper_voice(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not an onnx model" * 10)
    with pytest.raises(FormatError):                 # no .onnx.json next to it
        load_piper_voice(junk)
    (tmp_path / "junk.onnx.json").write_text(json.dumps({"audio": {"sample_rate": 22050},
                                                         "phoneme_id_map": {"_": [0]}}))
    with pytest.raises(FormatError):                 # the model itself is unreadable
        load_piper_voice(junk)
    (tmp_path / "junk.onnx.json").write_text("{not json")
    with pytest.raises(FormatError):
        load_piper_voice(junk)


def test_onnx_without_vits_weights_is_format_error(tmp_path):
    from onnx import TensorProto, helper

    from edgeformer.tts.piper import load_piper_voice
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    p = tmp_path / "other.onnx"
    onnx.save(helper.make_model(g), str(p))
    (tmp_path / "other.onnx.json").write_text(json.dumps({"audio": {"sample_rate": 16000},
                                                          "phoneme_id_map": {"_": [0], "^": [1], "$": [2]}}))
    with pytest.raises(FormatError, match="enc_p.emb.weight"):
        load_piper_voice(p)

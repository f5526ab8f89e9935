"""The device catalog: it loads, every figure is sourced or flagged, a few figures match
the numbers written in their sources, and malformed files fail with clear errors."""
from __future__ import annotations

import re
import textwrap

import pytest

from edgeformer.errors import ConfigError, UnsupportedError
from edgeformer.perf.device_spec import (CATALOG_DIR, UNITS, get_device, load_catalog,
                                         load_catalog_file)


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def test_catalog_covers_the_device_classes(catalog):
    assert len(catalog) >= 15
    assert {d.kind for d in catalog.values()} == {"phone", "laptop", "edge", "gpu", "cpu"}
    for name in ("apple_a17_pro", "apple_a18_pro", "snapdragon_8_gen3", "snapdragon_8_elite",
                 "google_tensor_g3", "google_tensor_g4", "dimensity_9300", "apple_m2",
                 "apple_m4_max", "raspberry_pi_5", "jetson_orin_nano_8gb",
                 "jetson_agx_orin_64gb", "rtx_4090", "l4", "a100_sxm_80gb", "h100_sxm",
                 "h200_sxm", "ryzen9_7950x", "epyc_9654"):
        assert name in catalog, name


def test_every_figure_has_a_source_or_an_estimate_reason(catalog):
    n_sourced = 0
    for dev in catalog.values():
        figs = dev.figures()
        assert {"mem_bw", "mem_bytes"} <= set(figs)
        assert any(k.startswith("peak.") for k in figs)
        for key, fig in figs.items():
            where = f"{dev.name}.{key}"
            assert fig.source or (fig.estimate and fig.reason), where
            if fig.source:
                n_sourced += 1
                # a source names a document and where it is, as text
                assert re.search(r"https?://\S+", fig.source), where
            if key.startswith("peak."):
                assert fig.dense is True, where
            else:
                assert fig.dense is None, where
    assert n_sourced >= 60


def _close(a: float, b: float, rel: float = 1e-9) -> bool:
    return abs(a - b) <= rel * abs(b)


def test_figures_match_their_sources(catalog):
    # Numbers as written in the cited pages.
    assert _close(catalog["h100_sxm"].mem_bw.si, 3.35e12)          # "3.35 TB/s"
    assert _close(catalog["rtx_4090"].mem_bw.si, 1008e9)           # "1008 GB/s"
    assert _close(catalog["a100_sxm_80gb"].mem_bw.si, 2039e9)      # "2,039GB/s"
    assert _close(catalog["h200_sxm"].mem_bw.si, 4.8e12)           # "4.8 TB/s"
    assert _close(catalog["apple_m4_max"].mem_bw.si, 546e9)        # "546GB/s"
    assert _close(catalog["apple_m4_pro"].mem_bw.si, 273e9)        # "273GB/s"
    assert _close(catalog["l4"].mem_bw.si, 300e9)                  # "300 GB/s"
    assert _close(catalog["h100_sxm"].mem_bytes.si, 80 * 2**30)
    # Sparse datasheet figures are halved: H100 FP16 "1978.9" sparse, L4 FP16 "242".
    assert _close(2 * catalog["h100_sxm"].peak("fp16"), 1978.8e12, rel=1e-3)
    assert _close(2 * catalog["l4"].peak("fp16"), 242e12, rel=1e-3)
    assert _close(2 * catalog["a100_sxm_80gb"].peak("int8"), 1248e12)
    assert "halved" in catalog["h100_sxm"].peak_flops[("gpu", "fp16")].note
    # Derived bandwidths follow the arithmetic in their notes: MT/s x bus bytes.
    assert _close(catalog["raspberry_pi_5"].mem_bw.si, 4267e6 * 4, rel=2e-3)
    assert _close(catalog["snapdragon_8_gen3"].mem_bw.si, 9600e6 * 8)
    assert _close(catalog["ryzen9_7950x"].mem_bw.si, 2 * 8 * 5200e6)
    # H200 is "+43%" bandwidth over H100 on the same compute.
    assert _close(catalog["h200_sxm"].mem_bw.si / catalog["h100_sxm"].mem_bw.si, 1.43, rel=5e-3)
    assert catalog["h200_sxm"].peak("fp16") == catalog["h100_sxm"].peak("fp16")


def test_units_are_consistent(catalog):
    for dev in catalog.values():
        assert 1e9 <= dev.mem_bw.si <= 10e12, dev.name
        assert 2**30 <= dev.mem_bytes.si <= 8 * 2**40, dev.name
        if dev.power_w is not None:
            assert 1 <= dev.power_w.si <= 1000, dev.name
        for (unit, dtype), fig in dev.peak_flops.items():
            assert 1e9 <= fig.si <= 10e15, (dev.name, unit, dtype)
            assert fig.unit in UNITS["throughput"], (dev.name, unit, dtype)
        for unit in dev.units:
            p = {d: dev.peak(d, unit) for d in ("fp32", "fp16", "int8", "int4")}
            if p["fp16"] and p["fp32"]:
                assert p["fp16"] >= p["fp32"], (dev.name, unit)
            if p["int8"] and p["fp16"]:
                assert p["int8"] >= p["fp16"], (dev.name, unit)
            if p["int4"] and p["int8"]:
                assert p["int4"] >= p["int8"], (dev.name, unit)
    # The well-known H100 ridge point: ~295 FLOP/byte at dense FP16.
    h100 = catalog["h100_sxm"]
    assert 290 < h100.peak("fp16") / h100.mem_bw.si < 300


def test_get_device_normalizes_and_suggests():
    assert get_device("H100-SXM").name == "h100_sxm"
    assert get_device("rtx 4090").name == "rtx_4090"
    with pytest.raises(UnsupportedError, match="did you mean 'h100_sxm'") as e:
        get_device("h100_sx")
    assert "raspberry_pi_5" in str(e.value)
    with pytest.raises(UnsupportedError, match="unknown device 'tpu_v9'"):
        get_device("tpu_v9")


GOOD = """
[devices.toy]
display_name = "Toy"
kind = "edge"
default_unit = "cpu"
mem_bw = { value = 10, unit = "GB/s", source = "Toy datasheet - https://example.org/toy" }
mem_bytes = { value = 1, unit = "GiB", estimate = true, reason = "guess" }
peak.cpu.fp32 = { value = 5, unit = "GFLOPS", dense = true, source = "Toy datasheet - https://example.org/toy" }
"""


def _write(tmp_path, text, name="toy.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_good_minimal_file_loads(tmp_path):
    dev = load_catalog_file(_write(tmp_path, GOOD))["toy"]
    assert dev.mem_bw.si == 10e9 and dev.peak("fp32") == 5e9 and dev.power_w is None


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.replace('kind = "edge"', 'kind = "edge'), r"not valid TOML"),
    (lambda s: s.replace('unit = "GB/s", source = "Toy datasheet - https://example.org/toy"',
                         'unit = "GB/s"'),
     r"devices\.toy\.mem_bw: figure has no source"),
    (lambda s: s.replace("value = 10,", "value = -10,"),
     r"devices\.toy\.mem_bw: value must not be negative"),
    (lambda s: s.replace("peak.cpu.fp32", "peak.cpu.fp17"),
     r"devices\.toy\.peak\.cpu\.fp17: unknown dtype"),
    (lambda s: s.replace("peak.cpu.fp32", "peak.tpu.fp32"),
     r"devices\.toy\.peak\.tpu: unknown compute unit"),
    (lambda s: s.replace('unit = "GB/s", ', ""), r"devices\.toy\.mem_bw: missing 'unit'"),
    (lambda s: s.replace('unit = "GB/s"', 'unit = "TFLOPS"'),
     r"devices\.toy\.mem_bw: unit 'TFLOPS' is not a bandwidth unit"),
    (lambda s: s.replace("dense = true", "dense = false"),
     r"peak\.cpu\.fp32: throughputs must say dense = true"),
    (lambda s: s.replace(', reason = "guess"', ""), r"mem_bytes: estimate = true needs a reason"),
    (lambda s: s + 'colour = "red"\n', r"devices\.toy: unknown key\(s\) \['colour'\]"),
    (lambda s: s.replace('mem_bw = { value = 10,', 'mem_bw = { valu = 10,'),
     r"mem_bw: unknown key\(s\) \['valu'\]"),
    (lambda s: s.replace('default_unit = "cpu"', 'default_unit = "gpu"'),
     r"default_unit: 'gpu' has no peak figures"),
    (lambda s: s.replace('default_unit = "cpu"\n', ""), r"missing required key 'default_unit'"),
    (lambda s: s.replace("[devices.toy]", "[devices.Toy-Board]"), r"lower_snake_case"),
])
def test_malformed_files_name_file_and_key(tmp_path, edit, match):
    p = _write(tmp_path, edit(GOOD))
    with pytest.raises(ConfigError, match=match) as e:
        load_catalog(p)
    assert str(p) in str(e.value)


def test_duplicate_device_across_files(tmp_path):
    _write(tmp_path, GOOD, "a.toml")
    _write(tmp_path, GOOD, "b.toml")
    with pytest.raises(ConfigError, match=r"b\.toml: device 'toy' already defined in .*a\.toml"):
        load_catalog(tmp_path)


def test_packaged_catalog_dir_has_only_valid_files():
    files = sorted(CATALOG_DIR.glob("*.toml"))
    assert len(files) >= 4
    for f in files:
        assert load_catalog_file(f)

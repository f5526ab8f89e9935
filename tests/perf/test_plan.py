"""`perf.plan` / `edgeformer plan`: golden predictions, budgets, ranking, PNGs, errors."""
from __future__ import annotations

import pytest

from edgeformer.cli.__main__ import main
from edgeformer.errors import ConfigError, InputError, UnsupportedError
from edgeformer.perf.device_spec import get_device
from edgeformer.perf.memory import estimate
from edgeformer.perf.plan import Budgets, plan
from edgeformer.perf.roofline import predict
from edgeformer.perf.trace_model import trace_decoder
from edgeformer.perf.validate import DIMS

# GOLDEN predictions (default Calibration, packaged catalog). A change to op costs, the
# decoder's op list, the roofline, the catalog or the memory model that moves any of
# them by more than 1 % must update these numbers on purpose, saying why.
# (model dims, weight qtype, device, prompt, context) -> (prefill s, decode tok/s, peak bytes),
# priced on the cpu backend's op list (q|k|v and gate|up fused).
GOLDEN = [
    (("smollm2-135m", "Q4_0", "raspberry_pi_5", 128, 1024), (0.08909729, 86.78210, 172811520)),
    (("qwen2.5-0.5b", "Q8_0", "apple_m2", 512, 2048), (0.17310476, 113.52733, 657502720)),
    (("llama3.2-1b", "Q4_K", "h100_sxm", 2048, 4096), (0.01512210, 739.87589, 1181982848)),
    (("llama3.2-1b", "Q4_0", "snapdragon_8_gen3", 64, 512), (0.12212920, 76.73308, 769302656)),
]


@pytest.mark.parametrize("key,want", GOLDEN, ids=[g[0][2] for g in GOLDEN])
def test_golden_predictions(key, want):
    model, q, dev_name, prompt, ctx = key
    tr = trace_decoder(DIMS[model], prompt, ctx, qtype=q, backend="cpu")
    dev = get_device(dev_name)
    got = (predict(tr.prefill, dev).total_s, 1 / predict(tr.decode, dev).total_s, estimate(tr).total)
    for g, w in zip(got, want):
        assert g == pytest.approx(w, rel=0.01)


SMALL = DIMS["smollm2-135m"]


def test_plan_ranks_and_marks_budgets():
    res = plan(SMALL, Budgets(latency_ms=20, memory_gb=2, power_w=30), qtypes=["Q4_0", "Q8_0"],
               devices=["raspberry_pi_5", "apple_m2", "h100_sxm", "snapdragon_8_gen3"])
    assert len(res.plans) == 8
    ok = [p for p in res.plans if p.meets]
    assert ok and res.plans[:len(ok)] == ok                      # feasible first
    assert [p.decode_s for p in ok] == sorted(p.decode_s for p in ok)
    h100 = [p for p in res.plans if p.device.name == "h100_sxm"]
    assert all(p.binding == "power" and not p.meets for p in h100)
    for p in ok:
        assert p.binding in ("compute", "bandwidth", "overhead")
        # Q4_0 reads fewer weight bytes than Q8_0: faster decode on the same device
    by = {(p.device.name, p.qtype): p for p in res.plans}
    assert by[("raspberry_pi_5", "Q4_0")].decode_s < by[("raspberry_pi_5", "Q8_0")].decode_s


def test_impossible_budgets_name_the_binding_resource():
    res = plan(SMALL, Budgets(memory_gb=0.01), qtypes=["Q4_0"], devices=["raspberry_pi_5", "apple_m2"])
    assert not res.feasible and "memory binds" in res.verdict()
    res = plan(SMALL, Budgets(latency_ms=0.001), qtypes=["Q4_0"], devices=["raspberry_pi_5"])
    assert not res.feasible and "bandwidth" in res.verdict()
    with pytest.raises(InputError):
        Budgets(latency_ms=-1)


def test_unknown_device_and_malformed_catalog(tmp_path):
    with pytest.raises(UnsupportedError, match="unknown device"):
        plan(SMALL, devices=["no_such_board"])
    bad = tmp_path / "bad.toml"
    bad.write_text('[devices.x]\ndisplay_name = "X"\nkind = "edge"\ndefault_unit = "cpu"\n'
                   'mem_bw = { value = 10, unit = "GB/s" }\nmem_bytes = { value = 1, unit = "GiB", source = "s" }\n'
                   'peak.cpu.fp32 = { value = 1, unit = "TFLOPS", dense = true, source = "s" }\n')
    with pytest.raises(ConfigError, match="mem_bw"):
        plan(SMALL, catalog=bad)


def test_plan_cli_table_and_pngs(tmp_path, capsys):
    from tests.conftest import shipped_path
    shipped_path("smollm2-135m-instruct")
    rc = main(["plan", "--latency-ms", "50", "--memory-gb", "1", "--power-w", "30", "--top", "5",
               "--devices", "raspberry_pi_5", "apple_m2", "jetson_orin_nano_8gb", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "raspberry_pi_5" in out and "binds" in out and "meet the budgets" in out
    for name in ("roofline.png", "context.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    rc = main(["plan", "--memory-gb", "0.001", "--no-plots", "--devices", "apple_m2"])
    assert rc == 3 and "memory binds" in capsys.readouterr().out
    assert main(["plan", "--devices", "nope", "--no-plots"]) == 1
    assert "unknown device" in capsys.readouterr().err

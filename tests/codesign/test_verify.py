"""`codesign --verify`: no rank correlation from fewer than 8 candidates, and the check
predicts and measures the way `perf validate` does (fresh-process `measure_worker`,
`predict_row` with the host calibration's backend, the calibrated setup), judging
nothing on a busy machine."""
from __future__ import annotations

import pytest

from edgeformer.cli.__main__ import build_parser, main
from edgeformer.codesign import verify as ver
from edgeformer.codesign.search import search
from edgeformer.codesign.space import SearchSpace
from edgeformer.errors import InputError
from edgeformer.perf import busy, clock
from edgeformer.perf import calibrate as cal
from edgeformer.perf import validate as val

SMALL = SearchSpace(layers=(2, 4), dims=(64, 128), head_dims=(32,), kv_groups=(1, 2), ffn_mults=(2.0, 3.0),
                    ffn_round=32, vocabs=(256,), tied=(True, False), qtypes=("Q8_0",), kv_dtypes=("f16",),
                    params=(1e3, 5e6))


pytestmark = pytest.mark.usefixtures("perf_setup_restored")


def test_fewer_than_8_candidates_is_refused(capsys):
    assert ver.MIN_TAU_CANDIDATES == 8
    assert build_parser().parse_args(["codesign", "--device", "host"]).verify_n == 8
    rc = main(["codesign", "--device", "raspberry_pi_5", "--params", "20M..60M", "--max-candidates", "10",
               "--qtypes", "Q8_0", "--kv", "f16", "--no-plots", "--verify", "--verify-n", "2"])
    err = capsys.readouterr().err
    assert rc == 1 and "fewer than 8 candidates" in err and "--verify-n 2" in err
    with pytest.raises(InputError):
        ver.check_n(7)
    ver.check_n(8)


def test_too_few_small_candidates_refused_before_building(monkeypatch, tmp_path):
    res = search("raspberry_pi_5", SMALL, prompt_len=8, context_len=32)
    def boom(*a, **k):
        raise AssertionError("nothing may be built when the check is refused")
    monkeypatch.setattr(ver, "build_candidate", boom)
    tiny = min(s.cand.params for s in res.scored)
    with pytest.raises(InputError, match=r"only \d distinct candidates"):
        ver.verify(res, tiny, 8, 32, tmp_path)


def _host():
    from edgeformer.perf.bandwidth import host_spec
    from edgeformer.perf.host_model import HostModel
    from edgeformer.perf.roofline import Calibration
    return HostModel(host_spec(), Calibration(), {}, "numpy", measurements=cal.Measurements("numpy", "cpu"))


def _fake_measure(monkeypatch, factor):
    """`run_worker` measuring `factor` x the validate prediction of the same file."""
    calls = []

    def worker(path, backend, context, max_seq_len, run_prefill, timeout, batch=1, clock="wall"):
        calls.append((backend, context, run_prefill, clock))
        p = val.predict_row(path, context, max_seq_len, _host(), None, backend, 5, False)
        return {"decode_s": factor / p["decode"], "steps": 5, "ttft_s": None, "peak_rss": 1e8}
    monkeypatch.setattr(ver, "run_worker", worker)
    return calls


def test_verify_measures_and_predicts_as_validate(monkeypatch, tmp_path):
    res = search("raspberry_pi_5", SMALL, prompt_len=8, context_len=32)
    calls = _fake_measure(monkeypatch, 1.04)
    monkeypatch.setattr(busy, "read_proc_stat", lambda: (0.0, float(len(calls))))     # quiet
    lines = []
    r = ver.verify(res, 5e6, 8, 32, tmp_path, echo=lines.append, host=_host(), clock="cpu")
    assert len(r.rows) == 8 == len(lines) and len(list(tmp_path.glob("codesign_*.gguf"))) == 8
    # the calibration's backend, no prefill, the clock passed in
    assert all(c == ("numpy", 32, False, "cpu") for c in calls)
    assert all(row.ape == pytest.approx(100 * 0.04 / 1.04) for row in r.rows)
    assert r.tau == pytest.approx(1.0) and r.latency_verdict == "meets" and r.tau_verdict == "meets"
    assert r.busy is None
    text = "\n".join(ver.summary_lines(r))
    assert "n=8" in text and "MISSES" not in text and "busy" not in text


def test_verify_on_a_busy_machine_is_not_judged(monkeypatch, tmp_path):
    res = search("raspberry_pi_5", SMALL, prompt_len=8, context_len=32)
    _fake_measure(monkeypatch, 5.9)                     # the 67 ms predicted / 392 ms measured
    ticks = iter(range(0, 10**9, 1000))
    monkeypatch.setattr(busy, "read_proc_stat", lambda: (float(next(ticks)), 1.0))
    r = ver.verify(res, 5e6, 8, 32, tmp_path, echo=lambda s: None, host=_host())
    assert r.latency_verdict == val.NOT_JUDGED and r.busy
    lines = ver.summary_lines(r)
    assert lines[-1].startswith("machine busy: results not judged") and not any("MISSES" in x for x in lines)
    # quiet, the same 490 % error is a miss
    monkeypatch.setattr(busy, "read_proc_stat", lambda: (0.0, 1.0))
    r = ver.verify(res, 5e6, 8, 32, tmp_path, echo=lambda s: None, host=_host())
    assert r.latency_verdict == "MISSES" and r.busy is None


def test_codesign_host_uses_the_calibrated_setup(monkeypatch, capsys):
    seen = {}
    import edgeformer.codesign.search as srch

    def fake_search(device, *a, **k):     # no host calibration in a unit test
        seen["setup"] = (clock.threads(), k.get("clock"))
        return search("raspberry_pi_5", SMALL, prompt_len=8, context_len=32)
    monkeypatch.setattr(srch, "search", fake_search)
    assert main(["codesign", "--device", "host", "--no-plots", "--top", "2"]) == 0
    assert seen["setup"] == (clock.CALIBRATED_THREADS, clock.CALIBRATED_CLOCK) == (1, "cpu")

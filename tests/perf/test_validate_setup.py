"""`perf validate` without flags measures in the setup its calibration and the shipped
numbers were made with, and a busy machine gets "machine busy: results not judged"
instead of a MISSES made from other processes' noise (`perf.busy`)."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgeformer.cli.__main__ import build_parser, main
from edgeformer.perf import busy, clock, runner
from edgeformer.perf import calibrate as cal
from edgeformer.perf import validate as val

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("perf_setup_restored")


def _row(pred_decode, decode, others=None, setup="--threads 1 --clock cpu"):
    return val.Row("m", "Q8_0", 128, 1, 0.1, 1280.0, pred_decode, 100e6, 0.1, 1280.0, decode, 100e6, 5,
                   "bandwidth", others, setup)


def test_defaults_are_the_calibrated_setup():
    assert (clock.CALIBRATED_THREADS, clock.CALIBRATED_CLOCK) == (1, "cpu")
    # the setup BENCHMARKS.md's performance-model table was measured with
    assert "edgeformer perf validate --threads 1 --clock cpu" in (ROOT / "BENCHMARKS.md").read_text()
    p = build_parser()
    for argv in (["perf", "validate"], ["perf", "calibrate"], ["perf", "trace"],
                 ["codesign", "--device", "host"]):
        a = p.parse_args(argv)
        assert (a.threads, a.clock) == (None, None), argv      # None = the calibrated setup
    assert clock.use_setup(None, None) == (1, "cpu") and clock.threads() == 1
    assert clock.setup_name("cpu") == "--threads 1 --clock cpu"
    # the clock travels as an argument, never through the environment
    assert runner.worker_env()["NUMBA_NUM_THREADS"] == "1" and "EDGEFORMER_PERF_CLOCK" not in runner.worker_env()
    # other setups stay selectable: wall clock alone keeps the thread count; > 1 thread means wall
    assert clock.use_setup(None, "wall") == (None, "wall")
    from edgeformer.errors import InputError
    with pytest.raises(InputError):
        clock.use_setup(1, "sundial")
    import numba
    if numba.config.NUMBA_NUM_THREADS >= 2:
        assert clock.use_setup(2, None) == (2, "wall") and clock.threads() == 2
        with pytest.raises(InputError):           # CPU time sums threads: one only
            clock.use_setup(2, "cpu")


def test_validate_cli_measures_in_the_calibrated_setup(monkeypatch, capsys):
    seen = {}

    def fake_grid(quick, backend, budget, **k):
        seen["setup"] = (clock.threads(), k.get("clock"))
        return [_row(100.0, 98.0, 0.01)]

    def fake_calibrate(*a, **k):
        seen["calibration"] = k.get("clock")
        return type("H", (), {"backend": "cpu", "measurements": None})
    monkeypatch.setattr(val, "run_grid", fake_grid)
    monkeypatch.setattr(cal, "calibrate", fake_calibrate)
    assert main(["perf", "validate", "--quick"]) == 0
    assert seen == {"setup": (1, "cpu"), "calibration": "cpu"}
    out = capsys.readouterr().out
    assert "measured with --threads 1 --clock cpu; predicted with the --threads 1 --clock cpu calibration" in out
    assert "meets" in out and "MISSES" not in out and "busy" not in out


def test_busy_machine_is_not_judged():
    bad = [_row(100.0, 30.0, 1.4), _row(50.0, 20.0, 1.2)]         # 70 % decode errors, beside 1.3 cores
    lines = val.verdict_lines(bad, cores=2)
    assert not any("MISSES" in x for x in lines)
    assert any(val.NOT_JUDGED in x for x in lines)
    assert lines[-1].startswith("machine busy: results not judged")
    assert "1.30 of 2 cores" in lines[-1]
    # the same errors on a quiet machine are misses
    quiet = [_row(100.0, 30.0, 0.02), _row(50.0, 20.0, 0.05)]
    lines = val.verdict_lines(quiet, cores=2)
    assert any("MISSES" in x for x in lines) and not any("busy" in x for x in lines)
    # unknown load (rows from an older --json): judged as before
    assert any("MISSES" in x for x in val.verdict_lines([_row(100.0, 30.0)], cores=2))
    # a calibration measured on a busy machine makes misses unjudgeable too
    lines = val.verdict_lines(quiet, calib_others=1.5, cores=2)
    assert "calibrate --refresh" in lines[-1] and not any("MISSES" in x for x in lines)
    # met targets stay "meets" on a busy machine (noise rarely lands on the model)
    good = [_row(100.0, 98.0, 1.4)]
    lines = val.verdict_lines(good, cores=2)
    assert "meets" in lines[0] and lines[-1].startswith("note: machine busy")


def _fake_grid_deps(monkeypatch, tmp_path):
    """run_grid without models, calibration or worker processes: a 70 % decode error."""
    monkeypatch.setattr(val, "model_path", lambda name, q: tmp_path / f"{name}_{q}.gguf")
    monkeypatch.setattr(val, "run_worker", lambda *a, **k: {"ttft_s": 0.1, "decode_s": 1 / 30.0, "steps": 5,
                                                             "peak_rss": 100e6})
    monkeypatch.setattr(val, "predict_row", lambda *a, **k: {"ttft": 0.1, "prefill": 1280.0, "decode": 100.0,
                                                             "peak": 100e6, "bound": "bandwidth"})
    host = type("H", (), {"backend": "cpu", "measurements": None})
    monkeypatch.setattr(cal, "calibrate", lambda *a, **k: host)
    monkeypatch.setattr(val, "calibrate", lambda *a, **k: host)
    monkeypatch.setattr(val, "calibrate_memory", lambda *a, **k: None)


def test_validate_prints_busy_verdict_under_injected_load(monkeypatch, tmp_path, capsys):
    _fake_grid_deps(monkeypatch, tmp_path)
    ticks = iter(range(0, 10**9, 1000))
    # 1000 busy CPU-seconds between readings (more than ours): other processes take every core
    monkeypatch.setattr(busy, "read_proc_stat", lambda: (float(next(ticks)), 1.0))
    assert main(["perf", "validate", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "machine busy: results not judged" in out and "MISSES" not in out
    assert out.count(val.NOT_JUDGED) >= 1


def test_validate_still_misses_on_a_quiet_machine(monkeypatch, tmp_path, capsys):
    _fake_grid_deps(monkeypatch, tmp_path)
    ticks = iter(range(10**6))
    monkeypatch.setattr(busy, "read_proc_stat", lambda: (0.0, float(next(ticks))))   # nothing busy
    assert main(["perf", "validate", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "MISSES" in out and "busy" not in out


def test_cpu_monitor_counts_other_processes():
    stats = iter([(100.0, 50.0), (103.0, 54.0)])      # 3 busy CPU-s over 2 s of wall time
    owns = iter([10.0, 11.0])                          # 1 of them ours
    walls = iter([0.0, 2.0])
    m = busy.CpuMonitor(stat=lambda: next(stats), own=lambda: next(owns), clock=lambda: next(walls))
    with m:
        pass
    assert m.load.others_cores == pytest.approx(1.0) and m.load.own_cores == pytest.approx(0.5)
    assert m.load.busy and m.load.source == "/proc/stat"
    # no /proc/stat: the load average less our own share
    owns, walls = iter([0.0, 1.0]), iter([0.0, 2.0])
    m = busy.CpuMonitor(stat=lambda: None, own=lambda: next(owns), loadavg=lambda: 0.7, clock=lambda: next(walls))
    assert m.start().stop().others_cores == pytest.approx(0.2) and not m.load.busy
    assert busy.CpuMonitor(stat=lambda: None, loadavg=lambda: None).start().stop().others_cores is None
    # the real counters: a number of cores, or unknown
    real = busy.CpuMonitor().start().stop()
    assert real.others_cores is None or 0.0 <= real.others_cores <= real.cores


def test_calibration_records_the_machine_load():
    m = cal.Measurements("numpy", "cpu", others_cores=1.2)
    assert cal.calibration_busy(m)
    assert not cal.calibration_busy(cal.Measurements("numpy", "cpu", others_cores=0.1))
    assert not cal.calibration_busy(cal.Measurements("numpy", "cpu"))          # an older cache: unknown
    # a cache written before the field existed still loads
    raw = {k: v for k, v in cal.Measurements("numpy", "cpu").__dict__.items() if k != "others_cores"}
    assert cal.Measurements(**raw).others_cores is None

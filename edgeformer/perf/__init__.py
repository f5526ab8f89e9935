"""Performance model: device catalog (`device_spec`), roofline prediction over traced op
records (`roofline`), host microbenchmarks (`bandwidth`).

The modules form a one-way order: each imports only modules above it in this list.

1. `clock`: named clocks, the timing loop, the measuring setup (threads + clock)
2. `busy`: other processes' CPU use while we measure
3. `device_spec`: the device catalog (data only; "host" is measured in `bandwidth`)
4. `roofline`: pricing op records on a DeviceSpec
5. `plots`: PNGs of rooflines, curves and Pareto fronts (matplotlib)
6. `bandwidth`: host microbenchmarks -> this machine's DeviceSpec; `device_or_host`
7. `calib_tables`: measured GEMM / attention / fused-decode / prefill tables
8. `host_model`: the calibrated roofline of this machine
9. `trace_model`: null-backend traces of a decoder
10. `calibrate`: microbenchmarks + fit -> HostModel, cached per setup
11. `runner`: one measurement in a fresh process (`measure_worker`, RSS readers)
12. `memory`: peak-memory estimate and its host calibration
13. `validate`, `plan`, `profile`: predicted vs measured, deployment planning, per-op profile
"""
from edgeformer.perf.device_spec import DeviceSpec, Figure, get_device, load_catalog
from edgeformer.perf.roofline import (DEFAULT_CALIBRATION, Calibration, OpRecord, Prediction,
                                      decode_curve, decode_rate, energy_per_token, op_time,
                                      predict, prefill_time)

__all__ = ["DeviceSpec", "Figure", "get_device", "load_catalog", "Calibration",
           "DEFAULT_CALIBRATION", "OpRecord", "Prediction", "op_time", "predict",
           "prefill_time", "decode_rate", "decode_curve", "energy_per_token"]

"""Performance model: device catalog (`device_spec`), roofline prediction over traced op
records (`roofline`), host microbenchmarks (`bandwidth`)."""
from edgeformer.perf.device_spec import DeviceSpec, Figure, get_device, load_catalog
from edgeformer.perf.roofline import (DEFAULT_CALIBRATION, Calibration, OpRecord, Prediction,
                                      decode_curve, decode_rate, energy_per_token, op_time,
                                      predict, prefill_time)

__all__ = ["DeviceSpec", "Figure", "get_device", "load_catalog", "Calibration",
           "DEFAULT_CALIBRATION", "OpRecord", "Prediction", "op_time", "predict",
           "prefill_time", "decode_rate", "decode_curve", "energy_per_token"]

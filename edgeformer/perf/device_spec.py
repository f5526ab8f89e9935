"""`DeviceSpec`: one catalog entry (peak throughput per compute unit and dtype, memory
bandwidth and size, power, caches), every figure carrying its source.

The catalog lives in `perf/catalog/*.toml`, one table per device under `[devices.<name>]`:

    [devices.h100_sxm]
    display_name = "NVIDIA H100 SXM5 80GB"
    kind = "gpu"                    # phone | laptop | edge | gpu | cpu
    default_unit = "gpu"            # compute unit the roofline uses unless told otherwise
    mem_bw = { value = 3.35, unit = "TB/s", source = "..." }
    mem_bytes = { value = 80, unit = "GiB", source = "..." }
    power_w = { value = 700, unit = "W", source = "...", note = "max TDP" }
    pj_per_byte = { value = 30, unit = "pJ/B", estimate = true, reason = "..." }   # optional
    caches.l2 = { value = 50, unit = "MB", source = "..." }                       # optional
    peak.gpu.fp16 = { value = 989.4, unit = "TFLOPS", dense = true, source = "...",
                      note = "datasheet quotes 1979 with 2:4 sparsity; halved" }

A figure is `{value, unit}` plus either `source` (where the number is written) or
`estimate = true` with a `reason`; both may be given when a sourced number needed an
assumption. Throughputs must carry `dense = true`: the catalog stores dense figures only
(a vendor's sparse number is halved and the halving noted). Anything else (unknown key,
unknown unit or dtype, negative value, missing source) raises ConfigError naming the file
and the key.
"""
from __future__ import annotations

import difflib
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeformer.errors import ConfigError, UnsupportedError

CATALOG_DIR = Path(__file__).parent / "catalog"

KINDS = ("phone", "laptop", "edge", "gpu", "cpu")
COMPUTE_UNITS = ("cpu", "gpu", "npu")
DTYPES = ("fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4")

# Dimension -> unit -> factor to the base unit (FLOP/s or OP/s, B/s, B, W, J/B).
UNITS: dict[str, dict[str, float]] = {
    "throughput": {"FLOPS": 1.0, "GFLOPS": 1e9, "TFLOPS": 1e12, "PFLOPS": 1e15,
                   "OPS": 1.0, "GOPS": 1e9, "TOPS": 1e12, "POPS": 1e15},
    "bandwidth": {"B/s": 1.0, "MB/s": 1e6, "GB/s": 1e9, "TB/s": 1e12,
                  "MiB/s": 2.0**20, "GiB/s": 2.0**30},
    "bytes": {"B": 1.0, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
              "KiB": 2.0**10, "MiB": 2.0**20, "GiB": 2.0**30, "TiB": 2.0**40},
    "power": {"W": 1.0, "mW": 1e-3},
    "energy_per_byte": {"pJ/B": 1e-12, "pJ/bit": 8e-12},
}

_FIGURE_KEYS = {"value", "unit", "source", "estimate", "reason", "dense", "note"}
_DEVICE_KEYS = {"display_name", "kind", "default_unit", "mem_bw", "mem_bytes", "power_w",
                "pj_per_byte", "caches", "peak", "notes"}
_REQUIRED = ("display_name", "kind", "default_unit", "mem_bw", "mem_bytes", "peak")
_FIELD_DIM = {"mem_bw": "bandwidth", "mem_bytes": "bytes", "power_w": "power",
              "pj_per_byte": "energy_per_byte"}


@dataclass(frozen=True)
class Figure:
    """One number with its unit and provenance.

    `value` is as written in the source, in `unit`; `si` converts it to the base unit
    (FLOP/s, B/s, B, W or J/B). `estimate` is True for numbers not read off a source
    (then `reason` says how they were derived). `dense` is True on throughputs (the
    catalog stores dense figures only) and None on everything else."""

    value: float
    unit: str
    source: str | None = None
    estimate: bool = False
    dense: bool | None = None
    reason: str | None = None
    note: str | None = None

    @property
    def si(self) -> float:
        for table in UNITS.values():
            if self.unit in table:
                return self.value * table[self.unit]
        raise ConfigError(f"unknown unit {self.unit!r}")


@dataclass(frozen=True)
class DeviceSpec:
    """A device: peak dense throughput per (compute unit, dtype), memory bandwidth and size,
    power, caches, optional DRAM energy per byte. Figures keep their sources.

    `peak_flops` keys are `(unit, dtype)` such as `("gpu", "fp16")`; integer dtypes count
    OP/s. `power_w` and `pj_per_byte` may be None where nothing is known."""

    name: str
    kind: str
    peak_flops: dict[tuple[str, str], Figure]
    mem_bw: Figure
    mem_bytes: Figure
    power_w: Figure | None = None
    caches: dict[str, Figure] = field(default_factory=dict)
    pj_per_byte: Figure | None = None
    display_name: str = ""
    default_unit: str = "cpu"
    notes: str = ""
    origin: str = ""                 # the catalog file (or "measured") it came from

    @property
    def units(self) -> list[str]:
        """Compute units that have at least one throughput figure."""
        return sorted({u for u, _ in self.peak_flops})

    def peak(self, dtype: str, unit: str | None = None) -> float | None:
        """Dense peak in FLOP/s (OP/s for ints) of `dtype` on `unit` (default
        `default_unit`), or None if the catalog has no figure for that pair."""
        fig = self.peak_flops.get((unit or self.default_unit, dtype))
        return fig.si if fig is not None else None

    def figures(self) -> dict[str, Figure]:
        """Every figure by its dotted key (`peak.gpu.fp16`, `caches.l2`, `mem_bw`...)."""
        out: dict[str, Figure] = {"mem_bw": self.mem_bw, "mem_bytes": self.mem_bytes}
        if self.power_w is not None:
            out["power_w"] = self.power_w
        if self.pj_per_byte is not None:
            out["pj_per_byte"] = self.pj_per_byte
        out.update({f"caches.{k}": v for k, v in self.caches.items()})
        out.update({f"peak.{u}.{d}": v for (u, d), v in self.peak_flops.items()})
        return out


def _parse_figure(raw: Any, where: str, dim: str, throughput: bool = False) -> Figure:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table {{value, unit, source}}, got {raw!r}")
    unknown = set(raw) - _FIGURE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; "
                          f"allowed: {sorted(_FIGURE_KEYS)}")
    if "value" not in raw:
        raise ConfigError(f"{where}: missing 'value'")
    value = raw["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: value must be a finite number, got {value!r}")
    if value < 0:
        raise ConfigError(f"{where}: value must not be negative, got {value}")
    if "unit" not in raw:
        raise ConfigError(f"{where}: missing 'unit' (one of {', '.join(UNITS[dim])})")
    if raw["unit"] not in UNITS[dim]:
        raise ConfigError(f"{where}: unit {raw['unit']!r} is not a {dim} unit; "
                          f"use one of {', '.join(UNITS[dim])}")
    source, estimate, reason = raw.get("source"), raw.get("estimate", False), raw.get("reason")
    if not isinstance(estimate, bool):
        raise ConfigError(f"{where}: estimate must be true or false")
    if source is not None and (not isinstance(source, str) or not source.strip()):
        raise ConfigError(f"{where}: source must be a non-empty string")
    if source is None and not estimate:
        raise ConfigError(f"{where}: figure has no source; give source = \"...\" "
                          "or estimate = true with a reason")
    if estimate and (not isinstance(reason, str) or not reason.strip()):
        raise ConfigError(f"{where}: estimate = true needs a reason = \"...\"")
    dense = raw.get("dense")
    if throughput:
        if dense is not True:
            raise ConfigError(f"{where}: throughputs must say dense = true (store the dense "
                              "figure; halve a vendor's 2:4-sparse number and note it)")
    elif dense is not None:
        raise ConfigError(f"{where}: 'dense' applies only to throughput figures")
    return Figure(float(value), raw["unit"], source, estimate, dense, reason, raw.get("note"))


def _parse_device(name: str, raw: Any, file: str) -> DeviceSpec:
    where = f"{file}: devices.{name}"
    if name != normalize_name(name):
        raise ConfigError(f"{where}: device names are lower_snake_case (use {normalize_name(name)!r})")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = set(raw) - _DEVICE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_DEVICE_KEYS)}")
    for key in _REQUIRED:
        if key not in raw:
            raise ConfigError(f"{where}: missing required key {key!r}")
    if raw["kind"] not in KINDS:
        raise ConfigError(f"{where}.kind: {raw['kind']!r} is not one of {', '.join(KINDS)}")
    figs = {k: _parse_figure(raw[k], f"{where}.{k}", dim)
            for k, dim in _FIELD_DIM.items() if k in raw}
    caches_raw = raw.get("caches", {})
    if not isinstance(caches_raw, dict):
        raise ConfigError(f"{where}.caches: expected a table of figures")
    caches = {k: _parse_figure(v, f"{where}.caches.{k}", "bytes") for k, v in caches_raw.items()}
    peak: dict[tuple[str, str], Figure] = {}
    if not isinstance(raw["peak"], dict) or not raw["peak"]:
        raise ConfigError(f"{where}.peak: expected at least one peak.<unit>.<dtype> figure")
    for unit, per_dtype in raw["peak"].items():
        if unit not in COMPUTE_UNITS:
            raise ConfigError(f"{where}.peak.{unit}: unknown compute unit; "
                              f"use one of {', '.join(COMPUTE_UNITS)}")
        if not isinstance(per_dtype, dict):
            raise ConfigError(f"{where}.peak.{unit}: expected a table of dtype = figure")
        for dtype, fig in per_dtype.items():
            if dtype not in DTYPES:
                raise ConfigError(f"{where}.peak.{unit}.{dtype}: unknown dtype; "
                                  f"use one of {', '.join(DTYPES)}")
            peak[(unit, dtype)] = _parse_figure(fig, f"{where}.peak.{unit}.{dtype}",
                                                "throughput", throughput=True)
    default_unit = raw["default_unit"]
    if default_unit not in {u for u, _ in peak}:
        raise ConfigError(f"{where}.default_unit: {default_unit!r} has no peak figures "
                          f"(have: {', '.join(sorted({u for u, _ in peak}))})")
    for key in ("display_name", "notes"):
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(f"{where}.{key}: expected a string")
    return DeviceSpec(name=name, kind=raw["kind"], peak_flops=peak, mem_bw=figs["mem_bw"],
                      mem_bytes=figs["mem_bytes"], power_w=figs.get("power_w"), caches=caches,
                      pj_per_byte=figs.get("pj_per_byte"), display_name=raw["display_name"],
                      default_unit=default_unit, notes=raw.get("notes", ""), origin=file)


def load_catalog_file(path: str | os.PathLike[str]) -> dict[str, DeviceSpec]:
    """Parse and validate one catalog TOML file. Errors: ConfigError naming file and key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read catalog file: {e}") from None
    unknown = set(data) - {"devices"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}; "
                          "devices go under [devices.<name>]")
    devices = data.get("devices")
    if not isinstance(devices, dict) or not devices:
        raise ConfigError(f"{path}: no [devices.<name>] tables")
    return {name: _parse_device(name, raw, str(path)) for name, raw in devices.items()}


def load_catalog(path: str | os.PathLike[str] | None = None) -> dict[str, DeviceSpec]:
    """All devices of a catalog: `path` is a TOML file or a directory of them (default:
    the packaged `perf/catalog/`). Returns name -> DeviceSpec. A device defined in two
    files, or any malformed entry, raises ConfigError."""
    root = Path(path) if path is not None else CATALOG_DIR
    files = sorted(root.glob("*.toml")) if root.is_dir() else [root]
    if not files:
        raise ConfigError(f"{root}: no catalog *.toml files")
    out: dict[str, DeviceSpec] = {}
    for f in files:
        for name, spec in load_catalog_file(f).items():
            if name in out:
                raise ConfigError(f"{f}: device {name!r} already defined in {out[name].origin}")
            out[name] = spec
    return out


_CACHE: dict[str, DeviceSpec] | None = None


def normalize_name(name: str) -> str:
    """A device name as the catalog keys it: lower case, '-' and ' ' as '_'."""
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def get_device(name: str) -> DeviceSpec:
    """A packaged catalog device by name (case, '-' and ' ' are ignored). The catalog is
    data only: this machine ("host") is measured a layer up (`bandwidth.device_or_host`).
    Unknown names raise UnsupportedError listing the known ones and the closest."""
    global _CACHE
    if _CACHE is None:
        _CACHE = load_catalog()
    key = normalize_name(name)
    if key in _CACHE:
        return _CACHE[key]
    close = difflib.get_close_matches(key, list(_CACHE), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnsupportedError(f"unknown device {name!r}{hint} known: {', '.join(sorted(_CACHE))}, host")

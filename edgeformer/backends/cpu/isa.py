"""Which x86 SIMD path the cpu backend's kernels compile for, and how to force one.

The kernels pick their instructions from the LLVM target features Numba compiles for
(`vector_ir.features`): AVX-512 (VNNI `vpdpbusd`, BF16 `vdpbf16ps`, 512-bit tiles) where the
features have them, else AVX2, else generic vector IR. Numba takes the target from the
host unless `NUMBA_CPU_NAME` / `NUMBA_CPU_FEATURES` say otherwise, and reads both when
`numba` is imported (its codegen is built once per process). `NUMBA_CPU_NAME=haswell`
alone does NOT change the features: Numba keeps the host's feature string (+avx512f ...).
So forcing a path takes both variables, plus a cache directory of its own
(`NUMBA_CACHE_DIR`), so the two paths' machine code never share an index.

Forcing, for a user (e.g. to reproduce an AVX2-only machine on an AVX-512 one):

    EDGEFORMER_CPU_ISA=avx2 edgeformer run -p "..."

`EDGEFORMER_CPU_ISA` is one of `native` (default: the host's features, or whatever
NUMBA_CPU_* say), `avx2` (Haswell: AVX2 + FMA + F16C, no AVX-512), `avx512` (the host's
features, refused unless they include AVX-512F). `apply_env()` runs when
`edgeformer.backends.cpu` is imported (before any kernel module, so before this package
imports numba) and sets the NUMBA_* variables `forced_env()` gives; `avx2` overrides
NUMBA_CPU_NAME/NUMBA_CPU_FEATURES set by hand. If `numba` was already imported by then
(by the user's code, say) the request is too late: constructing the backend raises
UnsupportedError naming the variables to set before starting Python instead. After the
kernels load, `verify()` checks the features Numba really compiles for.

avx2's cache lives in an `isa-avx2` directory under the normal cache location:
`$NUMBA_CACHE_DIR/isa-avx2` when NUMBA_CACHE_DIR is set, else this package's
`__pycache__/isa-avx2` (where Numba caches by default), else
`$EDGEFORMER_CACHE` (~/.cache/edgeformer) `/numba-isa-avx2` when that is read-only.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "EDGEFORMER_CPU_ISA"
CHOICES = ("native", "avx2", "avx512")

# LLVM's haswell feature set (X86.td), the AVX2 baseline every AVX2 x86-64 CPU since 2013 has
HASWELL = ("64bit", "aes", "avx", "avx2", "bmi", "bmi2", "cmov", "crc32", "cx16", "cx8", "f16c", "fma",
           "fsgsbase", "fxsr", "invpcid", "lzcnt", "mmx", "movbe", "pclmul", "popcnt", "rdrnd", "sahf",
           "sse", "sse2", "sse3", "sse4.1", "sse4.2", "ssse3", "xsave", "xsaveopt")
_AVX2_NEEDS = ("avx", "avx2", "fma", "f16c")   # what the AVX2 kernels' code needs from the host

_problem: str | None = None      # why a requested ISA could not be applied (raised by ensure())


def requested() -> str | None:
    """The ISA `EDGEFORMER_CPU_ISA` asks for: None for unset/"native"/"auto", else
    "avx2"/"avx512". UnsupportedError for any other value."""
    v = os.environ.get(ENV, "").strip().lower()
    if v in ("", "native", "auto"):
        return None
    if v not in CHOICES:
        from edgeformer.errors import UnsupportedError
        raise UnsupportedError(f"{ENV}={os.environ[ENV]!r}: expected one of {', '.join(CHOICES)}")
    return v


def host_features() -> dict[str, bool]:
    """LLVM's view of this CPU: feature name -> present ({} off x86 or without llvmlite).
    Imports llvmlite, not numba (so it does not fix Numba's configuration)."""
    try:
        import llvmlite.binding as llvm
        if not llvm.get_process_triple().startswith(("x86", "i386", "i686")):
            return {}
        return {k: bool(v) for k, v in llvm.get_host_cpu_features().items()}
    except (ImportError, RuntimeError):
        return {}


def host_has_avx512() -> bool:
    return host_features().get("avx512f", False)


def avx2_features(host: dict[str, bool] | None = None) -> str:
    """NUMBA_CPU_FEATURES for the AVX2 path: each Haswell feature, "+" where this host has
    it and "-" where it does not (haswell would otherwise switch it on), nothing AVX-512."""
    host = host_features() if host is None else host
    return ",".join(("+" if host.get(f, False) else "-") + f for f in HASWELL if f in host)


def cache_dir(isa: str) -> str:
    """Numba cache directory of a forced path (see the module docstring)."""
    tag = f"isa-{isa}"
    env = os.environ.get("NUMBA_CACHE_DIR")
    if env:
        return env if Path(env).name == tag else str(Path(env) / tag)    # already applied: keep
    pkg = Path(__file__).parent / "__pycache__"
    if os.access(pkg if pkg.is_dir() else pkg.parent, os.W_OK):
        return str(pkg / tag)
    base = os.environ.get("EDGEFORMER_CACHE")
    return str((Path(base) if base else Path.home() / ".cache" / "edgeformer") / f"numba-{tag}")


def forced_env(isa: str) -> dict[str, str]:
    """The NUMBA_* variables that make Numba compile for `isa` ({} for "avx512", which is
    the host's own features). UnsupportedError if this host cannot run that code."""
    from edgeformer.errors import UnsupportedError
    host = host_features()
    if isa == "avx2":
        missing = [f for f in _AVX2_NEEDS if not host.get(f, False)]
        if missing:
            raise UnsupportedError(f"{ENV}=avx2: this CPU lacks {', '.join(missing)}")
        return {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": avx2_features(host),
                "NUMBA_CACHE_DIR": cache_dir("avx2")}
    if isa == "avx512":
        if not host.get("avx512f", False):
            raise UnsupportedError(f"{ENV}=avx512: this CPU has no AVX-512F")
        return {}
    raise UnsupportedError(f"{ENV}={isa!r}: expected one of {', '.join(CHOICES)}")


def apply_env() -> None:
    """Set the NUMBA_* variables for `EDGEFORMER_CPU_ISA`, if numba is not imported yet;
    otherwise (or for a bad value / a host that cannot) remember why for `ensure()`.
    Never raises: it runs at import of `edgeformer.backends.cpu`."""
    global _problem
    _problem = None
    try:
        isa = requested()
        env = forced_env(isa) if isa else {}
    except Exception as e:        # noqa: BLE001 - reported by ensure(), when the backend is used
        _problem = str(e)
        return
    if not env or all(os.environ.get(k) == v for k, v in env.items()):
        return                    # nothing to set, or already set (e.g. by a parent process)
    if "numba" in sys.modules:
        _problem = (f"{ENV}={isa} came too late: numba was imported before edgeformer.backends.cpu and has read "
                    f"its target already; set {ENV} before numba is imported, or start Python with "
                    + " ".join(f"{k}={v}" for k, v in env.items()))
        return
    os.environ.update(env)


def ensure() -> None:
    """Raise UnsupportedError if `EDGEFORMER_CPU_ISA` asks for something this process cannot
    give (bad value, host without it, numba imported before it could be applied)."""
    requested()
    if _problem:
        from edgeformer.errors import UnsupportedError
        raise UnsupportedError(_problem)


def target_features() -> set[str]:
    """The LLVM target features Numba compiles for in this process ("+avx2", "-avx512f",
    ...), read the way the kernels read them (`vector_ir.features`). Imports numba."""
    from numba.core.registry import cpu_target

    from edgeformer.backends.cpu.vector_ir import features
    return features(cpu_target.target_context)


def isa_of(features: set[str]) -> str:
    """The kernel path those features select: "avx512" (512-bit tiles; VNNI/BF16 when
    present), "avx2", or "generic" (portable vector IR: non-x86 or pre-AVX2)."""
    from edgeformer.backends.cpu.vector_ir import is_x86
    if not is_x86():
        return "generic"
    if "+avx512f" in features:
        return "avx512"
    return "avx2" if "+avx2" in features else "generic"


def compiled_isa() -> str:
    """The SIMD path this process's kernels compile for ("avx512", "avx2", "generic")."""
    return isa_of(target_features())


def describe() -> str:
    """One line for logs and reports: the path, the AVX-512 extras, the cache directory."""
    f = target_features()
    extras = [x for x in ("avx512bw", "avx512vnni", "avx512bf16") if f"+{x}" in f]
    isa = isa_of(f)
    from numba.core import config
    return (f"{isa}" + (f" ({', '.join(extras)})" if isa == "avx512" and extras else "")
            + f", cpu {config.CPU_NAME or 'host'}, cache {config.CACHE_DIR or 'next to the sources'}")


def verify() -> None:
    """After the kernels load: UnsupportedError unless Numba really compiles for the
    requested path (e.g. NUMBA_CPU_FEATURES set by hand against EDGEFORMER_CPU_ISA=avx512)."""
    isa = requested()
    if isa is None:
        return
    got = compiled_isa()
    if got != isa:
        from edgeformer.errors import UnsupportedError
        raise UnsupportedError(f"{ENV}={isa}, but Numba compiles for {got} (NUMBA_CPU_NAME="
                               f"{os.environ.get('NUMBA_CPU_NAME')}, NUMBA_CPU_FEATURES="
                               f"{os.environ.get('NUMBA_CPU_FEATURES')})")

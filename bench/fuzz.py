"""Fuzz the readers of untrusted bytes (targets in `bench/fuzz_targets.py`).

    python bench/fuzz.py TARGET [--runs N] [--seed S] [--engine mutate|atheris]
    python bench/fuzz.py all --runs N
    python bench/fuzz.py TARGET --replay FILE...      (outcome of saved inputs)

Every input runs in a worker child process under limits: address space RLIMIT_AS =
the worker's own size after start-up + `--mem-gib` (2), `--timeout` (5) s of CPU per
input (an interval timer; a wall-clock backstop of 12x that kills the worker). An input
ends as one of:
- ok: the reader accepted it; error: it raised an `EdgeformerError` (a pass);
- crash: any other exception (MemoryError included), a hang, or the worker killed by a
  signal.
Crashes are grouped by (exception type, innermost edgeformer frame); the first input of
each group is minimized (chunks cut while the same group reproduces) and saved as
`<out>/<target>/<sha1>.bin` with a `.json` beside it (exception, site, message), which
tests/fuzz/test_corpus.py replays once the crash is fixed. An input over 1 MiB goes to
the seed cache (`big-crashes/`) instead, to be reduced by hand into a test.

Engines:
- mutate (default, no extra dependency, deterministic for a --seed): byte mutations
  biased to the header (bit flips, bytes and 16/32/64-bit fields set to extremes,
  truncation, chunk insert/delete/duplicate, splicing seeds), structured mutations of
  JSON files inside `pack`ed inputs (values set to extremes, wrong types, NaN/inf, deep
  nesting), and a simple novelty feedback: an input that ends with a new (status,
  exception type, message shape) joins the pool mutated from.
- atheris: coverage-guided libFuzzer over the same targets (`pip install atheris`),
  run in a child under the same limits; restarted after each crash until --runs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import resource
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import fuzz_targets  # noqa: E402

DEFAULT_OUT = ROOT / "tests" / "data" / "fuzz"


def _cache() -> Path:
    from edgeformer.models.shipped import cache_dir
    return cache_dir() / "fuzz-seeds"


# ------------------------------------------------------------------ worker (child process)

class _Hang(BaseException):
    """Raised by the CPU-time timer inside a worker (BaseException: a reader's
    `except Exception` must not swallow it)."""


def _site(tb: Any) -> str:
    """'path:line:function' of the innermost edgeformer frame (else the innermost)."""
    frames = traceback.extract_tb(tb)
    ours = [f for f in frames if "/edgeformer/" in f.filename]
    f = (ours or frames)[-1]
    path = f.filename
    i = path.rfind("/edgeformer/")
    path = path[i + 1:] if i >= 0 else Path(path).name
    return f"{path}:{f.lineno}:{f.name}"


def run_input(target: fuzz_targets.Target, data: bytes, timeout: float) -> dict:
    """One input in this process: {"status": ok|error|crash, "exc", "site", "msg", "s"}."""
    from edgeformer.errors import EdgeformerError

    def on_timer(signum: int, frame: Any) -> None:
        raise _Hang()
    signal.signal(signal.SIGPROF, on_timer)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"status": "ok"}
    with tempfile.TemporaryDirectory(prefix="fuzz-") as wd:
        signal.setitimer(signal.ITIMER_PROF, timeout)
        try:
            target.run(data, Path(wd))
        except _Hang:
            out = {"status": "crash", "exc": "Hang", "site": "", "msg": f"over {timeout} s of CPU"}
        except EdgeformerError as e:
            out = {"status": "error", "exc": type(e).__name__, "msg": str(e)[:300]}
        except BaseException as e:     # noqa: BLE001 - the crash being looked for
            out = {"status": "crash", "exc": type(e).__name__, "site": _site(e.__traceback__), "msg": str(e)[:300]}
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
    out["s"] = round(time.perf_counter() - t0, 4)
    return out


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _limit_memory(mem_gib: float) -> None:
    """RLIMIT_AS = this process's address space now + mem_gib."""
    lim = _vm_bytes() + int(mem_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))


def _warm_up(target: fuzz_targets.Target, seeds: list[bytes], timeout: float) -> None:
    """Run the seeds once before the memory limit is set, so lazily imported modules and
    loaded tokenizers count in the baseline, not against the first input."""
    for s in seeds[:8]:
        run_input(target, s, timeout * 10)


def worker_main(name: str, mem_gib: float, timeout: float) -> None:
    """Serve inputs: stdin frames (u32 length + bytes), one JSON line per input on the
    original stdout (the target's own prints go to stderr)."""
    target = fuzz_targets.TARGETS[name]
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    _warm_up(target, fuzz_targets.seed_corpus(target, _cache()), timeout)
    _limit_memory(mem_gib)
    proto.write('{"ready": true}\n')
    stdin = sys.stdin.buffer
    while True:
        head = stdin.read(4)
        if len(head) < 4:
            return
        (n,) = struct.unpack("<I", head)
        data = stdin.read(n)
        proto.write(json.dumps(run_input(target, data, timeout)) + "\n")


# ------------------------------------------------------------------ parent side

@dataclass
class Worker:
    """A worker child process for one target; restarted after it dies or hangs."""

    target: str
    mem_gib: float = 2.0
    timeout: float = 5.0
    proc: subprocess.Popen | None = None
    starts: int = 0

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", self.target, "--mem-gib", str(self.mem_gib),
             "--timeout", str(self.timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self.starts += 1
        line = self._line(600)
        if line is None or not line.get("ready"):
            raise RuntimeError(f"fuzz worker for {self.target} did not start (exit {self.proc.poll()})")

    def _line(self, wait: float) -> dict | None:
        assert self.proc is not None and self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], wait)
        if not r:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def run(self, data: bytes) -> dict:
        if self.proc is None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        t0 = time.perf_counter()
        try:
            self.proc.stdin.write(struct.pack("<I", len(data)) + data)
            self.proc.stdin.flush()
            out = self._line(self.timeout * 12)
        except (BrokenPipeError, OSError, ValueError):
            out = None
        if out is not None:
            if out["status"] == "crash" and out["exc"] in ("MemoryError", "Hang"):
                self.stop()     # a worker that ran out of memory or time starts afresh
            return out
        code = self.proc.poll()
        self.stop()
        if code is None or code == 0:
            return {"status": "crash", "exc": "Hang", "site": "", "msg": "no answer (wall clock)",
                    "s": round(time.perf_counter() - t0, 3)}
        sig = -code if code < 0 else code
        name = signal.Signals(sig).name if code < 0 and sig in signal.Signals._value2member_map_ else f"exit {code}"
        return {"status": "crash", "exc": f"Signal:{name}", "site": "", "msg": f"worker died ({name})",
                "s": round(time.perf_counter() - t0, 3)}


def crash_key(r: dict) -> tuple[str, str]:
    return r["exc"], r.get("site", "")


# ------------------------------------------------------------------ mutations

EXTREMES32 = (0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE,
              0xFFFFFFFF)
EXTREMES64 = (0, 1, 0xFFFFFFFF, 1 << 32, 1 << 40, (1 << 62) - 1, 1 << 63, (1 << 64) - 1)
JSON_EXTREMES: tuple[Any, ...] = (0, -1, 1, 2**31, 2**63, 2**64 + 1, 10**30, -(2**63), 0.0, -0.0, 1e-300, 1e308,
                                  float("nan"), float("inf"), float("-inf"), "", "x", "\udcff", None, True, False,
                                  [], {}, [0], {"": 0}, "a" * 10000)


def _pos(rng: random.Random, n: int, head: int) -> int:
    if n == 0:
        return 0
    return rng.randrange(min(n, head)) if rng.random() < 0.7 else rng.randrange(n)


def mutate_bytes(rng: random.Random, b: bytes, head: int, other: bytes) -> bytes:
    a = bytearray(b)
    n = len(a)
    op = rng.randrange(10)
    if n == 0 or op == 9:
        return bytes(a + other[:rng.randrange(1, 64)])
    p = _pos(rng, n, head)
    if op == 0:                                   # flip bits
        a[p] ^= 1 << rng.randrange(8)
    elif op == 1:                                 # byte to an extreme
        a[p] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
    elif op in (2, 3):                            # 32-bit field to an extreme
        v = rng.choice(EXTREMES32)
        a[p:p + 4] = struct.pack("<I", v)[:max(0, min(4, n - p))]
    elif op == 4:                                 # 64-bit field to an extreme
        v = rng.choice(EXTREMES64)
        a[p:p + 8] = struct.pack("<Q", v)[:max(0, min(8, n - p))]
    elif op == 5:                                 # 16-bit field
        a[p:p + 2] = struct.pack("<H", rng.choice((0, 1, 0x7FFF, 0xFFFF)))[:max(0, min(2, n - p))]
    elif op == 6:                                 # truncate
        del a[p:]
    elif op == 7:                                 # delete or duplicate a chunk
        k = rng.randrange(1, 1 + min(64, n - p))
        if rng.random() < 0.5:
            del a[p:p + k]
        else:
            a[p:p] = a[p:p + k] * rng.choice((1, 2, 16))
    else:                                         # splice a chunk of another seed
        q = rng.randrange(max(1, len(other)))
        a[p:p] = other[q:q + rng.randrange(1, 64)]
    return bytes(a)


def _deep(rng: random.Random) -> Any:
    depth = rng.choice((100, 2000, 100000))
    return json.loads("[" * depth + "]" * depth) if depth <= 900 else {"__deep__": depth}


def mutate_json(rng: random.Random, raw: bytes) -> bytes:
    """A JSON document with one value replaced by an extreme (or a deep nest)."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return raw
    paths: list[tuple[Any, Any]] = []

    def walk(x: Any) -> None:
        if len(paths) > 4000:
            return
        items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
        for k, v in items:
            paths.append((x, k))
            walk(v)
    walk(doc)
    if not paths:
        return raw
    parent, key = rng.choice(paths)
    r = rng.random()
    if r < 0.1:
        parent[key] = _deep(rng)
    elif r < 0.2 and isinstance(parent, dict):
        del parent[key]
    elif r < 0.3 and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
        parent[key] = -parent[key] if rng.random() < 0.5 else parent[key] * rng.choice((2, 1000, 10**9))
    else:
        parent[key] = rng.choice(JSON_EXTREMES)
    text = json.dumps(doc, ensure_ascii=False)
    for m in re.finditer(r'\{"__deep__": (\d+)\}', text):   # too deep for json.dumps: splice it in
        d = int(m.group(1))
        text = text.replace(m.group(0), "[" * d + "]" * d, 1)
    return text.encode("utf-8", "surrogatepass")


def mutate(rng: random.Random, data: bytes, pool: list[bytes], target: fuzz_targets.Target) -> bytes:
    other = rng.choice(pool)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 4))):
        if target.json_files and rng.random() < 0.9:
            files = fuzz_targets.unpack(data)
            if files:
                name = rng.choice(sorted(files))
                body = files[name]
                if name.endswith(".json") and rng.random() < 0.6:
                    files[name] = mutate_json(rng, body)
                else:
                    files[name] = mutate_bytes(rng, body, target.head, other)
                data = fuzz_targets.pack(files)
                continue
        data = mutate_bytes(rng, data, target.head, other)
    if rng.random() < 0.01:                        # now and then a huge input
        data = data * rng.choice((16, 256))
    if target.fixup is not None and rng.random() < 0.8:
        data = target.fixup(data)
    return data


def shape_of(r: dict) -> tuple:
    """Novelty key: status, exception type, message with numbers and quotes blurred."""
    msg = re.sub(r"\S*/\S*", "P", r.get("msg", ""))       # paths (each input has its own temporary one)
    msg = re.sub(r"\d+", "N", msg)
    msg = re.sub(r"'[^']*'|\"[^\"]*\"", "Q", msg)[:60]
    return r["status"], r.get("exc", ""), msg


# ------------------------------------------------------------------ the fuzz loop

@dataclass
class Report:
    target: str
    runs: int = 0
    seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    crashes: dict[tuple[str, str], dict] = field(default_factory=dict)
    slowest: float = 0.0

    def summary(self) -> dict:
        return {"target": self.target, "runs": self.runs, "seconds": round(self.seconds, 1),
                "exec_per_s": round(self.runs / self.seconds, 1) if self.seconds else 0.0,
                "slowest_input_s": self.slowest, "outcomes": dict(sorted(self.outcomes.items())),
                "crashes": [{"exc": k[0], "site": k[1], **v} for k, v in self.crashes.items()]}


def minimize(worker: Worker, data: bytes, key: tuple[str, str], budget: int = 200) -> bytes:
    """Cut chunks (halves down to single bytes) while the crash keeps its key."""
    if len(data) > 1 << 20 or key[0] in ("Hang", "MemoryError") or key[0].startswith("Signal"):
        return data
    chunk = max(1, len(data) // 2)
    while chunk >= 1 and budget > 0:
        i, cut = 0, False
        while i < len(data) and budget > 0:
            cand = data[:i] + data[i + chunk:]
            budget -= 1
            r = worker.run(cand)
            if r["status"] == "crash" and crash_key(r) == key:
                data, cut = cand, True
            else:
                i += chunk
        if not cut:
            chunk //= 2
    return data


MAX_SAVED = 1 << 20    # a bigger crashing input is saved outside the repository (the cache)


def save_crash(out: Path, target: str, data: bytes, r: dict) -> Path:
    d = out / target
    if len(data) > MAX_SAVED:
        d = _cache() / "big-crashes" / target
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{hashlib.sha1(data).hexdigest()[:16]}.bin"
    p.write_bytes(data)
    meta = {k: r.get(k) for k in ("exc", "site", "msg")}
    p.with_suffix(".json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    return p


def fuzz(target_name: str, runs: int, seed: int = 0, out: Path | None = DEFAULT_OUT, mem_gib: float = 2.0,
         timeout: float = 5.0, log_every: float = 30.0, minimize_crashes: bool = True) -> Report:
    """Run `runs` mutated inputs of a target; crashes saved under `out` (None: not saved)."""
    target = fuzz_targets.TARGETS[target_name]
    seeds = fuzz_targets.seed_corpus(target, _cache())
    if not seeds:
        raise RuntimeError(f"{target_name}: no seeds (are the shipped model packages installed?)")
    rng = random.Random(seed)
    pool = list(seeds)
    seen: set[tuple] = set()
    rep = Report(target_name)
    w = Worker(target_name, mem_gib, timeout)
    t0 = last = time.perf_counter()
    try:
        for i in range(runs):
            data = seeds[i] if i < len(seeds) else mutate(rng, rng.choice(pool), pool, target)
            r = w.run(data)
            rep.runs += 1
            rep.slowest = max(rep.slowest, r.get("s", 0.0))
            k = r["status"] if r["status"] != "error" else f"error:{r['exc']}"
            rep.outcomes[k] = rep.outcomes.get(k, 0) + 1
            shape = shape_of(r)
            if shape not in seen and len(data) < 4 << 20:
                seen.add(shape)
                pool.append(data)
            if r["status"] == "crash" and crash_key(r) not in rep.crashes:
                small = minimize(w, data, crash_key(r)) if minimize_crashes else data
                saved = save_crash(out, target_name, small, r) if out is not None else None
                rep.crashes[crash_key(r)] = {"msg": r.get("msg", ""), "input": str(saved) if saved else None,
                                             "bytes": len(small), "first_at": i}
                print(f"[{target_name}] crash #{len(rep.crashes)} at input {i}: {r['exc']} at {r.get('site')}: "
                      f"{r.get('msg', '')[:160]}", flush=True)
            now = time.perf_counter()
            if log_every and now - last > log_every:
                last = now
                print(f"[{target_name}] {i + 1}/{runs} inputs, {(i + 1) / (now - t0):.0f}/s, "
                      f"{len(rep.crashes)} crash groups, pool {len(pool)}", flush=True)
    finally:
        w.stop()
        rep.seconds = time.perf_counter() - t0
    return rep


# ------------------------------------------------------------------ atheris engine

def atheris_child(name: str, runs: int, corpus: Path, artifacts: Path, mem_gib: float, timeout: float) -> None:
    """libFuzzer (atheris) in this process: a non-edgeformer exception is a crash it saves
    under `artifacts`; -timeout and -rss_limit_mb bound each input."""
    import atheris
    target = fuzz_targets.TARGETS[name]
    seeds = fuzz_targets.seed_corpus(target, _cache())
    with atheris.instrument_imports(include=["edgeformer"]):
        import edgeformer.audio.io  # noqa: F401
        import edgeformer.formats.chat_template  # noqa: F401
        import edgeformer.formats.ctranslate2  # noqa: F401
        import edgeformer.formats.gguf  # noqa: F401
        import edgeformer.formats.hf  # noqa: F401
        import edgeformer.formats.onnx_weights  # noqa: F401
        import edgeformer.formats.tokenizer  # noqa: F401
        import edgeformer.models.image_processing  # noqa: F401
    from edgeformer.errors import EdgeformerError
    _warm_up(target, seeds, timeout)
    wd = Path(tempfile.mkdtemp(prefix="fuzz-atheris-"))

    def one(data: bytes) -> None:
        for p in wd.iterdir():
            p.unlink()
        try:
            target.run(data, wd)
        except EdgeformerError:
            pass
    rss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + mem_gib * 1024)
    max_len = max(len(s) for s in seeds) * 2
    atheris.Setup([sys.argv[0], f"-runs={runs}", f"-timeout={int(timeout)}", f"-rss_limit_mb={rss}",
                   f"-max_len={max_len}", f"-artifact_prefix={artifacts}/", "-print_final_stats=1", str(corpus)],
                  one)
    atheris.Fuzz()


def fuzz_atheris(target_name: str, runs: int, out: Path | None, mem_gib: float, timeout: float) -> Report:
    """Run atheris in children until `runs` inputs have been tried; each artifact is
    replayed in a mutate-engine worker to get its crash group, then saved."""
    target = fuzz_targets.TARGETS[target_name]
    seeds = fuzz_targets.seed_corpus(target, _cache())
    corpus = _cache() / "atheris-corpus" / target_name
    corpus.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(seeds):
        (corpus / f"seed-{i:03d}").write_bytes(s)
    art = Path(tempfile.mkdtemp(prefix=f"fuzz-art-{target_name}-"))
    rep = Report(target_name)
    w = Worker(target_name, mem_gib, timeout)
    t0 = time.perf_counter()
    left = runs
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        while left > 0:
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--atheris-child", target_name,
                                   "--runs", str(left), "--corpus", str(corpus), "--artifacts", str(art),
                                   "--mem-gib", str(mem_gib), "--timeout", str(timeout)],
                                  env=env, capture_output=True, text=True)
            done = [int(m) for m in re.findall(r"stat::number_of_executed_units:\s*(\d+)", proc.stderr)]
            # after a crash there are no final stats: the last status line's count (a lower bound)
            ran = done[-1] if done else max([1] + [int(m) for m in re.findall(r"^#(\d+)\s", proc.stderr, re.M)])
            rep.runs += ran
            left -= ran
            for a in sorted(art.iterdir()):
                data = a.read_bytes()
                r = w.run(data)
                if r["status"] != "crash":   # a libFuzzer timeout/oom that the bounded worker passes
                    r = {"status": "crash", "exc": a.name.split("-")[0].capitalize(), "site": "", "msg": "libFuzzer"}
                key = crash_key(r)
                if key not in rep.crashes:
                    small = minimize(w, data, key)
                    saved = save_crash(out, target_name, small, r) if out is not None else None
                    rep.crashes[key] = {"msg": r.get("msg", ""), "input": str(saved) if saved else None,
                                        "bytes": len(small), "first_at": rep.runs}
                    print(f"[{target_name}] crash {r['exc']} at {r.get('site')}: {r.get('msg', '')[:160]}",
                          flush=True)
                a.unlink()
            if proc.returncode == 0 or ran <= 1:
                if proc.returncode != 0 and ran <= 1:
                    print(proc.stderr[-2000:], file=sys.stderr)
                break
    finally:
        w.stop()
        rep.seconds = time.perf_counter() - t0
    return rep


def replay(target_name: str, files: list[Path], mem_gib: float = 2.0, timeout: float = 5.0) -> list[dict]:
    """Outcome of each saved input (one worker for all)."""
    w = Worker(target_name, mem_gib, timeout)
    try:
        return [{"file": str(f), **w.run(f.read_bytes())} for f in files]
    finally:
        w.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", nargs="?", help=f"one of {', '.join(fuzz_targets.TARGETS)} or 'all'")
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine", choices=("mutate", "atheris"), default="mutate")
    ap.add_argument("--timeout", type=float, default=5.0, help="CPU seconds per input")
    ap.add_argument("--mem-gib", type=float, default=2.0, help="address space per input above the worker's")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where crashing inputs are saved")
    ap.add_argument("--json", type=Path, help="append the summary (JSON line) here")
    ap.add_argument("--replay", type=Path, nargs="*", help="run these saved inputs and print each outcome")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--atheris-child", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--artifacts", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker_main(a.worker, a.mem_gib, a.timeout)
        return 0
    if a.atheris_child:
        atheris_child(a.atheris_child, a.runs, a.corpus, a.artifacts, a.mem_gib, a.timeout)
        return 0
    if a.replay is not None:
        for r in replay(a.target, a.replay, a.mem_gib, a.timeout):
            print(json.dumps(r, ensure_ascii=False))
        return 0
    names = list(fuzz_targets.TARGETS) if a.target == "all" else [a.target]
    for name in names:
        if a.engine == "atheris":
            rep = fuzz_atheris(name, a.runs, a.out, a.mem_gib, a.timeout)
        else:
            rep = fuzz(name, a.runs, a.seed, a.out, a.mem_gib, a.timeout)
        s = dict(rep.summary(), engine=a.engine, seed=a.seed)
        print(json.dumps(s, ensure_ascii=False, indent=1))
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(s, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every input the fuzzer saved as a crash (tests/data/fuzz/<target>/*.bin) now ends in
success or an edgeformer error, within the fuzzer's bounds (5 s of CPU, 2 GiB above the
worker, no signal), replayed by the harness's worker process."""
from __future__ import annotations

import pytest

from ._harness import CORPUS, load_harness

TARGETS = sorted(d.name for d in CORPUS.iterdir() if d.is_dir() and any(d.glob("*.bin")))


@pytest.mark.parametrize("target", TARGETS)
def test_saved_crashes_now_pass(target):
    fz = load_harness()
    files = sorted((CORPUS / target).glob("*.bin"))
    results = fz.replay(target, files)
    bad = [(r["file"].rsplit("/", 1)[-1], r["exc"], r.get("site"), r.get("msg", "")[:120])
           for r in results if r["status"] == "crash"]
    assert not bad, bad
    assert len(results) == len(files)


def test_every_saved_input_is_described():
    """Each saved input has its .json (exception, site, message when found)."""
    for p in CORPUS.rglob("*.bin"):
        assert p.with_suffix(".json").is_file(), p

from __future__ import annotations

from pathlib import Path

import pytest


from support.families import BY_NAME, hf_model, save_hf  # noqa: E402


class Built:
    """One family's HF model, saved once per session, and its edgeformer checkpoints."""

    def __init__(self, name: str, root: Path) -> None:
        self.fam = BY_NAME[name]
        self.model = hf_model(self.fam)
        self.dir = save_hf(self.model, root / name)
        self._ref: dict[tuple[int, bool], object] = {}


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    cache: dict[str, Built] = {}

    def get(name: str) -> Built:
        if name not in cache:
            cache[name] = Built(name, tmp_path_factory.mktemp("hf"))
        return cache[name]

    return get

"""scripts/layers.py, the layer check CI runs: the tree passes it, and an upward import
planted in a copy of the tree (inside a function, as the lazy ones were) fails it by
file and line, as does a package the layer order does not name."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "layers.py"


def _layers(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, timeout=120)


def _copy_tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "edgeformer", tmp_path / "edgeformer", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "ARCHITECTURE.md", tmp_path / "docs")
    return tmp_path


def test_tree_keeps_the_layer_order():
    r = _layers(ROOT)
    assert r.returncode == 0, r.stderr
    assert "largest files:" in r.stdout and "edgeformer/" in r.stdout


def test_planted_upward_import_fails_naming_it(tmp_path):
    root = _copy_tree(tmp_path)
    target = root / "edgeformer" / "quant" / "metrics.py"
    text = target.read_text() + "\n\ndef planted():\n    from edgeformer.runtime.engine import Engine\n    return Engine\n"
    target.write_text(text)
    line = text.splitlines().index("    from edgeformer.runtime.engine import Engine") + 1
    r = _layers(root)
    assert r.returncode == 1
    assert f"edgeformer/quant/metrics.py:{line}: quant imports edgeformer.runtime.engine, from runtime" in r.stderr


def test_package_missing_from_the_order_fails(tmp_path):
    root = _copy_tree(tmp_path)
    (root / "edgeformer" / "newpkg").mkdir()
    (root / "edgeformer" / "newpkg" / "__init__.py").write_text("")
    r = _layers(root)
    assert r.returncode == 1
    assert "edgeformer/newpkg/__init__.py:1: layer 'newpkg' is not in the layer order" in r.stderr

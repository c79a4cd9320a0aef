"""The layer contract of pyproject.toml ([tool.importlinter]) holds, and it does catch a forbidden import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path = ROOT) -> subprocess.CompletedProcess:
    """``lint-imports`` over the ``deemo_jax`` package found in ``tree`` (it puts its working folder first)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=300)


def test_layer_contract_is_kept():
    result = lint_imports()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_a_function_local_import_of_a_higher_layer_breaks_it(tmp_path):
    shutil.copytree(ROOT / "deemo_jax", tmp_path / "deemo_jax", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "deemo_jax" / "models" / "sneaky.py").write_text(
        "def helper():\n    from deemo_jax.train import config  # a lower layer reaching up\n\n    return config\n"
    )
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "deemo_jax.models.sneaky -> deemo_jax.train.config" in result.stdout

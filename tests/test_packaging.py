"""What an installed lodestore puts on the import path: one top-level name, `lodestore`, holding every layer."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_one_top_level_package(tmp_path):
    source = tmp_path / "src"      # a copy: building writes build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("lodestore", "storage", "actors", "coordinator", "sim", "bench", "tests"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                           str(source)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("lodestore-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"lodestore"}
    for layer in ("storage", "storage/datastore", "storage/memorystore", "actors", "coordinator", "sim", "bench"):
        assert f"lodestore/{layer}/__init__.py" in names
    assert not any(name.startswith("lodestore/tests/") for name in names)


def test_the_layers_are_reached_under_lodestore():
    import lodestore
    import lodestore.storage

    assert Path(lodestore.storage.__file__).resolve().parent == ROOT / "storage"
    assert lodestore.World is lodestore.storage.World
    for stray in ("storage", "actors", "coordinator", "sim", "bench"):
        assert stray not in sys.modules or not Path(sys.modules[stray].__file__ or "").is_relative_to(ROOT)

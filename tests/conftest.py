import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HEADSURGEON_SHARED_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """One tiny random model directory per supported architecture."""
    from headsurgeon.model.tiny import TINY_ARCHS, build_tiny

    base = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny(arch, base / arch) for arch in TINY_ARCHS}


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA} (set HEADSURGEON_SHARED_DATA)")
    return SHARED_DATA

from ndif_server import ndif, ndif_server  # noqa: E402,F401 - loopback NDIF fixtures

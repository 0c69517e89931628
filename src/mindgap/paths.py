"""Where the project's files are: its root, the Hydra configs, and the default cache of built artefacts."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "conf"


def default_cache_dir() -> str:
    """``cache_dir`` as conf/common.yaml sets it when not overridden: $MINDGAP_CACHE_DIR, else ~/.cache/mindgap."""
    return os.environ.get("MINDGAP_CACHE_DIR") or str(Path(os.environ.get("HOME", "/tmp")) / ".cache" / "mindgap")

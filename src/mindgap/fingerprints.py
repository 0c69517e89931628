"""Content hashes that identify data, configs, files and verifier settings in manifests and cache keys."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mindgap.records import Problem

if TYPE_CHECKING:
    from mindgap.verification.config import VerifierConfig

# Files of a directory hashed in blocks of this many bytes.
_BLOCK = 1 << 20


def problems_fingerprint(problems: Iterable[Problem]) -> str:
    digest = hashlib.sha256()
    for problem in problems:
        for part in (problem.id, problem.problem, problem.answer, problem.expert_solution or ""):
            digest.update(part.encode())
            digest.update(b"\0")
    return digest.hexdigest()[:16]


def config_fingerprint(config: Any) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: Path, cache_dir: str | Path) -> str:
    """SHA-256 of a file's content, remembered under ``cache_dir`` by (path, size, mtime) so that a big weights file
    is read once; an edited file (new size or mtime) is hashed again.
    """
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    remembered = Path(cache_dir) / "content-hashes" / key
    if remembered.is_file():
        return remembered.read_text().strip()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    remembered.parent.mkdir(parents=True, exist_ok=True)
    temporary = remembered.with_name(f".{key}.{uuid.uuid4().hex}.tmp")
    temporary.write_text(digest.hexdigest())
    os.replace(temporary, remembered)
    return digest.hexdigest()


def math_verify_version() -> str:
    try:
        return version("math-verify")
    except PackageNotFoundError:
        return "not installed"


def verifier_fingerprint(config: VerifierConfig) -> dict[str, Any]:
    """What decides a verdict: the time limit and math-verify's version (not ``workers``, which only schedules)."""
    return {"timeout_s": config.timeout_s, "math_verify": math_verify_version()}

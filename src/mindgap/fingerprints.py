"""Content hashes that identify data and configs in manifests and cache keys."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from mindgap.records import Problem


def problems_fingerprint(problems: Iterable[Problem]) -> str:
    digest = hashlib.sha256()
    for problem in problems:
        for part in (problem.id, problem.problem, problem.answer, problem.expert_solution or ""):
            digest.update(part.encode())
            digest.update(b"\0")
    return digest.hexdigest()[:16]


def config_fingerprint(config: Any) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]

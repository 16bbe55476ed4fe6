"""What produced a result: the code revision, versions, host and device; and fingerprints of resumable work."""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from pathlib import Path

import numpy
import torch

from kdm.device import device


def code_revision() -> str | None:
    """The git commit of this code, with '+dirty' when tracked files differ from it; None outside git."""
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10)
    try:
        head = git("rev-parse", "--verify", "-q", "HEAD")
        if head.returncode:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def provenance() -> dict:
    """What produced a result: versions, host, device and code revision."""
    return {"commit": code_revision(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "host": platform.node(), "threads": torch.get_num_threads(),
            "device": str(device())}


def fingerprint(*parts) -> str:
    """A hash of everything a piece of resumable work depends on - `parts` plus the code revision and the
    torch version: saved progress is reused only if it matches."""
    parts = (*parts, code_revision(), torch.__version__)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

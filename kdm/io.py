"""Files: atomic writes, hashing, logging, provenance."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("kdm")


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling of `path` to write to; rename it onto `path` only on success.

    An interrupted stage therefore never leaves a file (or directory) that Snakemake or DVC would take
    for complete. Works for files and directories alike.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):     # left by a killed writer
        if not _alive(stale.name.rsplit("-", 1)[-1]):
            _remove(stale)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        for f in ([tmp] if tmp.is_file() else sorted(tmp.rglob("*")) + [tmp]):
            _fsync(f)                        # on disk before the rename makes it visible
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        _remove(tmp)


def _fsync(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path):
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; expected the output of an earlier stage") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the file is corrupt, delete it and re-run") from None


def fingerprint(*parts) -> str:
    """A hash of everything a piece of resumable work depends on - `parts` plus the code revision and the
    torch version: saved progress is reused only if it matches."""
    import torch
    parts = (*parts, code_revision(), torch.__version__)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def setup_logging(log_path: str | Path | None) -> None:
    """Log to stderr and, when given, to the stage's log file (appended, so retries stay visible)."""
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="a"))
    rank = f" rank {os.environ['RANK']}" if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""    # torchrun's processes
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format=f"%(asctime)s{rank} %(levelname)s %(name)s: %(message)s")


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
    import numpy
    import torch

    from kdm.training import device
    return {"commit": code_revision(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "host": platform.node(), "threads": torch.get_num_threads(),
            "device": str(device())}

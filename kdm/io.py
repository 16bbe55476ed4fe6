"""Files: atomic writes, JSON, hashing, logging."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
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

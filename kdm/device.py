"""Where the work runs: the compute device and, under torchrun, this process's rank and share of a batch."""
from __future__ import annotations

import os

import torch


def device() -> torch.device:
    """Where stages compute: CUDA when there is a GPU, else the CPU; KDM_DEVICE=cpu|cuda overrides.
    Random draws stay on CPU generators (on a GPU the students draw rows and noise there: kdm.training), so the
    same params give the same bytes on CPU."""
    name = os.environ.get("KDM_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") or (name == "cuda" and not torch.cuda.is_available()):
        raise ValueError(f"KDM_DEVICE={name!r}: expected 'cpu', or 'cuda' on a machine with a CUDA GPU")
    if name == "cuda" and "LOCAL_RANK" in os.environ:       # torchrun: one GPU per process
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def ranks() -> tuple[int, int]:
    """(this process's rank, the number of training processes): torchrun sets RANK and WORLD_SIZE; else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def rank_batch(batch: int, key: str) -> int:
    """This process's share of a training batch. Params give the global batch: under torchrun each of the
    WORLD_SIZE processes draws batch / WORLD_SIZE rows, so a step averages gradients over `batch` rows as
    in one process."""
    world = ranks()[1]
    if batch % world:
        raise ValueError(f"{key}: {batch} is not divisible by the {world} training processes (WORLD_SIZE); "
                         f"expected a multiple of {world}")
    return batch // world

"""Every model the pipeline saves, by name (`arch`), and how it is built, saved and loaded.

A saved model is a state dict (EMA weights) plus the JSON-able arguments that rebuild its module, so
it loads with `torch.load(weights_only=True)` and no pickled code.
"""
from __future__ import annotations

from pathlib import Path

import torch

from kdm.edm import EDMPrecond
from kdm.io import atomic_path
from kdm.nets import ImageClassifier, make_net
from kdm.students import KoopmanStudent, OneStepStudent
from kdm.teachers import DiffusersDenoiser


def edm_teacher(data_shape, net: dict, sigma_data: float, label_dim: int = 0, use_fp16: bool = False) -> EDMPrecond:
    """EDM preconditioning around a denoiser: an MLP (vector data) or a UNet (images: kind unet, or songunet
    as in EDM's own networks, converted by kdm.teachers, with their use_fp16)."""
    return EDMPrecond(make_net(net, data_shape, data_shape, label_dim), sigma_data, label_dim, use_fp16)


ARCHS = {"teacher": edm_teacher, "diffusers": DiffusersDenoiser, "kdm": KoopmanStudent, "kd": OneStepStudent,
         "classifier": ImageClassifier}


def build(arch: str, kwargs: dict, seed: int) -> torch.nn.Module:
    """The module for `arch`, its initial weights a pure function of `seed`."""
    torch.manual_seed(seed)
    return ARCHS[arch](**kwargs)


def save_model(path, arch: str, kwargs: dict, module: torch.nn.Module, data_shape) -> None:
    with atomic_path(path) as tmp:
        torch.save({"arch": arch, "kwargs": kwargs, "data_shape": list(data_shape),
                    "state_dict": module.state_dict()}, tmp)


def load_model(path, to: torch.device | str = "cpu") -> torch.nn.Module:
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        module = ARCHS[ckpt["arch"]](**ckpt["kwargs"])
        module.load_state_dict(ckpt["state_dict"])
        module.data_shape = tuple(ckpt["data_shape"])
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; expected a model written by a train or teacher stage") from None
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise ValueError(f"{path}: not a loadable model checkpoint ({type(e).__name__}: {e})") from None
    return module.eval().requires_grad_(False).to(to)

"""Real diffusion teachers, converted once into this project's format: a state dict plus JSON-able kwargs
(kdm.models.save_model), so later stages load them with torch.load(weights_only=True) and no foreign code.

- EDM network pickles (NVlabs/edm, e.g. edm-cifar10-32x32-uncond-vp.pkl): a dict whose 'ema' is a persistent
  EDMPrecond(SongUNet) that carries its own source code. Unpickling runs that code, so a file is only opened
  when its sha256 equals a pinned value (or the user opts in), with an EDM checkout on sys.path for the
  duration of the conversion only. The weights load strictly into kdm.edm.EDMPrecond(kdm.unet.SongUNet).
- diffusers DDPM pipelines (a UNet2DModel and its DDPMScheduler, VP with epsilon prediction): wrapped as an
  EDM-style denoiser D(x; sigma) (DiffusersDenoiser); its weights and noise table go into the state dict.
"""
from __future__ import annotations

import contextlib
import json
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdm.io import sha256_file

# EDM's SongUNet arguments that select its DDPM++ configuration, the only one kdm.unet implements; a pickle's
# init_kwargs may omit them: SongUNet's defaults are these values, but EDMPrecond's model_type is ADM's
DDPMPP = dict(model_type="SongUNet", embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
              decoder_type="standard", resample_filter=[1, 1], channel_mult_emb=4)
# EDM's SongUNet defaults for the sizes (its released configs override model_channels and channel_mult only)
SONGUNET_SIZES = dict(model_channels=128, channel_mult=[1, 2, 2, 2], num_blocks=4, attn_resolutions=[16],
                      dropout=0.10, augment_dim=0)
# read but not needed to compute D: classifier-free label dropout (training only) and the noise range the
# network was trained for (the sampler's range comes from params)
EDM_IGNORED = ("label_dropout", "sigma_min", "sigma_max")


@dataclass
class Converted:
    """A real teacher in this project's format: kdm.models.ARCHS[arch](**kwargs) loads `state` strictly."""
    arch: str
    kwargs: dict
    state: dict
    data_shape: list
    sha256: str            # of the file (EDM) or of the weights read (diffusers), for the record


def edm_teacher_kwargs(class_name: str, init_kwargs: dict, where: str = "teacher") -> dict:
    """kdm.models.edm_teacher kwargs for an EDM network with these constructor arguments; other EDM
    architectures or preconditionings raise ValueError naming the argument."""
    if class_name != "EDMPrecond":
        raise ValueError(f"{where}.path: the network is EDM's {class_name}; only EDMPrecond (EDM preconditioning) "
                         "is implemented, not VP/VE/iDDPM preconditioning")
    kw = dict(init_kwargs)
    for key, want in DDPMPP.items():
        got = kw.pop(key, "DhariwalUNet" if key == "model_type" else want)
        if (list(got) if isinstance(got, tuple) else got) != want:
            raise ValueError(f"{where}.path: the network has {key}={got!r}; only EDM's DDPM++ SongUNet "
                             f"({key}={want!r}) is implemented, not NCSN++ or ADM")
    net = {"kind": "songunet", **{k: kw.pop(k, v) for k, v in SONGUNET_SIZES.items()}}
    net = {k: list(v) if isinstance(v, tuple) else v for k, v in net.items()}
    channels, res = kw.pop("img_channels"), kw.pop("img_resolution")
    out = dict(data_shape=[channels, res, res], net=net, sigma_data=float(kw.pop("sigma_data", 0.5)),
               label_dim=int(kw.pop("label_dim", 0)))
    if kw.pop("use_fp16", False):       # float16 on GPUs, as EDM runs it; absent when false (kwargs as before)
        out["use_fp16"] = True
    unknown = sorted(set(kw) - set(EDM_IGNORED))
    if unknown:
        raise ValueError(f"{where}.path: the network has arguments kdm does not implement: {unknown}")
    return out


@contextlib.contextmanager
def _edm_code(source: Path):
    """EDM's modules importable from `source` for the duration only; what was imported from there, and the
    modules the pickles' embedded code created, are forgotten afterwards."""
    before, entry = set(sys.modules), str(source.resolve())
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        sys.path.remove(entry)
        for name in set(sys.modules) - before:
            file = getattr(sys.modules[name], "__file__", None) or ""
            if name.startswith("_imported_module_") or file.startswith(entry):
                del sys.modules[name]


def convert_edm_pickle(path, sha256: str | None, trust_unpinned: bool, edm_source, where: str = "teacher") -> Converted:
    """The EMA network of an EDM pickle as arch "teacher". `sha256`: the file's pinned hash; without it
    `trust_unpinned` must be true. `edm_source`: an NVlabs/edm checkout (its torch_utils and dnnlib)."""
    path, source = Path(path), Path(edm_source)
    if not path.is_file():
        raise FileNotFoundError(f"{where}.path: {path} does not exist; expected an EDM network pickle (.pkl)")
    digest = sha256_file(path)
    if sha256 and digest != sha256.lower():
        raise ValueError(f"{where}.sha256: {path} has sha256 {digest}, expected {sha256}; unpickling runs code "
                         "stored in the file, so only the pinned file is opened")
    if not sha256 and not trust_unpinned:
        raise ValueError(f"{where}.sha256: not set; unpickling {path} runs code stored in it. Check where the file "
                         f"comes from and pin it (sha256: {digest}), or set {where}.trust_unpinned: true")
    if not (source / "torch_utils" / "persistence.py").is_file():
        raise FileNotFoundError(f"{where}.edm_source: {source} is not an NVlabs/edm checkout (no "
                                "torch_utils/persistence.py); its code is needed to unpickle EDM networks")
    with _edm_code(source), open(path, "rb") as f:
        data = pickle.load(f)  # noqa: S301 - the file is pinned by sha256 or explicitly trusted
        if not isinstance(data, dict) or "ema" not in data:
            raise ValueError(f"{where}.path: {path} is not an EDM network pickle (expected a dict with 'ema')")
        net = data["ema"]
        kwargs = edm_teacher_kwargs(type(net).__name__, dict(net.init_kwargs), where)
        state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return Converted("teacher", kwargs, state, kwargs["data_shape"], digest)


def interp(x, xp, fp):
    """Piecewise-linear interpolation of (xp, fp) at x, xp increasing, clamped to the ends."""
    i = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    w = ((x - xp[i - 1]) / (xp[i] - xp[i - 1])).clamp(0, 1)
    return fp[i - 1] + w * (fp[i] - fp[i - 1])


class DiffusersDenoiser(nn.Module):
    """D(x; sigma) = x - sigma eps(x / sqrt(1 + sigma^2), t(sigma)) for a diffusers UNet2DModel that predicts
    the noise eps of a VP (DDPM) process x_vp = sqrt(a) x0 + sqrt(1 - a) eps, a = alphas_cumprod[t].

    The VP state is the EDM state x = x0 + sigma eps scaled by sqrt(a) with sigma = sqrt((1 - a) / a); the
    timestep of a sigma interpolates the scheduler's table linearly in log sigma (so the ODE stays smooth
    between its integer steps). `unet`: the UNet2DModel config; `alphas_cumprod` is a buffer in the state dict.
    """

    def __init__(self, unet: dict, num_train_timesteps: int):
        try:
            from diffusers import UNet2DModel
        except ImportError:
            raise ImportError("a diffusers teacher needs the diffusers package: pip install 'kdm[diffusers]'") from None
        super().__init__()
        self.unet = UNet2DModel.from_config(unet)
        self.label_dim = unet.get("num_class_embeds") or 0
        self.register_buffer("alphas_cumprod", torch.zeros(num_train_timesteps, dtype=torch.float64))

    def forward(self, x, sigma, labels=None):
        sigma = sigma.to(torch.float32).reshape(-1).expand(x.shape[0])
        a = self.alphas_cumprod
        log_sigmas = (0.5 * ((1 - a) / a).log()).to(torch.float32)      # increasing with t
        t = interp(sigma.log(), log_sigmas, torch.arange(len(a), dtype=torch.float32, device=x.device))
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        x = x.to(torch.float32)
        eps = self.unet(x / (1 + s ** 2).sqrt(), t, class_labels=labels if self.label_dim else None).sample
        return x - s * eps


def _json(obj):
    return json.loads(json.dumps(obj))


def convert_diffusers(path, where: str = "teacher") -> Converted:
    """A diffusers DDPM pipeline folder (unet/ and scheduler/, as save_pretrained writes them) as arch "diffusers"."""
    try:
        from diffusers import DDPMScheduler, UNet2DModel
    except ImportError:
        raise ImportError(f"{where}.source: diffusers needs the diffusers package: pip install 'kdm[diffusers]'") from None
    path = Path(path)
    unet_dir, sched_dir = path / "unet", path / "scheduler"
    for config in (unet_dir / "config.json", sched_dir / "scheduler_config.json"):
        if not config.is_file():
            raise FileNotFoundError(f"{where}.path: {config} does not exist; expected a diffusers DDPM pipeline folder "
                                    "(unet/ and scheduler/, as save_pretrained writes them)")
    unet = UNet2DModel.from_pretrained(unet_dir, local_files_only=True)
    sched = DDPMScheduler.from_pretrained(sched_dir, local_files_only=True)
    if sched.config.prediction_type != "epsilon":
        raise ValueError(f"{where}.path: the scheduler's prediction_type is {sched.config.prediction_type!r}; "
                         "only epsilon prediction is implemented")
    cfg = unet.config
    if cfg.in_channels != cfg.out_channels or not isinstance(cfg.sample_size, int):
        raise ValueError(f"{where}.path: expected a square UNet2DModel with as many output as input channels, got "
                         f"sample_size {cfg.sample_size}, channels {cfg.in_channels} -> {cfg.out_channels}")
    kwargs = dict(unet=_json({k: v for k, v in cfg.items() if not k.startswith("_")}),   # no local paths
                  num_train_timesteps=len(sched.alphas_cumprod))
    state = {f"unet.{k}": v.detach().clone() for k, v in unet.state_dict().items()}
    state["alphas_cumprod"] = sched.alphas_cumprod.to(torch.float64)
    digest = sha256_file(min(unet_dir.glob("diffusion_pytorch_model*")))      # from_pretrained found it
    return Converted("diffusers", kwargs, state, [cfg.in_channels, cfg.sample_size, cfg.sample_size], digest)

"""Real teachers: EDM network pickles (through a tiny stand-in for NVlabs/edm's code, pickled the way EDM's
persistence does: class source embedded, reconstructed by exec) and diffusers DDPM pipelines."""
import csv
import importlib
import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
from test_unet import edm_forward, edm_shapes, random_edm_state

from kdm import dag, teachers
from kdm.edm import edm_sampler
from kdm.io import sha256_file
from kdm.stages import teacher as teacher_stage
from kdm.models import ARCHS, load_model, save_model

# a stand-in for NVlabs/edm's torch_utils/persistence.py: instances pickle as (source of their module, class
# name, state), and unpickling execs that source in a fresh module, as EDM's does
PERSISTENCE = '''
import copy, inspect, sys, types, uuid
_sources = {}

def persistent_class(cls):
    src = _sources.get(cls.__module__) or inspect.getsource(sys.modules[cls.__module__])
    class Decorator(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_kwargs = copy.deepcopy(kwargs)
        @property
        def init_kwargs(self):
            return copy.deepcopy(self._init_kwargs)
        def __reduce__(self):
            return _reconstruct, (dict(module_src=src, class_name=cls.__name__, state=self.__dict__),)
    Decorator.__name__, Decorator.__module__ = cls.__name__, cls.__module__
    return Decorator

def _reconstruct(meta):
    name = "_imported_module_" + uuid.uuid4().hex
    module = sys.modules[name] = types.ModuleType(name)
    _sources[name] = meta["module_src"]
    exec(meta["module_src"], module.__dict__)
    obj = module.__dict__[meta["class_name"]].__new__(module.__dict__[meta["class_name"]])
    obj.__dict__.update(meta["state"])
    return obj
'''
NETWORKS = '''
import torch
from torch_utils import persistence

@persistence.persistent_class
class EDMPrecond(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0,
                 sigma_max=float("inf"), sigma_data=0.5, model_type="DhariwalUNet", **model_kwargs):
        super().__init__()
        self.model = torch.nn.Module()     # the test plants EDM's parameters in it by name
'''
# EDM's train.py --arch=ddpmpp --precond=edm, shrunk to 1x8x8 digits
INIT = dict(img_resolution=8, img_channels=1, label_dim=0, use_fp16=False, model_type="SongUNet",
            embedding_type="positional", encoder_type="standard", decoder_type="standard", channel_mult_noise=1,
            resample_filter=[1, 1], model_channels=16, channel_mult=[1, 2], num_blocks=2, attn_resolutions=[4],
            augment_dim=9, dropout=0.13)
SHAPES = edm_shapes(in_channels=1, out_channels=1, **{k: v for k, v in INIT.items() if k != "img_channels"})
SAMPLER = dict(steps=3, sigma_min=0.002, sigma_max=80.0, rho=7.0)


def plant(module, state):
    """Register each dotted key of `state` on `module`, creating plain submodules on the way."""
    for key, value in state.items():
        *path, leaf = key.split(".")
        m = module
        for name in path:
            if not hasattr(m, name):
                m.add_module(name, torch.nn.Module())
            m = getattr(m, name)
        if leaf == "resample_filter":
            m.register_buffer(leaf, value)
        else:
            m.register_parameter(leaf, torch.nn.Parameter(value))


@pytest.fixture
def edm_pickle(tmp_path):
    """(pickle path, EDM source folder, the planted state dict); EDM's code is off sys.path afterwards."""
    source = tmp_path / "edm"
    for rel, text in {"torch_utils/__init__.py": "", "torch_utils/persistence.py": PERSISTENCE,
                      "training/__init__.py": "", "training/networks.py": NETWORKS}.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_text(text)
    state = random_edm_state(SHAPES)
    sys.path.insert(0, str(source))
    try:
        net = importlib.import_module("training.networks").EDMPrecond(**INIT)
        plant(net, state)
        path = tmp_path / "edm-digits-8x8-uncond-vp.pkl"
        path.write_bytes(pickle.dumps({"ema": net, "loss_fn": None}))
    finally:
        sys.path.remove(str(source))
        for name in [n for n in sys.modules if n.split(".")[0] in ("torch_utils", "training")]:
            del sys.modules[name]
    return path, source, state


def test_edm_pickle_converts_to_weights_that_compute_edms_network(edm_pickle, tmp_path):
    path, source, state = edm_pickle
    got = teachers.convert_edm_pickle(path, sha256_file(path), False, source)
    assert got.arch == "teacher" and got.data_shape == [1, 8, 8] and got.sha256 == sha256_file(path)
    assert got.kwargs["net"] == dict(kind="songunet", model_channels=16, channel_mult=[1, 2], num_blocks=2,
                                     attn_resolutions=[4], dropout=0.13, augment_dim=9)
    assert str(source.resolve()) not in sys.path and "torch_utils" not in sys.modules, "EDM's code is forgotten"
    net = ARCHS["teacher"](**got.kwargs)
    net.load_state_dict(got.state, strict=True)
    save_model(tmp_path / "model.pt", got.arch, got.kwargs, net, got.data_shape)
    net = load_model(tmp_path / "model.pt")
    x, noise = torch.randn(2, 1, 8, 8), torch.randn(2)
    torch.testing.assert_close(net.model(x, noise), edm_forward(state, x, noise), rtol=1e-4, atol=1e-4)


def test_edm_pickle_is_opened_only_when_pinned_or_trusted(edm_pickle, tmp_path):
    path, source, _ = edm_pickle
    with pytest.raises(ValueError, match=r"teacher.sha256: .* has sha256 [0-9a-f]{64}, expected 0{64}"):
        teachers.convert_edm_pickle(path, "0" * 64, True, source)
    with pytest.raises(ValueError, match=rf"teacher.sha256: not set; .*pin it \(sha256: {sha256_file(path)}\)"):
        teachers.convert_edm_pickle(path, None, False, source)
    assert teachers.convert_edm_pickle(path, None, True, source).sha256 == sha256_file(path)
    with pytest.raises(FileNotFoundError, match="teacher.path: .*missing.pkl does not exist"):
        teachers.convert_edm_pickle(tmp_path / "missing.pkl", None, True, source)
    with pytest.raises(FileNotFoundError, match="teacher.edm_source: .* is not an NVlabs/edm checkout"):
        teachers.convert_edm_pickle(path, sha256_file(path), False, tmp_path / "nowhere")


@pytest.mark.parametrize("class_name,change,message", [
    ("VPPrecond", {}, "only EDMPrecond"),
    ("EDMPrecond", {"model_type": "DhariwalUNet"}, "model_type='DhariwalUNet'"),
    ("EDMPrecond", {"embedding_type": "fourier"}, "embedding_type='fourier'.*not NCSN"),
    ("EDMPrecond", {"resample_filter": [1, 3, 3, 1]}, r"resample_filter=\[1, 3, 3, 1\]"),
    ("EDMPrecond", {"label_dropout": 0.1, "sigma_data": 0.5}, None),
    ("EDMPrecond", {"adaptive_scale": True}, r"does not implement: \['adaptive_scale'\]"),
])
def test_only_ddpmpp_edm_networks_convert(class_name, change, message):
    if message is None:
        assert teachers.edm_teacher_kwargs(class_name, {**INIT, **change})["sigma_data"] == 0.5
        return
    with pytest.raises(ValueError, match=message):
        teachers.edm_teacher_kwargs(class_name, {**INIT, **change})


def test_an_edm_network_without_model_type_is_adm():
    """EDMPrecond's default model_type is DhariwalUNet (ADM), which is not implemented."""
    with pytest.raises(ValueError, match="model_type='DhariwalUNet'"):
        teachers.edm_teacher_kwargs("EDMPrecond", {k: v for k, v in INIT.items() if k != "model_type"})


def digits_stage(tmp_path, teacher: dict):
    d = tmp_path / "run"
    files = dag.model_files("unused", "teacher")
    stage = dag.Stage(name="digits-teacher", cmd="", deps=dag.Files(), params=(), log="",
                      outs=dag.Files({k: str(d / Path(v).name) for k, v in files["outs"].items()}),
                      plots=dag.Files({k: str(d / Path(v).name) for k, v in files["plots"].items()}))
    return stage, {"data": {"kind": "digits", "conditional": False}, "teacher": teacher}


def test_teacher_stage_converts_an_edm_pickle_once(edm_pickle, tmp_path):
    path, source, state = edm_pickle
    stage, P = digits_stage(tmp_path, dict(source="edm-pickle", path=str(path), sha256=sha256_file(path),
                                           edm_source=str(source)))
    teacher_stage.run(stage, P)
    model_pt, config_json, train_csv, loss_png = stage.outputs
    config = json.loads(open(config_json).read())
    assert config["source"] == {"kind": "edm-pickle", "path": str(path), "sha256": sha256_file(path)}
    assert list(csv.reader(open(train_csv))) == [["step", "loss"]] and open(loss_png, "rb").read(4) == b"\x89PNG"
    net = load_model(model_pt)
    assert net.label_dim == 0 and net.data_shape == (1, 8, 8)
    x = edm_sampler(net, torch.randn(2, 1, 8, 8) * 80, **SAMPLER)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
    P["data"]["conditional"] = True
    with pytest.raises(ValueError, match=r"teacher.path: .* with 0 classes, but data \(digits\) .* and 10 classes"):
        teacher_stage.run(stage, P)


@pytest.fixture
def ddpm_folder(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2)
    folder = tmp_path / "ddpm"
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000)).save_pretrained(folder)
    return folder, unet.eval()


def test_diffusers_teacher_is_an_edm_denoiser(ddpm_folder, tmp_path):
    folder, unet = ddpm_folder
    got = teachers.convert_diffusers(folder)
    assert got.arch == "diffusers" and got.data_shape == [1, 8, 8]
    net = ARCHS["diffusers"](**got.kwargs)
    net.load_state_dict(got.state, strict=True)
    save_model(tmp_path / "model.pt", got.arch, got.kwargs, net, got.data_shape)
    net = load_model(tmp_path / "model.pt")
    a = net.alphas_cumprod
    k = torch.tensor([10, 500])
    sigma = ((1 - a[k]) / a[k]).sqrt().float()                  # exactly the scheduler's timesteps k
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        eps = unet(x / (1 + sigma[:, None, None, None] ** 2).sqrt(), k.float()).sample
        torch.testing.assert_close(net(x, sigma), x - sigma[:, None, None, None] * eps, rtol=1e-4, atol=1e-4)
    out = edm_sampler(net, torch.randn(2, 1, 8, 8) * 80, **SAMPLER)    # sigma beyond the table: clamped
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


def test_diffusers_teacher_stage_and_errors(ddpm_folder, tmp_path):
    folder, _ = ddpm_folder
    stage, P = digits_stage(tmp_path, dict(source="diffusers", path=str(folder)))
    teacher_stage.run(stage, P)
    assert load_model(stage.outs.model).label_dim == 0
    with pytest.raises(FileNotFoundError, match="teacher.path: .*config.json does not exist"):
        teachers.convert_diffusers(tmp_path)
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prediction_type": "v_prediction"}))
    with pytest.raises(ValueError, match="prediction_type is 'v_prediction'; only epsilon"):
        teachers.convert_diffusers(folder)

"""params.yaml validation: every error names the key and what was expected."""
import copy

import pytest
import yaml

from kdm import config
from kdm.config import ParamsError

from conftest import ROOT, shipped


def test_shipped_params_are_valid():
    params = config.load(ROOT / "params.yaml")
    assert params["experiments"]


IMPORT = {"source": "import", "format": "kdm-npz", "path": "pairs", "sigma_max": 80.0}


def _error(params) -> str:
    with pytest.raises(ParamsError) as e:
        config.validate(params, "p.yaml")
    return str(e.value)


@pytest.mark.parametrize("mutate,expect", [
    (lambda p: p["checkerboard"]["kdm"].update(lr="fast"), ["checkerboard.kdm.lr", "'fast'", "number"]),
    (lambda p: p["checkerboard"]["kdm"].update(lr=-1), ["checkerboard.kdm.lr", "exclusiveMinimum"]),
    (lambda p: p["checkerboard"]["kdm"].update(learning_rate=1e-3), ["checkerboard.kdm", "learning_rate"]),
    (lambda p: p["checkerboard"]["teacher"].pop("seed"), ["checkerboard.teacher", "'seed' is a required"]),
    (lambda p: p["checkerboard"]["sampler"].update(steps=1), ["checkerboard.sampler.steps", "minimum"]),
    (lambda p: p["checkerboard"]["data"].update(kind="moons"), ["checkerboard.data.kind", "enum"]),
    (lambda p: p["checkerboard"]["pairs"].update(shards=3), ["checkerboard.pairs.shards", "divide"]),
    (lambda p: p["checkerboard"]["kd"]["rec_loss"].update(kind="l3"), ["checkerboard.kd.rec_loss.kind"]),
    (lambda p: p["checkerboard"]["kdm"].update(betas=[0.9]), ["checkerboard.kdm.betas"]),
    (lambda p: p["checkerboard"]["evaluate"].update(seed_start=0), ["checkerboard.evaluate.seed_start", "overlap"]),
    (lambda p: p["checkerboard"]["sampler"].update(sigma_min=100.0), ["checkerboard.sampler.sigma_min"]),
    (lambda p: p.update(experiments=["nope"]), ["experiments", "'nope'"]),
    (lambda p: p.update(experiments=[]), ["experiments"]),
    (lambda p: p.pop("experiments"), ["'experiments' is a required"]),
    (lambda p: p["checkerboard"].update(teacher={"source": "hub"}), ["checkerboard.teacher.source", "edm-pickle"]),
    (lambda p: p["checkerboard"].update(teacher={"source": "edm-pickle", "path": "a.pkl"}),
     ["checkerboard.teacher", "'edm_source' is a required"]),
    (lambda p: p["checkerboard"].update(teacher={"source": "edm-pickle", "path": "a.pkl", "edm_source": "edm",
                                           "sha256": "abc"}), ["checkerboard.teacher.sha256", "pattern"]),
    (lambda p: p["checkerboard"].update(teacher={"source": "diffusers", "path": "d", "lr": 0.1}),
     ["checkerboard.teacher", "'lr' was unexpected"]),
    (lambda p: p["checkerboard"]["teacher"].update(source="train", net={"kind": "unet"}), ["checkerboard.teacher.net"]),
    (lambda p: p["checkerboard"].update(pairs=IMPORT | {"sigma_max": 40.0}), ["checkerboard.pairs.sigma_max", "80"]),
    (lambda p: p["checkerboard"].update(pairs=IMPORT | {"format": "zip"}), ["checkerboard.pairs.format", "enum"]),
    (lambda p: p["checkerboard"].update(pairs=IMPORT | {"options": {"batch": 2}}), ["checkerboard.pairs.options", "kdm-npz"]),
    (lambda p: p["checkerboard"].update(pairs=IMPORT | {"count": 10}), ["checkerboard.pairs", "'count' was unexpected"]),
    (lambda p: p["checkerboard"].update(pairs={"source": "import", "format": "get"}),
     ["checkerboard.pairs", "'path' is a required"]),
    (lambda p: p["checkerboard"]["kdm"].update(data_order="shuffled"), ["checkerboard.kdm.data_order", "enum"]),
    (lambda p: p["checkerboard"]["kdm"].update(encoder_act="tanh"), ["checkerboard.kdm.encoder_act", "enum"]),
    (lambda p: p["checkerboard"]["kdm"]["net"].update(time_input=1), ["checkerboard.kdm.net.time_input", "boolean"]),
])
def test_invalid_params_name_the_key(params, mutate, expect):
    p = copy.deepcopy(params)
    mutate(p)
    message = _error(p)
    assert message.startswith("p.yaml: ")
    for fragment in expect:
        assert fragment in message, message


@pytest.mark.parametrize("mutate,expect", [
    (lambda b: b["pairs"].update(shards=[1, 3]), ["benchmark.pairs.shards", "3 does not divide"]),
    (lambda b: b["sampling"].update(batches=[]), ["benchmark.sampling.batches", "minItems"]),
    (lambda b: b["memory"].update(scale=1), ["benchmark.memory.scale", "minimum"]),
    (lambda b: b.pop("training"), ["benchmark", "'training' is a required"]),
])
def test_invalid_benchmark_params_name_the_key(params, mutate, expect):
    p, shipped = copy.deepcopy(params), config.load(ROOT / "params.yaml")
    p["benchmark"], p["cifar10-uncond"] = copy.deepcopy(shipped["benchmark"]), copy.deepcopy(shipped["cifar10-uncond"])
    config.validate(p, "p.yaml")
    mutate(p["benchmark"])
    message = _error(p)
    for fragment in expect:
        assert fragment in message, message


@pytest.mark.parametrize("teacher", [
    {"source": "edm-pickle", "path": "edm-cifar10-32x32-uncond-vp.pkl", "sha256": "0" * 64, "edm_source": "edm"},
    {"source": "edm-pickle", "path": "a.pkl", "trust_unpinned": True, "edm_source": "edm"},
    {"source": "diffusers", "path": "ddpm-folder"},
])
def test_loaded_teachers_need_no_training_params(params, teacher):
    p = copy.deepcopy(params)
    p["checkerboard"]["teacher"] = teacher
    config.validate(p)


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("experiments: [checkerboard\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        config.load(bad)
    with pytest.raises(ParamsError, match="cannot read"):
        config.load(tmp_path / "missing.yaml")
    bad.write_text("- a list\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        config.load(bad)


def test_schema_file_is_the_one_snakemake_validates_with():
    assert "validate(config, str(kdm_config.SCHEMA_PATH))" in (ROOT / "workflow/rules/common.smk").read_text()
    assert yaml.safe_load(config.SCHEMA_PATH.read_text())["$schema"].endswith("2020-12/schema")


def test_imported_pairs_replace_the_sampled_keys(params):
    p = copy.deepcopy(params)
    p["checkerboard"]["pairs"] = IMPORT | {"format": "get", "options": {"seed_start": 0, "batch": 250, "world_size": 4}}
    with pytest.raises(ParamsError, match=r"checkerboard\.rederive: imported pairs record no teacher"):
        config.validate(p, "p.yaml")            # a section no stage could act on is refused, not ignored
    del p["checkerboard"]["rederive"]
    config.validate(p)


PRESETS = ["cifar10-uncond", "cifar10-cond", "ffhq64", "afhqv2-64"]


@pytest.mark.parametrize("mutate,expect", [
    (lambda e: e["data"].update(resolution=0), ["data.resolution", "minimum"]),
    (lambda e: e["data"].pop("classes"), ["data", "'classes' is a required"]),
    (lambda e: e["data"].update(channels=2), ["data.channels", "enum"]),
    (lambda e: e["evaluate"].update(kid_subset=100), ["evaluate.kid_subset", "classifier extractor only"]),
    (lambda e: e["evaluate"]["extractor"].update(reference=""), ["evaluate.extractor.reference", "non-empty"]),
    (lambda e: e["evaluate"].update(extractor={"kind": "classifier"}, kid_subset=100, prc_neighborhood=3),
     ["'classifier' is a required"]),
    (lambda e: e.update(classifier=shipped()["digits"]["classifier"]),
     ["classifier", "only with evaluate.extractor.kind classifier"]),
    (lambda e: e["kdm"].update(latent_dim=8192), ["kdm.latent_dim", "exceeds"]),
])
def test_image_data_by_path_is_checked(mutate, expect):
    p = shipped()
    mutate(p["ffhq64"])
    message = _error(p)
    for fragment in expect:
        assert fragment in message, message


def test_an_image_folder_cannot_use_the_digit_classifier():
    p = shipped()
    p["cifar10-cond"]["evaluate"].update(extractor={"kind": "classifier"}, kid_subset=100, prc_neighborhood=3)
    p["cifar10-cond"]["classifier"] = copy.deepcopy(p["digits"]["classifier"])
    assert "cifar10-cond.evaluate.extractor.kind: classifier is trained on the digits" in _error(p)


def test_the_patch_head_needs_a_4x4_map():
    p = shipped()
    p["digits"]["kdm"]["adversary"]["head"] = "patch"
    assert "digits.kdm.adversary.widths: 3 stride-2 convs do not fit 8x8 images with the patch head; " \
        "expected at most 1" in _error(p)


def test_presets_have_the_papers_settings():
    p = config.load(ROOT / "params.yaml")
    assert not set(PRESETS) & set(p["experiments"]), "presets do not run by default"
    for name in PRESETS:
        e = p[name]
        assert e["teacher"]["source"] == "edm-pickle" and e["teacher"]["path"].endswith(
            ("-cond-vp.pkl" if name == "cifar10-cond" else "-uncond-vp.pkl"))
        assert e["sampler"]["steps"] == (18 if "cifar" in name else 40)
        assert e["pairs"]["count"] == (250000 if "afhq" in name else 1000000) and e["pairs"]["seed_start"] == 0
        for model in ("kdm", "kd"):
            s = e[model]
            # the authors' configs: 64 base channels at 32x32, 32 at 64x64 (docs/authors-code.md)
            assert s["net"] == {"kind": "songunet", "model_channels": 64 if "cifar" in name else 32,
                                "channel_mult": [1, 2, 2, 2], "num_blocks": 4, "attn_resolutions": [16], "dropout": 0.1}
            assert s["rec_loss"]["kind"] == "lpips" and s["rec_loss"]["pooling"] == "avg"
            assert (s["lr"], s["lr_schedule"], s["batch"], s["iterations"], s["ema"], s["data_order"]) == \
                (3e-4, "constant", 128, 800000, 0.9999, "epochs")
        assert e["kdm"]["latent_dim"] == (1024 if "cifar" in name else 512) and e["kdm"]["loss_weights"]["adv"] == 0.01
        assert e["kdm"]["adversary"]["head"] == "patch" and e["kdm"]["scale_x_T"] is False
        assert (e["kdm"]["latent_noise"], e["kdm"]["loss_weights"]["push"]) == (0.4, 1.0)
        assert e["evaluate"]["samples"] == 50000 and e["evaluate"]["extractor"]["kind"] == "inception-v3-compat"
    assert p["cifar10-cond"]["data"]["classes"] == 10 and p["cifar10-uncond"]["data"]["classes"] == 0

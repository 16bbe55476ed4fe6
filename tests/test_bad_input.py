"""Bad input suite: each case exits non-zero from both `snakemake` and `dvc repro`, names the key or
file and what was expected, and leaves nothing new under results/."""
import copy

import pytest

from conftest import both_kinds, tiny_params
import workspace
from workspace import TINY_UNET, Workspace

pytestmark = pytest.mark.e2e


def set_key(path, value):
    return lambda p: workspace.set_key(p, path, value)


def to_inception(extractor):
    """digits-cond evaluated with `extractor` instead of its classifier: without the classifier-only keys."""
    def mutate(p):
        exp = p["digits-cond"]
        exp.pop("classifier")
        for key in ("kid_subset", "prc_neighborhood"):
            exp["evaluate"].pop(key)
        exp["evaluate"]["extractor"] = extractor
    return mutate


def drop_key(path):
    def mutate(p):
        *parents, last = path.split(".")
        node = p
        for k in parents:
            node = node[k]
        del node[last]
    return mutate


# (id, mutation of the tiny params or raw YAML text, fragments the message must contain)
# Found by this suite and fixed: a missing key inside a shared sub-schema was reported as "unexpected"
# keys; uniqueItems was not named as the expectation; bad YAML was reported by Snakemake without the
# file name (params.yaml is now checked by kdm.config before Snakemake loads it).
PARAMS_CASES = [
    ("unknown-key-kdm", set_key("checkerboard.kdm.learning_rate", 1e-3), ["checkerboard.kdm", "learning_rate"]),
    ("unknown-key-teacher", set_key("checkerboard.teacher.depth", 3), ["checkerboard.teacher", "depth"]),
    ("unknown-stage-section", set_key("checkerboard.distill", {}), ["checkerboard", "distill"]),
    ("experiment-not-a-mapping", set_key("checkerboard", 5), ["checkerboard", "'object'"]),
    ("lr-string", set_key("checkerboard.kdm.lr", "fast"), ["checkerboard.kdm.lr", "'fast'", "number"]),
    ("lr-negative", set_key("checkerboard.kd.lr", -0.1), ["checkerboard.kd.lr", "exclusiveMinimum"]),
    ("lr-above-one", set_key("checkerboard.teacher.lr", 3.0), ["checkerboard.teacher.lr", "maximum"]),
    ("iterations-zero", set_key("checkerboard.teacher.iterations", 0), ["checkerboard.teacher.iterations", "minimum"]),
    ("iterations-float", set_key("checkerboard.kdm.iterations", 1.5), ["checkerboard.kdm.iterations", "integer"]),
    ("batch-missing", drop_key("checkerboard.kdm.batch"), ["checkerboard.kdm", "'batch' is a required"]),
    ("sampler-one-step", set_key("checkerboard.sampler.steps", 1), ["checkerboard.sampler.steps", "minimum"]),
    ("sigma-min-above-max", set_key("checkerboard.sampler.sigma_min", 100.0), ["checkerboard.sampler.sigma_min", "below"]),
    ("rho-negative", set_key("checkerboard.sampler.rho", -7), ["checkerboard.sampler.rho", "exclusiveMinimum"]),
    ("shards-do-not-divide", set_key("checkerboard.pairs.shards", 3), ["checkerboard.pairs.shards", "divide"]),
    ("empty-store", set_key("checkerboard.pairs.count", 0), ["checkerboard.pairs.count", "minimum"]),
    ("seed-start-negative", set_key("checkerboard.pairs.seed_start", -1), ["checkerboard.pairs.seed_start", "minimum"]),
    ("eval-seeds-overlap-pairs", set_key("checkerboard.evaluate.seed_start", 10), ["checkerboard.evaluate.seed_start", "overlap"]),
    ("eval-too-few-samples", set_key("checkerboard.evaluate.samples", 10), ["checkerboard.evaluate.samples", "minimum"]),
    ("data-kind-unknown", set_key("checkerboard.data.kind", "moons"), ["checkerboard.data.kind", "enum"]),
    ("board-one-cell", set_key("checkerboard.data.cells", 1), ["checkerboard.data.cells", "minimum"]),
    ("experiment-missing", set_key("experiments", ["checkerboard", "cifar"]), ["experiments", "'cifar'"]),
    ("experiments-empty", set_key("experiments", []), ["experiments", "minItems"]),
    ("experiments-missing", drop_key("experiments"), ["'experiments' is a required"]),
    ("betas-one-value", set_key("checkerboard.kdm.betas", [0.9]), ["checkerboard.kdm.betas", "minItems"]),
    ("ema-one", set_key("checkerboard.kd.ema", 1.0), ["checkerboard.kd.ema", "exclusiveMaximum"]),
    ("rec-loss-unknown", set_key("checkerboard.kdm.rec_loss.kind", "lpips3"), ["checkerboard.kdm.rec_loss.kind", "enum"]),
    ("loss-weight-negative", set_key("checkerboard.kdm.loss_weights.push", -1), ["checkerboard.kdm.loss_weights.push", "minimum"]),
    ("train-seeds-empty", set_key("checkerboard.train_seeds", []), ["checkerboard.train_seeds", "minItems"]),
    ("train-seeds-duplicate", set_key("checkerboard.train_seeds", [0, 0]), ["checkerboard.train_seeds", "uniqueItems"]),
    ("emb-dim-odd", set_key("checkerboard.teacher.net.emb_dim", 7), ["checkerboard.teacher.net.emb_dim", "multipleOf"]),
    ("checkpoint-every-negative", set_key("checkerboard.kdm.checkpoint_every", -5), ["checkerboard.kdm.checkpoint_every", "minimum"]),
    ("lr-schedule-unknown", set_key("checkerboard.kd.lr_schedule", "step"), ["checkerboard.kd.lr_schedule", "enum"]),
    ("latent-dim-zero", set_key("checkerboard.kdm.latent_dim", 0), ["checkerboard.kdm.latent_dim", "minimum"]),
    ("operator-unknown", set_key("checkerboard.kdm.operator", {"kind": "sparse"}), ["checkerboard.kdm.operator.kind", "enum"]),
    ("decomposed-odd-latent", lambda p: (p["checkerboard"]["kdm"].update(latent_dim=15, operator={"kind": "decomposed"})),
     ["checkerboard.kdm.latent_dim", "even"]),
    # image experiments
    ("unet-on-points", set_key("checkerboard.kdm.net", TINY_UNET), ["checkerboard.kdm.net.kind", "needs image data"]),
    ("mlp-teacher-on-images", set_key("digits-cond.teacher.net", {"kind": "mlp", "hidden": 8, "layers": 2, "emb_dim": 4,
                                                                  "emb_scale": 1.0}), ["digits-cond.teacher.net.kind", "unet"]),
    ("net-kind-unknown", set_key("digits-cond.kd.net.kind", "transformer"), ["digits-cond.kd.net.kind", "enum"]),
    ("unet-unknown-key", set_key("digits-cond.kdm.net.depth", 3), ["digits-cond.kdm.net", "depth"]),
    ("unet-too-deep", set_key("digits-cond.teacher.net.channel_mult", [1, 2, 2, 2, 2]),
     ["digits-cond.teacher.net.channel_mult", "does not divide 8"]),
    ("latent-above-grid", set_key("digits-cond.kdm.latent_dim", 129), ["digits-cond.kdm.latent_dim", "at most 128"]),
    ("latent-channels-with-mlp", set_key("checkerboard.kdm.latent_channels", 2), ["checkerboard.kdm.latent_channels", "unet"]),
    ("latent-channels-missing", drop_key("digits-cond.kdm.latent_channels"), ["digits-cond.kdm.latent_channels", "required"]),
    ("adversary-without-weight", drop_key("digits-cond.kdm.loss_weights.adv"), ["digits-cond.kdm.loss_weights.adv", "required"]),
    ("adversary-too-deep", set_key("digits-cond.kdm.adversary.widths", [8, 8, 8, 8]),
     ["digits-cond.kdm.adversary.widths", "at most 3"]),
    ("adversary-on-points", set_key("checkerboard.kdm.adversary", {"widths": [8]}), ["checkerboard.kdm.adversary", "image"]),
    ("classifier-on-points", lambda p: p["checkerboard"].update(classifier=p["digits-cond"]["classifier"]),
     ["checkerboard.classifier", "not allowed"]),
    ("classifier-missing", drop_key("digits-cond.classifier"), ["digits-cond", "'classifier' is a required"]),
    ("holdout-all", set_key("digits-cond.classifier.holdout", 1.0), ["digits-cond.classifier.holdout", "exclusiveMaximum"]),
    ("conditional-not-bool", set_key("digits-cond.data.conditional", "yes"), ["digits-cond.data.conditional", "boolean"]),
    ("inception-without-weights", to_inception({"kind": "inception-v3-compat"}), ["digits-cond.evaluate.extractor", "weights"]),
    ("inception-with-kid", lambda p: (to_inception({"kind": "inception-v3-compat", "weights": "w.pth"})(p),
                                      set_key("digits-cond.evaluate.kid_subset", 100)(p)),
     ["digits-cond.evaluate.kid_subset", "classifier extractor only"]),
    ("lpips-on-points", set_key("checkerboard.kd.rec_loss", {"kind": "lpips", "net": "vgg", "weights": "vgg.pth"}),
     ["checkerboard.kd.rec_loss.kind", "lpips compares images"]),
    ("lpips-without-weights", set_key("digits-cond.kdm.rec_loss", {"kind": "lpips", "net": "vgg"}),
     ["digits-cond.kdm.rec_loss", "'weights' is a required"]),
    ("points-metric-on-images", set_key("digits-cond.evaluate.sw2_projections", 16), ["digits-cond.evaluate", "sw2_projections"]),
    ("malformed-yaml", "experiments: [checkerboard\n", ["params.yaml", "YAML"]),
    ("top-level-list", "- checkerboard\n", ["params.yaml", ("mapping", "dictionary")]),
    ("empty-file", "", ["params.yaml", "mapping"]),
]


@pytest.mark.parametrize("case,mutate,fragments", PARAMS_CASES, ids=[c[0] for c in PARAMS_CASES])
def test_bad_params_fail_both_tools_cleanly(tmp_path, case, mutate, fragments):
    ws = Workspace(tmp_path, both_kinds())              # dvc.yaml from the valid params
    if isinstance(mutate, str):
        (tmp_path / "params.yaml").write_text(mutate)
    else:
        bad = copy.deepcopy(both_kinds())
        mutate(bad)
        ws.write_params(bad, dvc_yaml=False)
    for tool, r in (("snakemake", ws.snakemake(check=False)), ("dvc", ws.dvc("repro", check=False))):
        out = r.stdout + r.stderr
        assert r.returncode != 0, f"{tool} accepted {case}"
        if tool == "dvc" and "are missing from 'params.yaml'" in out:
            # DVC checks that a stage's declared params exist before running it, naming them itself
            assert "checkerboard." in out or "digits-cond." in out, out
            continue
        for fragment in fragments:      # a tuple: any one of its words
            assert any(f in out for f in ((fragment,) if isinstance(fragment, str) else fragment)), \
                f"{tool}: {fragment!r} not in\n{out[-3000:]}"
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*"))


def test_suite_size():
    assert len(PARAMS_CASES) >= 45


@pytest.fixture(scope="module")
def built_store(tmp_path_factory):
    """A tiny workspace with teacher, shards and store, made by the CLI stages."""
    ws = Workspace(tmp_path_factory.mktemp("files"), tiny_params())
    import sys
    for args in (["teacher", "checkerboard"], ["pairs", "checkerboard", "0"], ["pairs", "checkerboard", "1"],
                 ["store", "checkerboard"]):
        ws.run(sys.executable, "-m", "kdm", *args)
    return ws


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_tail(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


# (id, file under results/checkerboard to damage, how, the stage that reads it, message fragments)
FILE_CASES = [
    ("teacher-truncated", "teacher/model.pt", _truncate, ["pairs", "checkerboard", "0"],
     ["teacher/model.pt", "not a loadable model checkpoint"]),
    ("teacher-missing", "teacher/model.pt", lambda p: p.unlink(), ["evaluate", "checkerboard", "teacher"],
     ["teacher/model.pt: missing"]),
    ("store-truncated", "store/x0.npy", _truncate, ["train", "checkerboard", "kdm", "0"],
     ["store/x0.npy", "bytes, manifest says"]),
    ("store-corrupt-tail", "store/xT.npy", _flip_tail, ["train", "checkerboard", "kd", "0"],
     ["store/xT.npy", "first/last MiB differs"]),
    ("store-manifest-garbage", "store/manifest.json", lambda p: p.write_text("{"), ["train", "checkerboard", "kdm", "0"],
     ["store/manifest.json", "corrupt manifest"]),
    ("shard-missing", "pairs/shard-1", lambda p: __import__("shutil").rmtree(p), ["store", "checkerboard"],
     ["pairs/shard-1/manifest.json: missing"]),
    ("shard-other-sampler", "pairs/shard-0/manifest.json",
     lambda p: p.write_text(p.read_text().replace('"steps": 6', '"steps": 7')), ["store", "checkerboard"],
     ["pairs/shard-0/manifest.json", "meta.sampler", "re-run the pairs stage"]),
    ("shard-other-teacher", "pairs/shard-1/manifest.json",
     lambda p: p.write_text(__import__("re").sub(r'"sha256": "[0-9a-f]{64}"(?=,\s*"label_dim")', '"sha256": "' + "0" * 64 + '"', p.read_text())),
     ["store", "checkerboard"], ["pairs/shard-1/manifest.json", "meta.teacher"]),
]


@pytest.mark.parametrize("case,rel,damage,stage,fragments", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_damaged_files_are_named_and_nothing_is_written(built_store, tmp_path, case, rel, damage, stage, fragments):
    import shutil
    import sys
    ws = Workspace.__new__(Workspace)
    ws.path, ws.env = tmp_path / "ws", built_store.env
    shutil.copytree(built_store.path, ws.path)
    damage(ws.path / "results/checkerboard" / rel)
    before = set(ws.outputs())
    r = ws.run(sys.executable, "-m", "kdm", *stage, check=False)
    assert r.returncode == 1, r.stderr[-2000:]
    for fragment in fragments:
        assert fragment in r.stderr, f"{fragment!r} not in\n{r.stderr[-2000:]}"
    assert set(ws.outputs()) <= before, f"new files: {set(ws.outputs()) - before}"


def test_verify_checks_every_byte_of_every_pair_set(built_store, tmp_path):
    import shutil
    import sys
    ws = Workspace.__new__(Workspace)
    ws.path, ws.env = tmp_path / "ws", built_store.env
    shutil.copytree(built_store.path, ws.path)
    ok = ws.run(sys.executable, "-m", "kdm", "verify", "checkerboard")
    assert ok.stdout.count(": ok (") == 3 and "eval/teacher/samples: not built yet" in ok.stdout
    x0 = ws.path / "results/checkerboard/pairs/shard-1/x0.npy"
    raw = bytearray(x0.read_bytes())
    raw[200] ^= 0x01
    x0.write_bytes(bytes(raw))
    bad = ws.run(sys.executable, "-m", "kdm", "verify", "checkerboard", check=False)
    assert bad.returncode == 1 and "pairs/shard-1/x0.npy: sha256 differs" in bad.stderr

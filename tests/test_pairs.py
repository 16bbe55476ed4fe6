"""Pair sampling: every pair is a pure function of its seed."""
import numpy as np
import pytest
import torch

from kdm import dag
from kdm.stages import pairs as pairs_stage
from kdm.models import build, load_model, save_model

SAMPLER = {"steps": 6, "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    kwargs = dict(data_shape=[2], net={"kind": "mlp", "hidden": 32, "layers": 3, "emb_dim": 8, "emb_scale": 1.0},
                  sigma_data=0.5)
    path = tmp_path_factory.mktemp("teacher") / "model.pt"
    save_model(path, "teacher", kwargs, build("teacher", kwargs, seed=0), data_shape=(2,))
    return path


def run_shards(teacher, tmp_path, count, shards, batch):
    pairs = {"count": count, "shards": shards, "batch": batch, "seed_start": 100}
    dirs = []
    for i in range(shards):
        out = tmp_path / f"b{batch}-n{shards}-{i}"
        stage = dag.Stage(name=f"p{i}", cmd="", deps=dag.Files(teacher=str(teacher)),
                          outs=dag.Files(shard=str(out)), params=(), log="",
                          scratch=f"{out}.partial/", args={"shard": i})
        pairs_stage.run(stage, {"pairs": pairs, "sampler": SAMPLER})
        dirs.append(stage.outs.shard)
    return dirs


def concat(dirs, name):
    return np.concatenate([np.load(f"{d}/{name}.npy") for d in dirs])


def test_byte_identical_for_any_shard_count(teacher, tmp_path):
    """At a fixed batch size the bytes do not depend on how the seed range is split (shards of 300, 150,
    100 and 60 pairs with batch 64: every shard ends in a short, padded batch)."""
    ref = None
    for shards in (1, 2, 3, 5):
        dirs = run_shards(teacher, tmp_path, 300, shards, batch=64)
        got = {k: concat(dirs, k) for k in ("x0", "xT", "seeds")}
        if ref is None:
            ref = got
            np.testing.assert_array_equal(ref["seeds"], np.arange(100, 400))
        for k in got:
            assert got[k].tobytes() == ref[k].tobytes(), f"{k} differs with {shards} shards"


def test_across_batch_sizes_within_float_tolerance(teacher, tmp_path):
    """Different batch sizes may select different matmul kernels (last-bit differences in float32);
    noise is identical, and the teacher's x_0 agree to float32 rounding through the ODE."""
    ref = concat(run_shards(teacher, tmp_path, 200, 1, batch=200), "x0")
    for batch in (1, 7, 64):
        dirs = run_shards(teacher, tmp_path, 200, 1, batch=batch)
        assert concat(dirs, "xT").tobytes() == concat(run_shards(teacher, tmp_path, 200, 2, batch=200), "xT").tobytes()
        np.testing.assert_allclose(concat(dirs, "x0"), ref, rtol=1e-5, atol=1e-5)


def test_noise_is_sigma_max_times_seeded_normal(teacher, tmp_path):
    (d,) = run_shards(teacher, tmp_path, 4, 1, batch=4)
    g = torch.Generator().manual_seed(102)
    np.testing.assert_array_equal(np.load(f"{d}/xT.npy")[2], (80.0 * torch.randn(2, generator=g)).numpy())


def test_teacher_loads_with_its_data_shape(teacher):
    assert load_model(teacher).data_shape == (2,)

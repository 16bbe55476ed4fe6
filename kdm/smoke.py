"""The shipped experiments shrunk to seconds: the same keys, tiny budgets.

The tests run their end-to-end cases on these, and the benchmark measures the pipeline's own overhead
(no-op runs, dry runs) on a workspace made from them.
"""
from __future__ import annotations

import copy

TINY_UNET = {"kind": "unet", "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [],
             "dropout": 0.0}


def tiny(params: dict, name: str) -> dict:
    """Experiment `name` of params, alone, shrunk to seconds per stage (by its data kind)."""
    from kdm.dag import images
    return (tiny_digits if images(params, name) else tiny_checkerboard)(params, name)


def tiny_checkerboard(params: dict, name: str = "checkerboard") -> dict:
    """A shipped 2-D experiment, alone: small MLPs, a few iterations, 512 pairs."""
    exp = copy.deepcopy(params[name])
    exp["teacher"].update(iterations=40, batch=256, log_every=10)
    exp["teacher"]["net"].update(hidden=32, layers=3)
    exp["sampler"]["steps"] = 6
    exp["pairs"].update(count=512, shards=2, batch=128)
    for student in ("kdm", "kd"):
        exp[student].update(iterations=30, batch=64, log_every=10, net={"kind": "mlp", "hidden": 32, "layers": 3})
    exp["kdm"]["latent_dim"] = 16
    exp["evaluate"].update(samples=500, batch=500, speed_repeats=2, sw2_projections=16)
    return {"experiments": [name], name: exp}


def tiny_digits(params: dict, name: str = "digits-cond") -> dict:
    """A shipped digits experiment, alone: tiny UNets, a few iterations, 128 pairs."""
    exp = copy.deepcopy(params[name])
    exp["classifier"].update(iterations=30, log_every=10)
    exp["teacher"].update(iterations=20, batch=32, log_every=10, net=dict(TINY_UNET))
    exp["sampler"]["steps"] = 4
    exp["pairs"].update(count=128, shards=2, batch=64)
    for student in ("kdm", "kd"):
        exp[student].update(iterations=10, batch=32, log_every=5, net=dict(TINY_UNET))
    exp["kdm"]["adversary"]["widths"] = [8, 16]
    exp["evaluate"].update(samples=200, batch=100, speed_batch=32, speed_repeats=1, kid_subset=100)
    return {"experiments": [name], name: exp}

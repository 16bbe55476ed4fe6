"""params.yaml: loading, schema validation and the checks a schema cannot express.

Kept free of torch so that Snakemake and the DVC-file generator import it in milliseconds.
"""
from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("params.schema.yaml")


class ParamsError(ValueError):
    """Invalid params: the message names the file, the key and what was expected."""


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        return f"{error.message}; allowed keys are listed in {SCHEMA_PATH.name}"
    if error.validator == "required":
        return error.message
    expected = {k: error.schema[k] for k in ("type", "enum", "minimum", "maximum", "exclusiveMinimum",
                                           "exclusiveMaximum", "pattern", "minItems", "maxItems",
                                           "multipleOf", "uniqueItems") if k in error.schema}
    return f"got {error.instance!r}, expected {expected or error.schema.get('description')} ({error.message})"


def validate(params: dict, source: str = "params.yaml") -> dict:
    """Raise ParamsError for the first problem found, else return params unchanged."""
    if not isinstance(params, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {type(params).__name__}")
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = list(validator.iter_errors(params))
    if errors:
        # the deepest error is the most specific: a bad `kdm.lr` also makes `kdm` fail as a whole; and a
        # section that fails its shared part (allOf) also reports all its keys as unevaluated: prefer the cause
        depth = max(len(e.absolute_path) for e in errors)
        deepest = [e for e in errors if len(e.absolute_path) == depth]
        causes = [e for e in deepest if e.validator != "unevaluatedProperties"] or deepest
        error = jsonschema.exceptions.best_match(causes)
        raise ParamsError(f"{source}: {_dotted(error.absolute_path)}: {_describe(error)}")
    for name in params["experiments"]:
        if name not in params:
            raise ParamsError(f"{source}: experiments: lists {name!r}, but there is no section {name!r}")
    for name, exp in params.items():
        if name == "experiments":
            continue
        pairs = exp["pairs"]
        if pairs["count"] % pairs["shards"]:
            raise ParamsError(f"{source}: {name}.pairs.shards: {pairs['shards']} does not divide "
                              f"{name}.pairs.count = {pairs['count']}; expected a divisor")
        kdm = exp["kdm"]
        if kdm["operator"]["kind"] == "decomposed" and kdm["latent_dim"] % 2:
            raise ParamsError(f"{source}: {name}.kdm.latent_dim: {kdm['latent_dim']} is odd; a decomposed "
                              "operator pairs the latent's halves as real and imaginary parts, expected an even number")
        sampler = exp["sampler"]
        if sampler["sigma_min"] >= sampler["sigma_max"]:
            raise ParamsError(f"{source}: {name}.sampler.sigma_min: {sampler['sigma_min']} must be "
                              f"below sigma_max = {sampler['sigma_max']}")
        if exp["evaluate"]["seed_start"] < pairs["seed_start"] + pairs["count"] and \
                exp["evaluate"]["seed_start"] + exp["evaluate"]["samples"] > pairs["seed_start"]:
            raise ParamsError(f"{source}: {name}.evaluate.seed_start: seeds overlap the training pairs' "
                              f"seeds; expected fresh noise (a range disjoint from {name}.pairs)")
    return params


def load(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ParamsError(f"{path}: cannot read the params file ({e.strerror})") from None
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    return validate(params, str(path))


def section(params: dict, dotted: str):
    """The value at a dotted key such as 'checkerboard.kdm'."""
    node = params
    for part in dotted.split("."):
        node = node[part]
    return node

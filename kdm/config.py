"""params.yaml: loading, schema validation and the checks a schema cannot express.

Kept free of torch so that Snakemake and the DVC-file generator import it in milliseconds.
"""
from __future__ import annotations

import copy
import functools
import itertools
from pathlib import Path

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("params.schema.yaml")
FIXED_SHAPES = {"checkerboard": (2,), "digits": (1, 8, 8)}     # one sample's shape, for kinds that fix it
IMAGE_KINDS = ("digits", "images")
RESERVED = ("experiments", "benchmark", "sweeps")              # top-level keys that are not experiments
SWEEP_COLUMNS = ("params", "pairs", "teacher_nfe", "train_minutes")     # a sweep table's numbers, besides its axes
STUDENTS = ("kdm", "kd")                                       # the students of every experiment


class ParamsError(ValueError):
    """Invalid params: the message names the file, the key and what was expected."""


def data_shape(data: dict) -> tuple:
    """One sample's shape from an experiment's data params (an image data set's from its own params, so
    it is known without its files)."""
    if data["kind"] == "images":
        return (data["channels"], data["resolution"], data["resolution"])
    return FIXED_SHAPES[data["kind"]]


def imported(pairs: dict) -> bool:
    """Whether the pairs are imported from a published set rather than sampled from the teacher."""
    return pairs.get("source", "teacher") == "import"


@functools.cache
def load_schema() -> dict:
    """params.schema.yaml, parsed once per process (UNET_KINDS and every validation read it)."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


# the image networks: every net kind the schema knows but mlp (kdm.unet.UNETS builds them)
UNET_KINDS = tuple(k for k in load_schema()["$defs"]["net"]["properties"]["kind"]["enum"] if k != "mlp")


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        return f"{error.message}; allowed keys are listed in {SCHEMA_PATH.name}"
    if error.validator == "required":
        return error.message
    if error.validator == "not":
        return f"not allowed here ({error.schema.get('description', 'see ' + SCHEMA_PATH.name)})"
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
        # a kind-specific branch (if/then/else) presumes the kind; an error of the key's own schema (e.g.
        # the enum of all kinds) says more
        causes = [e for e in causes if not {"then", "else"} & set(e.schema_path)] or causes
        error = jsonschema.exceptions.best_match(causes)
        raise ParamsError(f"{source}: {_dotted(error.absolute_path)}: {_describe(error)}")
    for name in params["experiments"]:
        if name not in params:
            raise ParamsError(f"{source}: experiments: lists {name!r}, but there is no section {name!r}")
    for name, exp in params.items():
        if name in RESERVED:
            continue
        _check_pairs(source, name, exp)
        kdm = exp["kdm"]
        if kdm["operator"]["kind"] == "decomposed" and kdm["latent_dim"] % 2:
            raise ParamsError(f"{source}: {name}.kdm.latent_dim: {kdm['latent_dim']} is odd; a decomposed "
                              "operator pairs the latent's halves as real and imaginary parts, expected an even number")
        for key in ("teacher", "kdm", "kd"):        # torchrun splits the global batch evenly over the processes
            gpus = exp[key].get("gpus", 1)
            if exp[key].get("batch", 0) % gpus:     # (a loaded teacher has neither)
                raise ParamsError(f"{source}: {name}.{key}.gpus: {gpus} does not divide {name}.{key}.batch = "
                                  f"{exp[key]['batch']}; expected a divisor (batch is the global batch)")
        _check_networks(source, name, exp)
        for key in STUDENTS:
            used, count = exp[key].get("pairs_used", 0), exp["pairs"].get("count")
            if count and used > count:
                raise ParamsError(f"{source}: {name}.{key}.pairs_used: {used} exceeds {name}.pairs.count = {count}; "
                                  "expected at most the store's pairs")
        if count and exp.get("rederive", {}).get("count", 0) > count:
            raise ParamsError(f"{source}: {name}.rederive.count: {exp['rederive']['count']} exceeds {name}.pairs.count "
                              f"= {count}; expected at most the store's pairs")
        snapshots, ev = exp["snapshots"], exp["evaluate"]
        if snapshots["every"] and snapshots["samples"] > ev["samples"]:      # (schema: samples iff every)
            raise ParamsError(f"{source}: {name}.snapshots.samples: {snapshots['samples']} exceeds "
                              f"{name}.evaluate.samples = {ev['samples']}; expected at most that many (the snapshots "
                              "are measured on the first of the teacher's evaluation samples)")
        an = exp["analysis"]
        for key, limit, what in (("samples", ev["samples"], f"{name}.evaluate.samples (the samples it analyses)"),
                                 ("knn", an["samples"] - 1, f"{name}.analysis.samples - 1 (a point's others)"),
                                 ("plot_samples", an["samples"], f"{name}.analysis.samples")):
            if an[key] > limit:
                raise ParamsError(f"{source}: {name}.analysis.{key}: {an[key]} exceeds {what} = {limit}; expected "
                                  "at most that")
        sampler = exp["sampler"]
        if sampler["sigma_min"] >= sampler["sigma_max"]:
            raise ParamsError(f"{source}: {name}.sampler.sigma_min: {sampler['sigma_min']} must be "
                              f"below sigma_max = {sampler['sigma_max']}")
        if exp["data"]["kind"] == "images" and exp["evaluate"]["extractor"]["kind"] == "classifier":
            raise ParamsError(f"{source}: {name}.evaluate.extractor.kind: classifier is trained on the digits "
                              "only; expected inception-v3-compat for an image data set given by path")
    if "benchmark" in params:
        _check_benchmark(source, params)
    for name, sweep in params.get("sweeps", {}).items():
        _check_sweep(source, params, name, sweep)
    return params


def _check_sweep(source: str, params: dict, name: str, sweep: dict) -> None:
    """A sweep's experiment is one of params' (listed in experiments: or not), its axes reach its students, its x
    is an axis or a column, and every point's params are valid."""
    key, exp = f"sweeps.{name}", sweep["experiment"]
    if exp in RESERVED or exp not in params:
        known = sorted(k for k in params if k not in RESERVED)
        raise ParamsError(f"{source}: {key}.experiment: {exp!r} is not an experiment of {source}; expected one of "
                          f"{known} (a sweep of one outside experiments: is prepared, and runs once it is listed)")
    students = sweep_students(sweep)
    for axis in sweep["axes"]:
        head = axis.split(".")[0]
        if head in STUDENTS and head not in students:
            raise ParamsError(f"{source}: {key}.axes.{axis}: the sweep trains {students}, not {head}; expected "
                              f"{head} in {key}.students")
    if sweep.get("mode") == "zip" and len({len(v) for v in sweep["axes"].values()}) > 1:
        raise ParamsError(f"{source}: {key}.axes: mode zip pairs the axes' i-th values; expected lists of one length, "
                          f"got {[len(v) for v in sweep['axes'].values()]}")
    x = sweep.get("x")
    if x is not None and x not in sweep["axes"] and x not in SWEEP_COLUMNS:
        raise ParamsError(f"{source}: {key}.x: {x!r} is neither an axis of the sweep ({list(sweep['axes'])}) nor one "
                          f"of its table's columns {list(SWEEP_COLUMNS)}")
    names = [point for point, _ in sweep_points(sweep)]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ParamsError(f"{source}: {key}.axes: points {twice} come more than once; expected distinct points")
    for point, values in sweep_points(sweep):
        at = {**params[exp], **{m: with_settings(params[exp][m], point_settings(values, m)) for m in students}}
        validate({"experiments": [exp], exp: at}, f"{source}: {key} point {point}")


def active_sweeps(params: dict) -> dict:
    """The sweeps that run: those of an experiment in `experiments:` (the others are prepared, e.g. a preset's)."""
    return {name: s for name, s in params.get("sweeps", {}).items() if s["experiment"] in params["experiments"]}


def sweep_points(sweep: dict) -> list[tuple[str, tuple]]:
    """A sweep's points, (name, ((axis, value), ...)): every combination of its axes' values (mode grid, the
    default), or their i-th values together (zip). A point is named by its values, each by the shortest end of
    its key that tells the axes apart (never a bare `kind`), e.g. "latent_dim=64" or "push=0,adv=0.01"."""
    keys = list(sweep["axes"])

    def label(key):
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            end = ".".join(parts[-n:])
            if end != "kind" and sum(k == end or k.endswith(f".{end}") for k in keys) == 1:
                return end
        return key

    def text(value):
        return str(value).lower() if isinstance(value, bool) else str(value)
    values = sweep["axes"].values()
    combos = zip(*values) if sweep.get("mode", "grid") == "zip" else itertools.product(*values)
    return [(",".join(f"{label(k)}={text(v)}" for k, v in zip(keys, c)), tuple(zip(keys, c))) for c in combos]


def sweep_students(sweep: dict) -> list[str]:
    """The students a sweep trains at each point (default KDM alone)."""
    return sweep.get("students", ["kdm"])


def point_settings(values: tuple, model: str) -> dict:
    """The keys (dotted, within its section) a sweep point's values set on a student: an axis without a student's
    name sets every student of the sweep, `kdm.<key>` only KDM."""
    out = {}
    for key, value in values:
        head, _, rest = key.partition(".")
        if head not in STUDENTS:
            out[key] = value
        elif head == model:
            out[rest] = value
    return out


def with_settings(section: dict, settings: dict) -> dict:
    """A copy of a params section with dotted keys set (missing mappings on the way created)."""
    out = copy.deepcopy(section)
    for key, value in settings.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out

def _check_pairs(source: str, name: str, exp: dict) -> None:
    pairs, ev = exp["pairs"], exp["evaluate"]
    if imported(pairs):         # the store records the import's sigma_max; students and evaluation read sampler's
        if pairs["sigma_max"] != exp["sampler"]["sigma_max"]:
            raise ParamsError(f"{source}: {name}.pairs.sigma_max: {pairs['sigma_max']} differs from "
                              f"{name}.sampler.sigma_max = {exp['sampler']['sigma_max']}; expected the same x_T scale")
        if "rederive" in exp:   # a key no stage would read: say so rather than ignore it
            raise ParamsError(f"{source}: {name}.rederive: imported pairs record no teacher that made them, so no "
                              "stage can re-sample them; expected no rederive section (check them with python -m kdm "
                              f"verify {name} --rederive N --teacher PATH)")
        return
    if pairs["count"] % pairs["shards"]:
        raise ParamsError(f"{source}: {name}.pairs.shards: {pairs['shards']} does not divide "
                          f"{name}.pairs.count = {pairs['count']}; expected a divisor")
    if ev["seed_start"] < pairs["seed_start"] + pairs["count"] and \
            ev["seed_start"] + ev["samples"] * ev["seed_sets"] > pairs["seed_start"]:
        raise ParamsError(f"{source}: {name}.evaluate.seed_start: seeds overlap the training pairs' "
                          f"seeds; expected fresh noise (a range disjoint from {name}.pairs)")


def _check_benchmark(source: str, params: dict) -> None:
    b = params["benchmark"]
    for shards in b["pairs"]["shards"]:
        if b["pairs"]["count"] % shards:
            raise ParamsError(f"{source}: benchmark.pairs.shards: {shards} does not divide benchmark.pairs.count "
                              f"= {b['pairs']['count']}; expected divisors")


def _check_networks(source: str, name: str, exp: dict) -> None:
    """Networks must fit the data: UNets and the discriminator need images of a size they can halve."""
    shape = data_shape(exp["data"])
    images = len(shape) == 3

    def fail(key, msg):
        raise ParamsError(f"{source}: {name}.{key}: {msg}")

    trained = exp["teacher"].get("source", "train") == "train"        # a loaded teacher brings its own net
    for section in ("teacher", "kdm", "kd") if trained else ("kdm", "kd"):
        net = exp[section]["net"]
        if net["kind"] in UNET_KINDS:
            if not images:
                fail(f"{section}.net.kind", f"{net['kind']} needs image data, but {name}.data.kind is "
                     f"{exp['data']['kind']!r} (shape {shape}); expected mlp")
            levels = len(net["channel_mult"]) - 1
            if shape[-1] % 2 ** levels:
                fail(f"{section}.net.channel_mult", f"{levels + 1} levels halve the resolution {levels} times, "
                     f"which does not divide {shape[-1]}; expected fewer levels")
        elif section == "teacher" and images:
            fail("teacher.net.kind", "expected unet for image data (the mlp teacher is for vector data)")
    for section in ("kdm", "kd"):
        if exp[section]["rec_loss"]["kind"] == "lpips" and not images:
            fail(f"{section}.rec_loss.kind", "lpips compares images; expected l2 or pseudo_huber for vector data")
    kdm = exp["kdm"]
    if kdm["net"]["kind"] == "mlp" and "latent_channels" in kdm:
        fail("kdm.latent_channels", "applies to unet encoders only; with an mlp net the latent is latent_dim wide")
    if kdm["net"]["kind"] in UNET_KINDS:
        if "latent_channels" not in kdm:
            fail("kdm.latent_channels", "required with a unet net (the encoders' output channels)")
        grid = kdm["latent_channels"] * shape[1] * shape[2]
        if kdm["latent_dim"] > grid:
            fail("kdm.latent_dim", f"{kdm['latent_dim']} exceeds the encoders' latent grid "
                 f"{kdm['latent_channels']}x{shape[1]}x{shape[2]} = {grid}; expected at most {grid}")
    if "adversary" in kdm:
        if not images:
            fail("kdm.adversary", "the discriminator needs image data; remove it for vector data")
        widths, head = kdm["adversary"]["widths"], kdm["adversary"].get("head", "linear")
        least = 4 if head == "patch" else 1     # the patch head is a 4x4 conv without padding
        if shape[-1] // 2 ** len(widths) < least:
            fail("kdm.adversary.widths", f"{len(widths)} stride-2 convs do not fit {shape[-1]}x{shape[-1]} images "
                 f"with the {head} head; expected at most {(shape[-1] // least).bit_length() - 1}")
        if "adv" not in kdm["loss_weights"]:
            fail("kdm.loss_weights.adv", "required with kdm.adversary (the authors use 0.01)")
    elif "adv" in kdm["loss_weights"]:
        fail("kdm.loss_weights.adv", "set, but there is no kdm.adversary to train against")


# The schema's marks for files the params name: what each must be on disk.
FILE_FORMATS = {"local-file": (Path.is_file, "a file"), "local-dir": (Path.is_dir, "a folder"),
                "local-path": (Path.exists, "a file or folder")}


def named_files(params: dict) -> list[tuple[str, str, str]]:
    """(dotted key, path, format) of every file the experiments in `experiments` name, found through the
    schema's `format` marks (only in the branches that apply, e.g. teacher.path only for a loaded teacher)."""
    checker = jsonschema.FormatChecker(())
    for fmt in FILE_FORMATS:        # every mark "fails", so the validator reports each one with its key
        checker.checks(fmt)(lambda instance: False)
    validator = jsonschema.Draft202012Validator(load_schema(), format_checker=checker)
    listed = set(params["experiments"])
    return sorted((_dotted(e.absolute_path), e.instance, e.validator_value) for e in validator.iter_errors(params)
                  if e.validator == "format" and e.absolute_path and e.absolute_path[0] in listed)


def check_files(params: dict, source: str = "params.yaml") -> list[tuple[str, str, str]]:
    """Raise ParamsError naming every file the experiments read that is not there (relative paths are from
    the project directory), so that neither tool starts, and removes the outputs of, a stage that would fail;
    else return them (named_files)."""
    named = named_files(params)
    missing = [f"{source}: {key}: {path} {'is not' if Path(path).exists() else 'does not exist; expected'} "
               f"{FILE_FORMATS[fmt][1]}" for key, path, fmt in named if not FILE_FORMATS[fmt][0](Path(path))]
    if missing:     # all of them at once: a preset names several
        raise ParamsError("\n".join(missing) + "\n(the pipeline downloads nothing: README, Paper scale)")
    return named


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

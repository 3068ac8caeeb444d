"""Run configurations: the TOML files of the model zoo, command-line overrides, validation.

A configuration is a nested dict with three tables, ``[data]``, ``[model]`` and
``[train]``. :data:`DEFAULTS` lists every key with its default; a TOML file or an override
may set any of them and nothing else, so a typo is an error rather than a silently
ignored setting.
"""

import copy
import json
import operator
import tomllib
from importlib import resources
from pathlib import Path

from ppl_vae.data.arrays import BINARIZATIONS
from ppl_vae.errors import ConfigError
from ppl_vae.inference.schedules import KLSchedule

DEFAULTS = {
    "name": "vae",
    "description": "",
    "data": {
        # digits | mnist | fashion-mnist | ppca | shapes | cifar10 | svhn | celeba64 |
        # PATH.npz | PATH.npy | PATH/ (a folder of PNG/JPEG images)
        "dataset": "digits",
        "data_dir": "data",
        "download": False,
        "binarize": "dynamic",  # dynamic | static | none (Bernoulli likelihoods only)
        "test_fraction": 0.2,
        "options": {},  # keyword options of a built-in loader: shapes' num_data, image_size
        "missing_rate": 0.0,  # train with this share of training entries hidden (at random)
        # Stream the training set from disk (a uint8 .npy or an image folder) instead of
        # holding it in memory: "auto" (when it would not fit), true or false.
        "stream": "auto",
    },
    "model": {
        # A program of your own (path.py:Class or package.module:Class) in place of the
        # built-in VAE and its parts; "" is the VAE. Built as Class(dims, **program_options).
        "program": "",
        "program_options": {},
        "latent_dim": 8,
        "prior": "normal",
        "guide": "diagonal",
        "likelihood": "bernoulli",
        "encoder": "mlp",
        "decoder": "mlp",
        "hidden": [256, 256],
        "beta": 1.0,  # weight of the KL term; the weight it rises to when annealed
        "conditional": False,  # CVAE: encoder and decoder both see the one-hot label
        # Denoising: noise on the guide's input in training: none | gaussian | salt-pepper | mask
        "corruption": "none",
        "corruption_level": 0.1,  # noise std (gaussian) or share of entries corrupted
        "prior_options": {},
        "guide_options": {},
        "likelihood_options": {},
    },
    "train": {
        "objective": "meanfield",
        "objective_options": {},  # a penalized objective's weights, e.g. beta for tcvae
        "num_particles": 1,
        "jit": True,  # compile model and guide with torch.jit: the fast path
        "epochs": 200,
        "eval_every": 1,  # epochs between test-set evaluations (the last epoch always has one)
        "batch_size": 128,
        "lr": 1e-3,
        "seed": 0,
        "device": "auto",
        "kl_schedule": "constant",  # constant | linear (warm-up) | cyclical (Fu et al. 2019)
        "kl_warmup_epochs": 10.0,  # epochs over which the KL weight rises to beta
        "kl_cycle_epochs": 20.0,  # length of one cycle of the cyclical schedule
    },
}

CHOICES = {
    ("data", "binarize"): tuple(BINARIZATIONS),
    ("train", "kl_schedule"): KLSchedule.KINDS,
}

# The seeds numpy's legacy seeding and scikit-learn's random_state accept (torch takes more).
SEED_MAX = 2**32 - 1

# Numeric settings and the bounds each must respect: (">" or ">=", lower[, "<" or "<=",
# upper]); a list's bounds apply to each of its entries.
BOUNDS = {
    ("data", "test_fraction"): (">", 0.0, "<", 1.0),
    ("data", "missing_rate"): (">=", 0.0, "<", 1.0),
    ("model", "latent_dim"): (">=", 1),
    ("model", "hidden"): (">=", 1),
    ("model", "beta"): (">", 0.0),  # poutine.scale needs a positive scale
    ("model", "corruption_level"): (">=", 0.0),
    ("train", "num_particles"): (">=", 1),
    ("train", "epochs"): (">=", 1),
    ("train", "batch_size"): (">=", 1),
    ("train", "lr"): (">", 0.0),
    ("train", "eval_every"): (">=", 1),
    ("train", "seed"): (">=", 0, "<=", SEED_MAX),
    ("train", "kl_warmup_epochs"): (">", 0.0),
    ("train", "kl_cycle_epochs"): (">", 0.0),
}
# NaN compares False with everything, so it fails every bound.
_COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def _models_dir():
    """The model zoo's folder. models/ at the top of the source tree is its one copy; the
    wheel ships it as ``ppl_vae/models`` (``package-dir`` in pyproject.toml). A source
    checkout or an editable install imports ``ppl_vae`` from the tree, which has no
    ``ppl_vae/models``, and finds models/ beside the package."""
    installed = resources.files("ppl_vae") / "models"
    if isinstance(installed, Path) and installed.is_dir():  # a wheel unpacked on disk
        return installed
    return Path(__file__).resolve().parent.parent / "models"


# The model zoo: TOML model files, looked up by name.
MODELS_DIR = _models_dir()


def find_model_file(name_or_path):
    """Resolve ``--model``: a path to a TOML file, or the name of one in ``models/``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = MODELS_DIR / f"{name_or_path}.toml"
    if path.suffix == "" and candidate.is_file():
        return candidate
    known = ", ".join(sorted(p.stem for p in MODELS_DIR.glob("*.toml")))
    raise ConfigError(f"no model file {str(name_or_path)!r}; give a path to a .toml file "
                      f"or one of the names in {MODELS_DIR}: {known}")


def load_config(name_or_path=None, overrides=None):
    """The defaults, updated by a model TOML file and then by ``overrides``, validated.

    Parameters
    ----------
    name_or_path : str or Path, optional
        A model file (see :func:`find_model_file`); None uses the defaults alone.
    overrides : dict, optional
        ``{"model.latent_dim": 2, "train.epochs": 5, ...}``; None values are skipped.
    """
    if name_or_path is None:
        return config_from_text("", overrides, source="the defaults")
    path = find_model_file(name_or_path)
    with open(path, encoding="utf-8") as f:
        return config_from_text(f.read(), overrides, source=str(path), folder=path.parent)


def config_from_text(text, overrides=None, *, source, folder=None):
    """:func:`load_config` of a model file's TOML ``text`` (read from ``source``). A part or
    program given in the text as a relative ``file.py:Class`` is taken relative to
    ``folder`` (the model file's own), if given."""
    config = copy.deepcopy(DEFAULTS)
    try:
        from_file = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source} is not valid TOML: {err}") from None
    _merge(config, from_file, DEFAULTS, source=source)
    if folder is not None:
        _files_relative_to(config, Path(folder))
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *tables, key = dotted.split(".")
        nested = {key: value}
        for table in reversed(tables):
            nested = {table: nested}
        _merge(config, nested, DEFAULTS, source="the command line")
    return config


# The settings that may name a part or a program by import path (``file.py:Class``).
PART_SETTINGS = (("model", "program"), ("model", "prior"), ("model", "guide"),
                 ("model", "likelihood"), ("model", "encoder"), ("model", "decoder"),
                 ("model", "corruption"), ("train", "objective"))


def _files_relative_to(config, folder):
    for table, key in PART_SETTINGS:
        where, colon, attr = config[table][key].rpartition(":")
        if colon and where.endswith(".py") and not Path(where).expanduser().is_absolute():
            config[table][key] = f"{folder / where}:{attr}"


def _merge(config, update, schema, *, source, prefix=""):
    for key, value in update.items():
        where = f"{prefix}{key}"
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise ConfigError(f"unknown setting {where!r} in {source}; "
                              f"known settings{' in [' + prefix[:-1] + ']' if prefix else ''}: "
                              f"{known}")
        default = schema[key]
        if isinstance(default, dict) and default:
            if not isinstance(value, dict):
                raise ConfigError(f"{where!r} in {source} must be a table")
            _merge(config[key], value, default, source=source, prefix=f"{where}.")
            continue
        config[key] = _check_type(where, value, default, source)


# Settings that take values of more than one type: key -> (check, what it takes).
MIXED_TYPES = {("data", "stream"): (lambda v: v == "auto" or isinstance(v, bool),
                                    "'auto', true or false")}


def _check_type(where, value, default, source):
    mixed = MIXED_TYPES.get(tuple(where.split(".")))
    if mixed:
        if not mixed[0](value):
            raise ConfigError(f"{where!r} in {source} must be {mixed[1]}; got {value!r}")
        return value
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        list: lambda v: isinstance(v, list | tuple),
        dict: lambda v: isinstance(v, dict),
    }[type(default)]
    if not ok(value):
        raise ConfigError(f"{where!r} in {source} must be of type {type(default).__name__}; "
                          f"got {value!r}")
    choices = CHOICES.get(tuple(where.split(".")))
    if choices and value not in choices:
        raise ConfigError(f"{where!r} in {source} must be one of {', '.join(choices)}; "
                          f"got {value!r}")
    bounds = BOUNDS.get(tuple(where.split(".")), ())
    for op, limit in zip(bounds[::2], bounds[1::2], strict=True):
        for entry in value if isinstance(value, list | tuple) else [value]:
            if not _COMPARE[op](entry, limit):
                each = "each entry of " if isinstance(value, list | tuple) else ""
                raise ConfigError(f"{each}{where!r} in {source} must be {op} {limit}; "
                                  f"got {value!r}")
    if isinstance(default, float):
        return float(value)
    if isinstance(default, list):
        return list(value)
    return value


def dump_toml(config):
    """Write a configuration (nested dicts of scalars and lists) as TOML text."""
    lines = []
    _dump_table(config, [], lines)
    return "\n".join(lines).strip() + "\n"


def _dump_table(table, path, lines):
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines.append(f"\n[{'.'.join(path)}]")
    for key, value in scalars.items():
        lines.append(f"{key} = {_toml_value(value)}")
    for key, value in tables.items():
        _dump_table(value, [*path, key], lines)


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")

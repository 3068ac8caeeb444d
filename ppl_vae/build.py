"""The builder: from a resolved configuration (:mod:`ppl_vae.config`) to the objects that
training takes (program, objective, optimizer, data), and back from a run folder.

The training loop (:class:`~ppl_vae.inference.loop.Trainer`) knows nothing of
configurations: :func:`build` makes its inputs, :func:`resume` rebuilds them from a run
folder and restores the checkpoint, :func:`load_run` does the same for evaluation.
"""

import hashlib
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pyro
import torch

from ppl_vae import distributed
from ppl_vae.config import config_from_text, dump_toml, load_config
from ppl_vae.data import (
    ARRAY_SUFFIXES,
    BINARIZATIONS,
    DATASETS,
    Dataset,
    binarize,
    check_data,
    load_dataset,
)
from ppl_vae.data.images import ConvertedRows, ImageBatches, image_files, to_unit
from ppl_vae.data.masks import random_mask
from ppl_vae.data.stream import choose_stream, is_streamed
from ppl_vae.device import free_memory, resolve_device
from ppl_vae.errors import CheckpointError, ConfigError, DataError
from ppl_vae.evaluation.generic import evaluate_elbo as generic_elbo
from ppl_vae.evaluation.likelihood import evaluate_elbo
from ppl_vae.inference.jit import JIT_VERSIONS, JitUnavailableWarning, jit_available
from ppl_vae.inference.loop import Trainer, adam
from ppl_vae.inference.penalties import PenalizedELBO, Penalty
from ppl_vae.inference.runs import CHECKPOINT, RunFolder, config_path
from ppl_vae.inference.schedules import KLSchedule
from ppl_vae.programs import build_program, check_program_settings, is_program, model_support
from ppl_vae.registry import lookup, resolve_path
from ppl_vae.vae import VAE, Dims, parameter_bytes

# Settings that may differ between a run and its resumption.
RESUMABLE = {"train.epochs", "train.device", "train.jit", "train.eval_every", "data.stream"}


@dataclass
class Experiment:
    """A configuration turned into objects: what :func:`build` and :func:`resume` return.

    Attributes
    ----------
    config : dict
        The resolved configuration.
    dataset : Dataset
        The data as loaded (CPU; labels kept, for figures).
    data : Dataset
        What training sees: on the device, the test set binarised where the likelihood
        needs it, labels only for a conditional program.
    dims : Dims
    program : nn.Module
        The VAE (``model`` and ``guide``).
    trainer : Trainer
    run_dir : Path or None
    classes : list of int or None
        A conditional program's label values; label ``classes[c]`` is class ``c``.
    """

    config: dict
    dataset: Dataset
    data: Dataset
    dims: Dims
    program: torch.nn.Module
    trainer: Trainer
    run_dir: Path | None
    classes: list | None = None

    @property
    def metrics(self):
        return self.trainer.metrics

    @property
    def device(self):
        return self.trainer.device

    def run(self, *, figures=True):
        """Train (writing ``config.toml`` first), then save the figures; returns the last
        row of metrics."""
        main = distributed.is_main()
        if main and self.trainer.run_folder is not None:
            self.trainer.run_folder.start(self.trainer.metrics, self.trainer.metric_names)
        last = self.trainer.run()
        if figures and main and self.run_dir is not None:
            from ppl_vae.evaluation.plots import save_program_figures, save_run_figures

            save = save_run_figures if isinstance(self.program, VAE) else save_program_figures
            save(self.program, self.dataset.to(self.device), self.metrics, self.run_dir)
        return last


def build(config, run_dir=None, *, progress=True):
    """The objects of a new run of ``config``; ``run_dir`` None writes nothing."""
    return _build(resolve_data_path(config), run_dir, progress=progress, state=None)


def resume(run_dir, *, overrides=None, progress=True):
    """Rebuild the run in ``run_dir`` and restore its last checkpoint.

    The checkpoint's own copy of the configuration is the run's; ``overrides`` and any
    edit of ``config.toml`` are checked against it by one rule: only the settings in
    ``RESUMABLE`` (the number of epochs, the device, JIT, how often to score) may change,
    and a value equal to the run's is no change. The result equals that of a run that was
    never interrupted. A folder holding only ``config.toml`` (killed before its first
    checkpoint) starts from scratch.
    """
    toml = config_path(run_dir)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    state = None
    stored = load_config(toml)
    if (Path(run_dir) / CHECKPOINT).exists():
        state = RunFolder(run_dir, "").load()
        edited, stored = stored, config_from_text(state["config"],
                                                  source=f"the checkpoint in {run_dir}")
        changes = _changes(stored, edited)
        _refuse(changes, f"{toml} differs from its checkpoint's config in", "in config.toml")
        overrides = {**{key: new for key, (_, new) in changes.items()}, **overrides}
    config = resolve_data_path(config_from_text(dump_toml(stored), overrides,
                                                source=str(toml)))
    _refuse(_changes(resolve_data_path(stored), config), "cannot change", "given")
    epoch, epochs = (state or {}).get("epoch", 0), config["train"]["epochs"]
    if epoch > epochs:
        raise ConfigError(f"{run_dir} is already at epoch {epoch}, past train.epochs = "
                          f"{epochs}; give --epochs {epoch} or more to continue it")
    return _build(config, run_dir, progress=progress, state=state)


def _changes(old, new):
    """``{"section.key": (old value, new value)}`` where two configurations differ."""
    flat = [{f"{section}.{key}" if isinstance(table, dict) else section: value
             for section, table in config.items()
             for key, value in (table.items() if isinstance(table, dict) else [(None, table)])}
            for config in (old, new)]
    return {key: (flat[0].get(key), value) for key, value in flat[1].items()
            if flat[0].get(key) != value}


def _refuse(changes, what, where):
    frozen = sorted(set(changes) - RESUMABLE)
    if frozen:
        values = "; ".join(f"{key}: {changes[key][0]!r} in the run, {changes[key][1]!r} "
                           f"{where}" for key in frozen)
        raise ConfigError(f"{what} {', '.join(frozen)} when resuming ({values}); only "
                          f"{', '.join(sorted(RESUMABLE))} may change")


def resolve_data_path(config):
    """``config`` with a data file, and parts or a program given as ``file.py:Class``, named
    by absolute paths, so that evaluation and resumption from another directory read the
    same files."""
    config = _resolve_part_paths(config)
    name = str(config["data"]["dataset"])
    if name.lower() in DATASETS or (Path(name).suffix.lower() not in ARRAY_SUFFIXES
                                    and not Path(name).is_dir()):
        return config
    return {**config, "data": {**config["data"], "dataset": str(Path(name).resolve())}}


def _resolve_part_paths(config):
    model = {key: resolve_path(value) if key in PART_KEYS else value
             for key, value in config["model"].items()}
    train = {**config["train"], "objective": resolve_path(config["train"]["objective"])}
    return {**config, "model": model, "train": train}


# The settings that name a part (or a program) by registered name or import path.
PART_KEYS = ("program", "prior", "guide", "likelihood", "encoder", "decoder", "corruption")


def load_run(run_dir, *, device="auto"):
    """A trained run, to evaluate: its objects with the last checkpoint restored and the
    program in eval mode."""
    if not (Path(run_dir) / CHECKPOINT).exists():
        config_path(run_dir)
        raise CheckpointError(f"no checkpoint in {run_dir}: the run ended before its first "
                              f"epoch; continue it with --resume {run_dir}")
    experiment = resume(run_dir, overrides={"train.device": device}, progress=False)
    experiment.program.eval()
    return experiment


def _hide_entries(program, x_train, rate, seed):
    """Train with a share ``rate`` of the training entries missing (a fixed mask, seeded)."""
    if not rate:
        return
    if not hasattr(program, "set_missing"):
        raise ConfigError(f"{type(program).__name__} cannot train with missing entries "
                          "(it has no set_missing); set data.missing_rate = 0")
    program.set_missing(random_mask(x_train.shape, rate, seed=seed + 3, device=x_train.device))


def _training_data(program, dataset, support, config, device):
    """The data training sees, on the device, and the per-batch transform: binarised for a
    Bernoulli-type likelihood, never for one of 8-bit levels (which declares how it reads
    them, ``dequantize``); 8-bit images become floats a batch at a time."""
    data_cfg, train_cfg = config["data"], config["train"]
    likelihood = getattr(program, "likelihood", None)  # a program of your own may have none
    dequantize = getattr(likelihood, "dequantize", False)
    levels = hasattr(likelihood, "dequantize")
    binarization = BINARIZATIONS[data_cfg["binarize"] if support == "unit" and not levels
                                 else "none"]
    data = prepare_data(dataset, binarization, conditional=config["model"]["conditional"],
                        device=device, seed=train_cfg["seed"],
                        dequantize=dequantize)
    transform = binarize if binarization.each_batch else None
    if data.x_train.dtype == torch.uint8:
        transform = ImageBatches(dequantize=dequantize, then=transform)
    return data, transform


def _build(config, run_dir, *, progress, state):
    data_cfg, model_cfg, train_cfg = config["data"], config["model"], config["train"]
    device = distributed.init_from_environment(resolve_device(train_cfg["device"]))
    dataset = hold_or_stream(load_data(data_cfg, seed=train_cfg["seed"]), data_cfg["stream"],
                             device)
    fingerprint = data_fingerprint(data_cfg, dataset)
    if state is not None:
        _check_saved_data(state, fingerprint, dataset, run_dir)
    classes = None
    if model_cfg["conditional"] and dataset.y_train is not None:
        classes = (state or {}).get("classes") or label_values(dataset)
        dataset = index_labels(dataset, classes)
    check_program_settings(config)
    support = model_support(model_cfg)
    dims = _dims(dataset, model_cfg, support)
    program = _make_program(dims, model_cfg, device, seed=train_cfg["seed"])
    builtin = isinstance(program, VAE)
    jit = train_cfg["jit"] and builtin  # a program of your own runs uncompiled
    objective = make_objective(train_cfg["objective"], num_particles=train_cfg["num_particles"],
                               jit=jit, options=train_cfg["objective_options"], dims=dims)
    data, transform = _training_data(program, dataset, support, config, device)
    _hide_entries(program, data.x_train, data_cfg["missing_rate"], train_cfg["seed"])
    schedule = KLSchedule(train_cfg["kl_schedule"], beta=model_cfg["beta"],
                          steps_per_epoch=-(-data.x_train.shape[0] // train_cfg["batch_size"]),
                          warmup_epochs=train_cfg["kl_warmup_epochs"],
                          cycle_epochs=train_cfg["kl_cycle_epochs"])
    meta = {"dims": asdict(dims), "classes": classes,
            "data": {"source": data_cfg["dataset"], "fingerprint": fingerprint}}
    run = None if run_dir is None else RunFolder(run_dir, dump_toml(config), meta=meta)
    trainer = Trainer(program, objective, adam(program.parameters(), lr=train_cfg["lr"]), data,
                      batch_size=train_cfg["batch_size"], epochs=train_cfg["epochs"],
                      seed=train_cfg["seed"], schedule=schedule,
                      transform=transform,
                      evaluate=evaluate_elbo if builtin else generic_elbo,
                      eval_every=train_cfg["eval_every"], run=run, compile=jit,
                      progress=progress)
    if state is None:
        # the same rows on every process (seeded), as floats
        setup_from_data(program, ConvertedRows(data.x_train, to_unit)
                        if data.x_train.dtype == torch.uint8 else data.x_train)
    else:
        trainer.load_state_dict(state)
    return Experiment(config, dataset, data, dims, program, trainer,
                      None if run_dir is None else Path(run_dir), classes)


def _make_program(dims, model_cfg, device, *, seed):
    """The program of ``[model]`` on ``device``, its random initialisation seeded; a built-in
    VAE too large for the device is refused before it is built."""
    if not is_program(model_cfg):
        parts = {k: v for k, v in model_cfg.items()
                 if k not in ("latent_dim", "conditional", "program", "program_options")}
        check_model_fits(parameter_bytes(dims, **parts), device, model_cfg)
    pyro.set_rng_seed(seed)
    return build_program(dims, model_cfg).to(device)


def data_as_trained(config, dataset, classes, device):
    """``dataset`` as a run of ``config`` trained on it (:func:`prepare_data`): labels as
    class indices, on ``device``, binarised with the run's seed where the model needs it."""
    model_cfg, seed = config["model"], config["train"]["seed"]
    if classes is not None:
        dataset = index_labels(dataset, classes)
    support = model_support(model_cfg)
    binarization = BINARIZATIONS[config["data"]["binarize"] if support == "unit" else "none"]
    return prepare_data(dataset, binarization, conditional=model_cfg["conditional"],
                        device=device, seed=seed)


def data_fingerprint(data_cfg, dataset):
    """sha1 of a data file's bytes, or of a built-in data set's arrays as loaded."""
    name = str(data_cfg["dataset"])
    digest = hashlib.sha1()
    if name.lower() not in DATASETS and (Path(name).is_file() or Path(name).is_dir()):
        # a file's bytes; a folder's images' names and bytes, in sorted order
        files = [Path(name)] if Path(name).is_file() else image_files(name)[0]
        for path in files:
            digest.update(str(path.relative_to(name) if path != Path(name) else "").encode())
            with open(path, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()
    for array in (dataset.x_train, dataset.x_test, dataset.y_train, dataset.y_test):
        if array is not None:
            digest.update(array.contiguous().numpy().tobytes())
    return digest.hexdigest()


def label_values(dataset):
    """The label values present in the training or test set, in increasing order."""
    return torch.cat([y for y in (dataset.y_train, dataset.y_test)
                      if y is not None]).unique().tolist()


def index_labels(dataset, classes):
    """``dataset`` with each label replaced by its index in ``classes``."""
    values = torch.tensor(classes, dtype=torch.int64)
    indexed = []
    for y in (dataset.y_train, dataset.y_test):
        if y is None:
            indexed.append(None)
            continue
        at = torch.searchsorted(values, y).clamp(max=len(classes) - 1)
        unknown = y[values[at] != y]
        if unknown.numel():
            raise DataError(f"{dataset.name} has label {int(unknown[0])}, which is not one of "
                            f"the run's classes ({', '.join(map(str, classes))})")
        indexed.append(at)
    return replace(dataset, y_train=indexed[0], y_test=indexed[1])


# Training holds each parameter four times: the value, its gradient and Adam's two moments.
TRAINING_COPIES = 4


def check_model_fits(param_bytes, device, model_cfg):
    """ConfigError, before anything is built, where training the model would not fit in the
    memory free on ``device`` (None: the size is unknown, nothing is checked)."""
    if param_bytes is None:
        return
    need, free = TRAINING_COPIES * param_bytes, free_memory(device)
    if need > free:
        raise ConfigError(
            f"the model needs about {need:,} bytes to train ({param_bytes:,} of parameters, "
            f"times {TRAINING_COPIES} for gradients and Adam's moments) but {device} has "
            f"{free:,} free; lower --latent-dim (now {model_cfg['latent_dim']}) or --hidden "
            f"(now {','.join(map(str, model_cfg['hidden'])) or 'none'})")


def _dims(dataset, model_cfg, support):
    for x, split in ((dataset.x_train, "training"), (dataset.x_test, "test")):
        if not is_streamed(x):  # streamed rows are uint8: always in [0, 1] once scaled
            check_data(x, support=support, name=f"{dataset.name} {split} data")
    if model_cfg["conditional"] and dataset.y_train is None:
        raise ConfigError(f"a conditional VAE needs labels; {dataset.name} has none")
    return Dims(data_dim=dataset.data_dim, latent_dim=model_cfg["latent_dim"],
                num_data=dataset.x_train.shape[0],
                num_classes=dataset.num_classes if model_cfg["conditional"] else 0,
                image_shape=dataset.image_shape)


def _check_saved_data(state, fingerprint, dataset, run_dir):
    saved = state["dims"]
    if saved["data_dim"] != dataset.data_dim:
        raise CheckpointError(
            f"the checkpoint in {run_dir} was trained on data of dimension "
            f"{saved['data_dim']}, but {dataset.name} has dimension {dataset.data_dim}")
    old = state.get("data", {}).get("fingerprint")
    if old is not None and old != fingerprint:
        raise DataError(f"the data of {run_dir} changed: {dataset.name} has fingerprint "
                        f"{fingerprint}, but the run was trained on data with fingerprint "
                        f"{old}")


def setup_from_data(program, x_train):
    """Run the setup step of every part that declares one (``setup_from_data(x)``: the
    VampPrior's pseudo-inputs drawn from the data); the program need not know which."""
    for module in program.modules():
        if module is not program and hasattr(module, "setup_from_data"):
            module.setup_from_data(x_train)


def prepare_data(dataset, binarization, *, conditional, device, seed, dequantize=False):
    """The data as training sees it: on ``device``, labels only if ``conditional``, the
    test set (and the training set, for static binarisation) binarised once as
    ``binarization`` (a :class:`~ppl_vae.data.Binarization`) says; binarising each
    minibatch is the trainer's ``transform``. 8-bit training images stay uint8 (scaled
    per batch by the trainer's ``transform``); the test set becomes floats once, dequantised
    with a fixed seed where ``dequantize`` (the likelihood's wish).
    """
    data = dataset.to(device)
    x_train, x_test = data.x_train, data.x_test
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    x_test = to_unit(x_test, dequantize=dequantize, generator=gen)
    if binarization.train_once:
        x_train = to_unit(x_train.load().to(device) if is_streamed(x_train) else x_train)
    if binarization.test_once:
        x_test = binarize(x_test, gen)
    if binarization.train_once:
        x_train = binarize(x_train, gen)
    keep = conditional and data.y_train is not None
    return replace(data, x_train=x_train, x_test=x_test,
                   y_train=data.y_train if keep else None, y_test=data.y_test if keep else None)


def hold_or_stream(dataset, stream, device):
    """``dataset`` with its training rows read into memory, or left on disk to stream, as
    ``data.stream`` says (:func:`~ppl_vae.data.stream.choose_stream`: "auto" streams what
    would not fit in the memory free on ``device``); the choice joins ``read_as``."""
    x = dataset.x_train
    if not is_streamed(x):
        if stream is True:
            raise ConfigError(f"{dataset.name} cannot be streamed: only a uint8 .npy file or "
                              "a folder of images can; set data.stream = \"auto\" or false")
        return dataset
    nbytes = x.shape[0] * x.shape[1] * x.dtype.itemsize
    streamed, why = choose_stream(nbytes, free_memory(device), stream)
    read_as = "; ".join(note for note in (dataset.read_as, f"training set {why}") if note)
    return replace(dataset, x_train=x if streamed else x.load(), read_as=read_as)


def load_data(data_cfg, *, seed):
    """The data set of ``[data]``; ``data.options`` go to a built-in data set's loader
    (``num_data`` and ``image_size`` of ``shapes``)."""
    common = {"data_dir": data_cfg["data_dir"], "download": data_cfg["download"],
              "test_fraction": data_cfg["test_fraction"], "seed": seed}
    options, name = data_cfg["options"], str(data_cfg["dataset"])
    if Path(name).is_dir() and name.lower() not in DATASETS:  # an image folder
        unknown = sorted(set(options) - {"image_size"})
        if unknown:
            raise ConfigError(f"an image folder takes data.options image_size only; got "
                              f"{', '.join(unknown)}")
        return load_dataset(name, **common, lazy=True, image_size=options.get("image_size"))
    if not options:
        return load_dataset(name, **common, lazy=True)
    if name.lower() not in DATASETS:
        raise ConfigError(f"data.options apply to the built-in data sets "
                          f"({', '.join(DATASETS)}); {name!r} takes none")
    try:
        return DATASETS[name.lower()](**common, **options)
    except TypeError as err:
        raise ConfigError(f"bad data.options for {name!r}: {err}") from None


def make_objective(name="meanfield", *, num_particles=1, jit=False, options=None, dims=None):
    """Build the objective named ``name`` with ``num_particles`` vectorized samples per data
    point.

    ``max_plate_nesting=1``: the only plate is the data plate, so particles can be
    vectorized along dimension -2 without Pyro tracing the model first to find out.

    ``jit=True`` compiles model and guide with ``torch.jit.trace`` at the first step and
    replays the compiled graph afterwards, which removes Pyro's per-step Python overhead.
    It needs a model of static structure whose tensor inputs are all positional
    arguments; one graph is compiled per distinct set of keyword arguments. On a torch
    without ``torch.jit.trace`` the objective is built uncompiled, with a
    :class:`JitUnavailableWarning`.

    A penalized objective (a :class:`Penalty` in the registry) takes its ``options``
    (``train.objective_options``: its weights, and ``elbo``, the ELBO it is added to,
    ``"meanfield"`` by default) and the model's ``dims``; the plain ELBOs take none.
    """
    cls = lookup("objective", name)
    options = dict(options or {})
    if isinstance(cls, type) and issubclass(cls, Penalty):
        base = options.pop("elbo", "meanfield")
        if base not in ("meanfield", "elbo"):
            raise ConfigError(f"the {name!r} objective adds its penalty to elbo = 'meanfield' "
                              f"or 'elbo'; got {base!r}")
        if dims is None:
            raise ConfigError(f"the {name!r} objective needs the model's Dims (dims=...)")
        try:
            penalty = cls(dims, **options)
        except TypeError as err:
            raise ConfigError(f"bad options for objective {name!r}: {err}") from None
        return PenalizedELBO(make_objective(base, num_particles=num_particles, jit=jit), penalty)
    if options:
        raise ConfigError(f"the {name!r} objective takes no options; got "
                          f"{', '.join(sorted(options))}")
    if jit:
        if cls not in JIT_VERSIONS:
            raise ConfigError(f"the {name!r} objective has no JIT-compiled version; "
                              "set train.jit = false (or pass --no-jit)")
        if not jit_available():
            warnings.warn(f"this torch has no torch.jit.trace: the {name!r} objective runs "
                          "uncompiled (as with train.jit = false)", JitUnavailableWarning,
                          stacklevel=2)
            jit = False
        else:
            cls = JIT_VERSIONS[cls]
    options = {"ignore_jit_warnings": True} if jit else {}
    return cls(num_particles=num_particles, vectorize_particles=num_particles > 1,
               max_plate_nesting=1, **options)

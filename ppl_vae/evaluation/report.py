"""Results tables: every evaluation number of a trained VAE as one row, written as
markdown and CSV, for one run folder (``ppl-vae eval RUN_DIR``) or for the model zoo
(``scripts/zoo_results.py``).

All numbers are nats per example on held-out data, higher is better for the bounds;
see :mod:`ppl_vae.evaluation.likelihood` for what each one is.
"""

import hashlib
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ppl_vae.data import binarize
from ppl_vae.data.images import to_unit
from ppl_vae.errors import ConfigError
from ppl_vae.evaluation import tables
from ppl_vae.evaluation.generic import evaluate_program
from ppl_vae.evaluation.likelihood import (
    ELBO_SAMPLES,
    Q_STAR_SAMPLES,
    active_units,
    evaluate_elbo,
    fit_optimal_posterior,
    inference_gaps,
    log_likelihood,
)
from ppl_vae.parts.likelihoods import program_bits_per_dim
from ppl_vae.registry import label
from ppl_vae.vae import VAE

# (CSV column, markdown header, decimals); None decimals: written as is.
COLUMNS = [
    ("model", "model", None),
    ("prior", "prior", None),
    ("guide", "guide", None),
    ("likelihood", "likelihood", None),
    ("objective", "objective", None),
    ("test_elbo", "test ELBO", 2),
    ("test_recon", "E_q log p(x|z)", 2),
    ("test_kl", "KL", 2),
    ("log_px", "log p(x)", 2),
    ("log_px_se", "± s.e.", 2),
    ("bits_per_dim", "bits/dim", 3),  # of log p(x), for the image likelihoods
    ("num_samples", "K", None),
    ("active_units", "active units", None),
    ("approximation_gap", "approx. gap", 2),
    ("amortization_gap", "amort. gap", 2),
    ("amortization_gap_train", "amort. gap (train)", 2),
    ("train_seconds", "train s", 0),
    ("eval_seconds", "eval s", 1),
    ("notes", "notes", None),
]


@torch.no_grad()
def evaluate_vae(vae, x, y=None, *, x_train=None, y_train=None, num_samples=5000,
                 gap_points=500, gap_steps=300, progress=False, ais=None):
    """One results row for a trained VAE on held-out data ``x``.

    Parameters
    ----------
    vae : VAE
    x, y : Tensor (N, D), LongTensor (N,) or None
        Held-out data (already binarised where the likelihood wants it).
    x_train, y_train : optional
        The first rows of the training set, in training order: their amortization gap is
        reported too (for the per-datapoint guide, the gap of its trained table).
    num_samples : int
        K of the importance-sampled log p(x).
    gap_points : int
        How many rows of ``x`` (and of ``x_train``) the inference gaps use.
    gap_steps : int
        Adam steps of the q* fit.
    progress : bool
        Show a progress bar on stderr over the samples of log p(x) and of the gaps' ELBOs
        and the steps of the q* fits (counted in point-samples).
    ais : dict, optional
        Estimate log p(x) by annealed importance sampling instead, with these keyword
        options of :func:`ppl_vae.evaluation.ais.ais_log_likelihood` (``num_steps``,
        ``num_chains``, ...); the gaps then use the AIS estimate as log p(x).

    Returns
    -------
    dict
        The columns of :data:`COLUMNS` that the VAE determines (test ELBO and its terms,
        log p(x) and its standard error over points, active units, gaps, notes, seconds),
        and ``log_px_points``, the list of per-point log p(x) (for paired comparisons).
    """
    start = time.perf_counter()
    vae.eval()
    guide = vae.posterior
    m, m_train = min(gap_points, len(x)), 0 if x_train is None else min(gap_points, len(x_train))
    if ais is not None:
        ais = _ais_options(vae, ais)
    per_point = num_samples if ais is None else ais["num_chains"] * ais["num_steps"]
    bar = tqdm(total=_work(guide, len(x), m, m_train, per_point, gap_steps),
               desc="evaluating", unit="pt-sample", unit_scale=True, file=sys.stderr,
               disable=not progress)
    with bar:
        row = {f"test_{key}": value for key, value in evaluate_elbo(vae, x, y).items()}
        proposal = None
        if not guide.has_density and ais is None:
            proposal = fit_optimal_posterior(vae, x, y, steps=gap_steps, progress=bar.update)
        if ais is None:
            log_px = log_likelihood(vae, x, y, num_samples=num_samples, proposal=proposal,
                                    progress=bar.update)
        else:
            log_px = _ais_log_px(vae, x, y, ais, row, progress=bar.update)
        row["log_px"] = float(log_px.mean())
        row["log_px_points"] = log_px.tolist()
        row["log_px_se"] = (float(log_px.std() / math.sqrt(len(log_px))) if len(log_px) > 1
                            else 0.0)
        row.setdefault("num_samples", num_samples)
        row["active_units"] = f"{active_units(vae, x, y)[0]}/{vae.dims.latent_dim}"
        if guide.has_density:
            gaps = inference_gaps(vae, x[:m], _head(y, m), log_px=log_px[:m], steps=gap_steps,
                                  progress=bar.update)
            row["approximation_gap"] = gaps["approximation_gap"]
            row["amortization_gap"] = gaps["amortization_gap"]
            if x_train is not None:
                train = inference_gaps(vae, x_train[:m_train], _head(y_train, m_train),
                                       idx=torch.arange(m_train, device=x_train.device),
                                       num_samples=num_samples, steps=gap_steps,
                                       progress=bar.update)
                row["amortization_gap_train"] = train["amortization_gap"]
    row["notes"] = "; ".join(filter(None, [guide.evaluation_note, row.pop("ais_note", None)]))
    row["eval_seconds"] = time.perf_counter() - start
    return row


def evaluate_run(run_dir, *, num_samples=5000, gap_points=500, gap_steps=300, device="auto",
                 progress=False, ais=None):
    """Evaluate the checkpoint of a run folder; write ``eval.md``, ``eval.csv`` and
    ``log_px.csv`` (log p(x) of each test point, in test-set order) into it. ``progress``
    shows a progress bar on stderr, ``ais`` chooses AIS for log p(x) (see
    :func:`evaluate_vae`); its files are then ``eval_ais.md``, ``eval_ais.csv`` and
    ``log_px_ais.csv``.

    The test set is the run's own (binarised with the run's fixed seed, as in its
    metrics); the training-set amortization gap uses the first ``gap_points`` training
    points, binarised once with a fixed seed when the run binarises dynamically. The row's
    ``test_set`` is a fingerprint of the test data: runs with equal fingerprints scored the
    same points, so their per-point log p(x) can be compared pairwise
    (:func:`paired_differences`).

    Raises
    ------
    CheckpointError
        If ``run_dir`` holds no run or no checkpoint, or its data no longer fit it.

    Returns
    -------
    row : dict
    paths : list of Path
    """
    from ppl_vae.build import load_run

    run = load_run(run_dir, device=device)
    data = run.data
    x_train = to_unit(data.x_train[:gap_points]).to(data.x_test.device)  # 8-bit as floats
    # binarised per minibatch in training (the step after scaling 8-bit data): once here
    if getattr(run.trainer.transform, "then", run.trainer.transform) is not None:
        seed = run.config["train"]["seed"]
        x_train = binarize(x_train, torch.Generator(device=x_train.device).manual_seed(seed + 2))
    y_train = None if data.y_train is None else data.y_train[:gap_points]
    row = run_description(run.config)
    row["train_seconds"] = sum(m["seconds"] for m in run.metrics)
    if isinstance(run.program, VAE):
        row.update(evaluate_vae(run.program, data.x_test, data.y_test, x_train=x_train,
                                y_train=y_train, num_samples=num_samples,
                                gap_points=gap_points, gap_steps=gap_steps, progress=progress,
                                ais=ais))
    elif ais is not None:
        raise ConfigError("AIS needs the built-in VAE's single latent site: evaluate a program "
                          "with --estimator is (the default)")
    else:  # a program of your own: the generic path (ELBO and log p(x) only)
        row.update(_evaluate_program(run.program, data, num_samples, progress))
    bpd = program_bits_per_dim(run.program, row["log_px"], run.dims.data_dim)
    if bpd is not None:  # beside the nats: the image likelihoods' unit
        row["bits_per_dim"] = bpd
    row["test_set"] = hashlib.sha1(data.x_test.cpu().numpy().tobytes()).hexdigest()[:16]
    run_dir, suffix = Path(run_dir), "" if ais is None else "_ais"
    paths = write_table([row], run_dir / f"eval{suffix}.md", run_dir / f"eval{suffix}.csv")
    with open(run_dir / f"log_px{suffix}.csv", "w", newline="") as f:
        f.write("log_px\n" + "".join(f"{value!r}\n" for value in row["log_px_points"]))
    return row, [*paths, run_dir / f"log_px{suffix}.csv"]


def paired_differences(rows, reference):
    """log p(x) of each row minus the reference row's, paired over the same test points.

    Only rows whose ``test_set`` fingerprint equals the reference's are compared (the
    same data, binarised alike). Returns ``{model: (mean difference, its standard
    error)}``: the standard error of the mean of the per-point differences, which is
    smaller than that of either mean when the two models find the same points hard.
    """
    by_name = {row["model"]: row for row in rows}
    if reference not in by_name:
        return {}
    ref = by_name[reference]
    base = torch.tensor(ref["log_px_points"], dtype=torch.float64)
    out = {}
    for row in rows:
        if row["model"] == reference or row.get("test_set") != ref.get("test_set"):
            continue
        diff = torch.tensor(row["log_px_points"], dtype=torch.float64) - base
        out[row["model"]] = (float(diff.mean()), float(diff.std() / math.sqrt(len(diff))))
    return out


def paired_table(differences, reference):
    """:func:`paired_differences` as a markdown table."""
    lines = ["| | difference in log p(x) |", "|---|---:|"]
    lines += [f"| {name} - {reference} | {mean:+.2f} ± {se:.2f} |"
              for name, (mean, se) in differences.items()]
    return "\n".join(lines) + "\n"


def run_description(config):
    """The columns that name a run's model: name, parts and objective (with K for IWAE)."""
    model, train = config["model"], config["train"]
    objective = label(train["objective"])
    if train["num_particles"] > 1:
        objective += f" (K={train['num_particles']})"
    if model.get("program"):
        return {"model": config["name"], "prior": "", "guide": "", "likelihood": "",
                "objective": objective, "notes": f"program {label(model['program'])}"}
    return {"model": config["name"], "prior": label(model["prior"]),
            "guide": label(model["guide"]), "likelihood": label(model["likelihood"]),
            "objective": objective}


def markdown_table(rows):
    """Rows as a markdown table; an empty cell where a number does not apply."""
    return tables.markdown_table(rows, COLUMNS)


def write_table(rows, markdown_path, csv_path):
    """Write ``rows`` as a markdown table and as CSV (every column, full precision)."""
    return tables.write_table(rows, COLUMNS, markdown_path, csv_path)


def _work(guide, n, m, m_train, num_samples, gap_steps):
    """The point-samples :func:`evaluate_vae` scores: log p(x) of the ``n`` test points,
    then two ELBOs and a q* fit for ``m`` test and ``m_train`` training points (and their
    log p(x)), or a q* fit as the proposal of a guide without a density."""
    q_star = gap_steps * Q_STAR_SAMPLES
    if not guide.has_density:
        return n * (num_samples + q_star)
    gaps = (2 * ELBO_SAMPLES + q_star) * (m + m_train)
    return n * num_samples + gaps + m_train * num_samples


def _evaluate_program(program, data, num_samples, progress):
    """The generic path (:mod:`ppl_vae.evaluation.generic`) for a program of your own."""
    with tqdm(total=len(data.x_test) * num_samples, desc="evaluating", unit="pt-sample",
              unit_scale=True, file=sys.stderr, disable=not progress) as bar:
        return evaluate_program(program, data.x_test, data.y_test, num_samples=num_samples,
                                progress=bar.update)


def _ais_options(vae, options):
    """AIS's options with its defaults filled in; a guide without a density starts AIS
    from the prior."""
    from ppl_vae.evaluation import ais

    start = "guide" if vae.posterior.has_density else "prior"
    return {"num_steps": ais.NUM_STEPS, "num_chains": ais.NUM_CHAINS, "start": start,
            **options}


def _ais_log_px(vae, x, y, options, row, progress):
    """log p(x) by AIS (:mod:`ppl_vae.evaluation.ais`); the K column and a note say how."""
    from ppl_vae.evaluation.ais import ais_log_likelihood

    result = ais_log_likelihood(vae, x, y, progress=progress, **options)
    chains, steps = options["num_chains"], options["num_steps"]
    row["num_samples"] = f"AIS {chains}x{steps}"
    row["ais_note"] = (f"log p(x) by AIS from the {options['start']}: {chains} chains, "
                       f"{steps} steps, HMC acceptance {result.acceptance:.2f}")
    return result.log_px


def _head(t, m):
    return None if t is None else t[:m]

"""Train every model of the zoo (models/*.toml) on its data and write the results table.

    python scripts/zoo_results.py                  # every model, its own epochs, K = 5000
    python scripts/zoo_results.py --models vae vampprior --epochs 50
    python scripts/zoo_results.py --quick          # 1 epoch, K = 50: a smoke test

Each model trains into OUT/<name> (a run that is already there is resumed up to the
epochs asked for, so a second call only evaluates) and is evaluated as ``ppl-vae eval``
does it. The table (test ELBO and its terms, importance-sampled log p(x) with its standard
error over test points, active units, approximation and amortization gaps) goes to
OUT/zoo.md and OUT/zoo.csv. The script also times the evaluation of log p(x) for 1,000
digits with K samples each and prints it with the table.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from ppl_vae.build import build, load_run, resume
from ppl_vae.config import MODELS_DIR, load_config
from ppl_vae.data import binarize
from ppl_vae.device import resolve_device
from ppl_vae.evaluation.likelihood import log_likelihood
from ppl_vae.evaluation.report import (
    evaluate_run,
    markdown_table,
    paired_differences,
    paired_table,
    write_table,
)
from ppl_vae.inference.runs import CHECKPOINT


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/zoo", help="folder of the runs and the table")
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help="names in models/ (default: all)")
    parser.add_argument("--epochs", type=int, help="override every model's epochs")
    parser.add_argument("--num-samples", type=int, default=5000, help="K for log p(x)")
    parser.add_argument("--gap-points", type=int, default=500)
    parser.add_argument("--gap-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto",
                        help="auto (default: CUDA if available), cpu or cuda")
    parser.add_argument("--quick", action="store_true",
                        help="1 epoch, K = 50, 20 gap points, no figures: checks that "
                             "everything runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.num_samples, args.gap_points, args.gap_steps = 1, 50, 20, 10
    return args


def train(name, run_dir, epochs, device, figures=True):
    """Train ``models/<name>.toml`` into ``run_dir``, resuming a run that is there."""
    overrides = {"train.epochs": epochs, "train.device": device}
    if (run_dir / CHECKPOINT).is_file():
        experiment = resume(run_dir, overrides=overrides, progress=False)
    else:
        experiment = build(load_config(name, overrides), run_dir, progress=False)
    experiment.run(figures=figures)


def time_log_likelihood(run_dir, num_samples, device, num_points=1000):
    """Seconds to estimate log p(x) of ``num_points`` digits (the test set, then training
    points, binarised once) with ``num_samples`` samples each, and that many points."""
    run = load_run(run_dir, device=device)
    extra = run.data.x_train[: max(0, num_points - len(run.data.x_test))]
    if run.trainer.transform is not None:  # binarised per minibatch in training
        extra = binarize(extra, torch.Generator().manual_seed(0))
    x = torch.cat([run.data.x_test, extra])[:num_points]
    start = time.perf_counter()
    log_likelihood(run.program, x, num_samples=num_samples).sum().item()  # waits for a GPU
    return time.perf_counter() - start, len(x)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    names = args.models or sorted(path.stem for path in MODELS_DIR.glob("*.toml"))
    out = Path(args.out)
    rows = []
    for name in names:
        run_dir = out / name
        train(name, run_dir, args.epochs, device, figures=not args.quick)
        row, _ = evaluate_run(run_dir, num_samples=args.num_samples,
                              gap_points=args.gap_points, gap_steps=args.gap_steps,
                              device=device)
        rows.append(row)
        print(f"{name}: test ELBO {row['test_elbo']:.2f}, log p(x) {row['log_px']:.2f} "
              f"± {row['log_px_se']:.2f}", file=sys.stderr, flush=True)
    timed = "vae" if "vae" in names else names[0]
    seconds, count = time_log_likelihood(out / timed, args.num_samples, device)
    where = "a GPU" if device.startswith("cuda") else f"{torch.get_num_threads()} CPU thread(s)"
    timing = (f"log p(x) of {count} points with K = {args.num_samples} ({timed}): "
              f"{seconds:.1f} s on {where}")
    paired = paired_table(paired_differences(rows, reference=timed), timed)
    write_table(rows, out / "zoo.md", out / "zoo.csv")
    with open(out / "zoo.md", "a") as f:
        f.write(f"\nPaired over the same test points:\n\n{paired}\n{timing}\n")
    print(markdown_table(rows))
    print(paired)
    print(timing)
    return 0


if __name__ == "__main__":
    from ppl_vae.commands import run

    sys.exit(run(main))

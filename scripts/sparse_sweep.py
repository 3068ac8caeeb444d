"""Train the sparse autoencoder (models/sparse_autoencoder.toml) for several target
average activations rho and compare what its code units do and what it reconstructs.

    python scripts/sparse_sweep.py                          # rho = 0.02, 0.05, 0.2, 0.5
    python scripts/sparse_sweep.py --rhos 0.05 0.5 --epochs 100
    python scripts/sparse_sweep.py --quick                  # seconds: checks that it runs

For each rho, on the test digits: the measured average activation of the code units (mean,
and the least and most active unit), the mean number of units above 0.5 per digit, and the
reconstruction term log p(x | z) in nats per digit. The table goes to OUT/sparse_sweep.md
and .csv, the figure (test digits above each rho's reconstructions) to OUT/sparse_sweep.png.
"""

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ppl_vae.build import build  # noqa: E402
from ppl_vae.config import load_config  # noqa: E402
from ppl_vae.evaluation.sparsity import activation_summary, sweep_figure  # noqa: E402
from ppl_vae.evaluation.tables import write_table  # noqa: E402

COLUMNS = [("rho", "target rho", None), ("mean_activation", "mean activation", 3),
           ("min_unit", "least active unit", 3), ("max_unit", "most active unit", 3),
           ("units_on", "units > 0.5 per digit", 2), ("test_recon", "log p(x|z)", 2)]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rhos", nargs="+", type=float, default=[0.02, 0.05, 0.2, 0.5])
    parser.add_argument("--model", default="sparse_autoencoder", help="model file")
    parser.add_argument("--weight", type=float, help="penalty weight (default: the file's)")
    parser.add_argument("--epochs", type=int, help="default: the model file's")
    parser.add_argument("--out", default="runs/sparse_sweep")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="2 epochs, hidden 32")
    return parser.parse_args(argv)


def train(rho, args):
    """The model file at target ``rho``, trained into OUT/rho_<rho>."""
    config = load_config(args.model)
    options = {**config["train"]["objective_options"], "rho": rho}
    if args.weight is not None:
        options["weight"] = args.weight
    overrides = {"train.objective_options": options}
    if args.epochs or args.quick:
        overrides["train.epochs"] = 2 if args.quick else args.epochs
    if args.quick:
        overrides["model.hidden"] = [32]
    experiment = build(load_config(args.model, overrides), Path(args.out) / f"rho_{rho:g}",
                       progress=False)
    experiment.run(figures=False)
    return experiment


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, vaes = [], []
    for rho in args.rhos:
        experiment = train(rho, args)
        vae, x = experiment.program.eval(), experiment.data.x_test
        rows.append({"rho": f"{rho:g}", **activation_summary(vae, x),
                     "test_recon": experiment.metrics[-1]["test_recon"]})
        vaes.append(vae)
        print(f"rho {rho:g}: mean activation {rows[-1]['mean_activation']:.3f}",
              file=sys.stderr, flush=True)
    out = Path(args.out)
    write_table(rows, COLUMNS, out / "sparse_sweep.md", out / "sparse_sweep.csv")
    fig = sweep_figure(vaes, [f"rho {rho:g}" for rho in args.rhos],
                       experiment.data.x_test, experiment.dims.image_shape)
    fig.savefig(out / "sparse_sweep.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    print((out / "sparse_sweep.md").read_text())
    return 0


if __name__ == "__main__":
    from ppl_vae.commands import run

    sys.exit(run(main))

"""Train VAE variants on the generated shapes and compare how well they disentangle.

    python scripts/disentangle.py                       # the default variants and budget
    python scripts/disentangle.py --variants shapes_vae beta_tcvae --epochs 40
    python scripts/disentangle.py --quick               # a few seconds: checks that it runs

A variant is a model file: a name in models/ (``shapes_vae``, ``beta_vae``, ``beta_tcvae``,
``factor_vae``, ``dip_vae``, ``joint_vae``, ``cascade_vae``, or any other) or a path to a TOML
file. All
variants train on the same dSprites-like shapes (:mod:`ppl_vae.data.shapes`) with the same nets
and budget: the flags replace each file's data, latent size, hidden widths, epochs, batch
size, learning rate and seed, and keep what makes the variant (its parts, beta, objective
and weights).

For each variant, on the test set: the Mutual Information Gap of the posterior means
against the known factors, the FactorVAE score (fresh renders), the test ELBO with its
reconstruction and KL terms, the accuracy of a discrete code (JointVAE's, CascadeVAE's)
against the shape factor, the total correlation of the aggregate posterior (exact
over the test set, where the guide is Gaussian) and the active units. The table goes to
OUT/disentangle.md and OUT/disentangle.csv with the budget that made it; each variant's
run folder OUT/<variant> holds its figures and OUT/<variant>/traversals.png, the decoded
images as each code sweeps -2.5..2.5 from a test image's code (codes ordered by how much
their posterior means vary over the test set; JointVAE's and CascadeVAE's continuous codes
only).
"""

import argparse
import csv
import functools
import math
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ppl_vae.build import build  # noqa: E402
from ppl_vae.config import load_config  # noqa: E402
from ppl_vae.data import shapes  # noqa: E402
from ppl_vae.errors import PplVaeError  # noqa: E402
from ppl_vae.evaluation.aggregate import kl_decomposition  # noqa: E402
from ppl_vae.evaluation.disentanglement import (  # noqa: E402
    cluster_accuracy,
    factor_vae_score,
    latent_traversals,
    mig,
)
from ppl_vae.evaluation.likelihood import active_units  # noqa: E402
from ppl_vae.evaluation.tables import markdown_table  # noqa: E402

DEFAULT_VARIANTS = ("shapes_vae", "beta_vae", "beta_tcvae", "factor_vae", "dip_vae",
                    "joint_vae", "cascade_vae")
# (CSV column, markdown header, decimals)
COLUMNS = [
    ("variant", "variant", None),
    ("what", "objective / parts", None),
    ("mig", "MIG", 3),
    ("factor_vae_score", "FactorVAE score", 3),
    ("code_accuracy", "code acc. (shape)", 3),
    ("test_elbo", "test ELBO", 1),
    ("test_recon", "E_q log p(x|z)", 1),
    ("test_kl", "KL", 2),
    ("tc", "TC", 2),
    ("active_units", "active units", None),
    ("train_seconds", "train s", 0),
]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                        metavar="NAME", help="model files in models/ (default: %(default)s)")
    parser.add_argument("--out", default="runs/disentangle", help="folder of runs and table")
    parser.add_argument("--num-data", type=int, default=10_000,
                        help="shapes generated (80%% train, 20%% test)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--hidden", default="256,256", help="hidden widths, e.g. 256,256")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--votes", type=int, default=800,
                        help="FactorVAE-score training votes (half as many held out)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true",
                        help="600 shapes, 1 epoch, hidden 32, 20 votes: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_data, args.epochs, args.hidden, args.votes = 600, 1, "32", 20
    args.hidden = [int(w) for w in args.hidden.split(",") if w.strip()]
    return args


def overrides(args):
    return {
        "data.dataset": "shapes", "data.binarize": "none",
        "data.options": {"num_data": args.num_data, "image_size": args.image_size},
        "model.latent_dim": args.latent_dim, "model.hidden": args.hidden,
        "train.epochs": args.epochs, "train.batch_size": args.batch_size,
        "train.lr": args.lr, "train.seed": args.seed, "train.device": args.device,
    }


def describe(config):
    """What makes the variant, in a few words: objective and weights, beta, parts."""
    model, train = config["model"], config["train"]
    words = [train["objective"]]
    words += [f"{key}={value}" for key, value in train["objective_options"].items()
              if not isinstance(value, list)]
    if model["beta"] != 1.0:
        words.append(f"beta={model['beta']:g}")
    if train["kl_schedule"] != "constant":
        words.append(f"{train['kl_schedule']} KL schedule")
    if (model["prior"], model["guide"]) != ("normal", "diagonal"):
        words.append(f"prior {model['prior']}, guide {model['guide']}")
    return ", ".join(words)


def evaluate(trainer, factors_test, args, generator):
    """The table's row for a trained variant."""
    vae, x = trainer.program, trainer.data.x_test
    vae.eval()
    with torch.no_grad():
        codes = vae.encode(x).mean
    last = trainer.metrics[-1]
    observe = functools.partial(shapes.render, image_size=args.image_size)
    score = factor_vae_score(lambda images: vae.encode(images.to(x.device)).mean,
                             shapes.sample_factors, observe, num_train=args.votes,
                             num_eval=max(1, args.votes // 2),
                             num_variance_estimate=min(5000, 10 * args.votes),
                             generator=generator)
    try:
        tc = kl_decomposition(vae, x)["tc"]
    except PplVaeError:  # no closed-form marginals (JointVAE's relaxed categorical)
        tc = math.nan
    count, _ = active_units(vae, x)
    return {"variant": trainer.config["name"], "what": describe(trainer.config),
            "mig": mig(codes.cpu(), factors_test), "factor_vae_score": score.score,
            "code_accuracy": code_accuracy(vae, codes, factors_test),
            "test_elbo": last["test_elbo"], "test_recon": last["test_recon"],
            "test_kl": last["test_kl"], "tc": tc,
            "active_units": f"{count}/{codes.shape[1]}",
            "train_seconds": sum(row["seconds"] for row in trainer.metrics)}


def code_accuracy(vae, codes, factors):
    """The accuracy of a discrete code (the last ``num_categories`` codes: JointVAE's
    category probabilities, CascadeVAE's one-hot code) against the shape factor, under the
    best matching of categories to shapes; NaN for a variant without one."""
    num_categories = getattr(vae.posterior, "num_categories", 0)
    if not num_categories:
        return math.nan
    category = codes[:, -num_categories:].argmax(-1).cpu()
    return cluster_accuracy(category, factors[:, list(shapes.FACTORS).index("shape")])


def traversal_figure(trainer, path):
    """Decoded sweeps of each code from the first test image's code; most varied first."""
    vae, x = trainer.program, trainer.data.x_test
    with torch.no_grad():
        means = vae.encode(x).mean
    # JointVAE's last codes are category probabilities: sweep the continuous ones only.
    continuous = getattr(vae.posterior, "continuous_dim", means.shape[1])
    order = means[:, :continuous].var(0).argsort(descending=True).tolist()
    fig = latent_traversals(lambda z: vae.decode(z).mean, means[0], trainer.dataset.image_shape,
                            values=torch.linspace(-2.5, 2.5, 9), dims=order)
    fig.axes[0].set_title(f"{trainer.config['name']}: latent traversals")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def train(name, run_dir, args):
    """Train models/<name>.toml with the shared data, nets and budget into ``run_dir``."""
    config = load_config(name, overrides(args))
    if run_dir.exists() and any(run_dir.iterdir()):
        raise PplVaeError(f"{run_dir} already holds a run; choose another --out")
    trainer = build(config, run_dir, progress=False)
    trainer.run(figures=not args.quick)
    return trainer


def budget_line(args, seconds):
    return (f"Budget: {args.num_data:,} shapes of {args.image_size}x{args.image_size} "
            f"(80% train), latent_dim {args.latent_dim}, MLP {'-'.join(map(str, args.hidden))},"
            f" {args.epochs} epochs of batch {args.batch_size}, lr {args.lr:g}, seed "
            f"{args.seed}; FactorVAE score from {args.votes} + {max(1, args.votes // 2)} votes "
            f"of 64; {seconds:.0f} s in all on {torch.get_num_threads()} CPU thread(s).")


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = Path(args.out)
    data, _, factors_test = shapes.load_shapes_with_factors(
        seed=args.seed, image_size=args.image_size, num_data=args.num_data)
    rows = []
    for name in args.variants:
        trainer = train(name, out / Path(name).stem, args)  # a name or a path to a file
        if not torch.equal(trainer.dataset.x_test, data.x_test):  # factors must match images
            raise PplVaeError(f"{name}: its test images are not those of the factors")
        rows.append(evaluate(trainer, factors_test, args,
                             torch.Generator().manual_seed(args.seed)))
        traversal_figure(trainer, trainer.run_dir / "traversals.png")
        print(f"{name}: MIG {rows[-1]['mig']:.3f}, FactorVAE score "
              f"{rows[-1]['factor_vae_score']:.3f}, test ELBO {rows[-1]['test_elbo']:.1f}",
              file=sys.stderr, flush=True)
    budget = budget_line(args, time.perf_counter() - start)
    table = markdown_table(rows, COLUMNS)
    (out / "disentangle.md").write_text(f"{table}\n{budget}\n")
    with open(out / "disentangle.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[key for key, _, _ in COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    print(table)
    print(budget)
    return 0


if __name__ == "__main__":
    from ppl_vae.commands import run

    sys.exit(run(main))

"""Benchmarks of ppl-vae against the alternatives a user would pick, one subcommand each.

    ppl-vae bench svi           # VAE training steps/s: the Pyro trainer vs plain PyTorch
    ppl-vae bench eval          # log p(x) by importance sampling: points x samples per second
    ppl-vae bench parts         # each part of a step the trainer speeds up, vs its usual form
    ppl-vae bench gmm           # EM: ours vs scikit-learn, time and log-likelihood
    ppl-vae bench gmm-memory    # peak memory added by fitting 2,000,000 x 8, K=16
    ppl-vae bench images        # conv VAE on 32x32x3 uint8 images: images/s vs plain PyTorch
    ppl-vae bench images-memory # streaming a >= 4 GB uint8 .npy: peak RssAnon, images/s
    ppl-vae bench gmm-stream    # out of core: a memory-mapped --rows x 16 file, peak RssAnon
    ppl-vae bench all           # every benchmark
    ppl-vae bench svi --quick   # tiny sizes (a smoke test)

(``python scripts/bench.py ...`` is the same command.) Each benchmark runs ours and the
alternative in one process, on the same data, after a warm-up, and prints medians and
their ratio. A benchmark is a function ``(args) -> dict`` registered in
:data:`BENCHMARKS` with :func:`benchmark`; it prints its table and returns its numbers
(``--json`` writes them).
"""

import json

from ppl_vae.commands.bench._core import BENCHMARKS, benchmark
from ppl_vae.commands.bench.gmm import (
    bench_gmm,
    bench_gmm_memory,
    bench_gmm_stream,
    measure_memory,
)
from ppl_vae.commands.bench.images import bench_images, bench_images_memory
from ppl_vae.commands.bench.vae import (
    SVI_VARIANTS,
    bench_eval,
    bench_parts,
    bench_svi,
    per_point_log_likelihood,
    plain_torch_loss,
    pyro_log_likelihood,
)
from ppl_vae.commands.common import OneLineParser, add_shared_arguments, bounded_int

# Importing the modules registers their benchmarks; the names are reachable from here.
__all__ = ["BENCHMARKS", "SVI_VARIANTS", "bench_eval", "bench_gmm", "bench_gmm_memory",
           "bench_gmm_stream", "bench_images", "bench_images_memory",
           "bench_parts", "bench_svi", "benchmark", "build_parser", "main", "measure_memory",
           "per_point_log_likelihood", "plain_torch_loss", "pyro_log_likelihood"]

# ------------------------------------------------------------------------------ command


def build_parser(prog=None):
    parser = OneLineParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=[*BENCHMARKS, "all"], help="benchmark to run")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--iters", type=int, help="EM iterations (gmm; default 10)")
    parser.add_argument("--repeats", type=int,
                        help="timed rounds, median reported (default: 15 for svi and parts, 5 for "
                             "eval, 3 for gmm)")
    add_shared_arguments(parser, quiet=False)
    parser.add_argument("--dtypes", default="float32,float64",
                        help="compute dtypes of ours to time (default: float32,float64)")
    parser.add_argument("--threads", type=bounded_int(1), default=1,
                        help="threads for torch and for numpy's BLAS (default: 1; the same "
                             "for both libraries)")
    parser.add_argument("--skip-sklearn-memory", action="store_true",
                        help="gmm-memory: measure ours only")
    parser.add_argument("--rows", type=bounded_int(1000),
                        help="gmm-stream: rows of the memory-mapped file (default 10,000,000)")
    parser.add_argument("--scratch", help="gmm-stream: folder for the temporary files "
                                          "(default: the system's temporary folder)")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    return parser


def main(argv=None, prog=None):
    from ppl_vae.device import resolve_device

    args = build_parser(prog).parse_args(argv)
    args.device = str(resolve_device(args.device))  # one line, not a traceback, if absent
    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    results = {}
    for name in names:
        print(f"== {name}: {BENCHMARKS[name][1]}")
        results[name] = BENCHMARKS[name][0](args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0



"""Mutation check of ppl_vae/distributed.py by hand: mutmut cannot reach torchrun's processes.

Each mutant below is one replacement in ppl_vae/distributed.py; for each, every distributed
test (the slow torchrun ones included) and tests/test_train.py run with ``-x``, and the file
is restored afterwards (also on Ctrl-C). About a minute per mutant on 2 CPU cores.

    python scripts/mutate_distributed.py        # from the repository root; needs the dev extra
"""

import pathlib
import subprocess
import sys

MUTANTS = [
    ("shard takes rank 0's rows on every rank",
     "indices[rank() :: world_size()]", "indices[0 :: world_size()]"),
    ("shard ignores the world size", "indices[rank() :: world_size()]", "indices[rank() :: 1]"),
    ("all_reduce_sum takes the max",
     "dist.all_reduce(tensor, op=dist.ReduceOp.SUM)",
     "dist.all_reduce(tensor, op=dist.ReduceOp.MAX)"),
    ("all_reduce_sum does nothing", "dist.all_reduce(tensor, op=dist.ReduceOp.SUM)", "pass"),
    ("all_reduce_sum_many takes the max",
     "dist.all_reduce(flat, op=dist.ReduceOp.SUM)", "dist.all_reduce(flat, op=dist.ReduceOp.MAX)"),
    ("all_reduce_sum_many sums in float16", ".to(torch.float64)", ".to(torch.float16)"),
    ("all_reduce_sum_many sums in float32", ".to(torch.float64)", ".to(torch.float32)"),
    ("all_gather stacks the ranks in reverse",
     "return torch.stack(parts)", "return torch.stack(parts[::-1])"),
    ("broadcast_object sends rank 1's object", "src=0", "src=1"),
    ("is_main is rank 1", "return rank() == 0", "return rank() == 1"),
    ("world_size is 2 without a process group",
     "dist.get_world_size() if is_distributed() else 1",
     "dist.get_world_size() if is_distributed() else 2"),
    ("a WORLD_SIZE of 1 joins a process group", '"1")) <= 1', '"1")) < 1'),
]
TESTS = ["tests/test_distributed.py", "tests/test_mixture_distributed.py", "tests/test_train.py"]


def run_one(path, original, old, new):
    """Whether the tests fail with ``old`` replaced by ``new``, and the first failure."""
    path.write_text(original.replace(old, new))
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-m", "",
                                 "-p", "no:cacheprovider", *TESTS],
                                capture_output=True, text=True, timeout=1800)
    finally:
        path.write_text(original)
    failed = [line for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return result.returncode != 0, (failed or [""])[0]


def main():
    path = pathlib.Path("ppl_vae/distributed.py")
    original = path.read_text()
    for _, old, _ in MUTANTS:
        if original.count(old) != 1:
            sys.exit(f"error: {old!r} is not once in {path}; update MUTANTS to the current code")
    survived = 0
    for what, old, new in MUTANTS:
        killed, first = run_one(path, original, old, new)
        survived += not killed
        print(f"{'killed  ' if killed else 'SURVIVED'} {what}: {first}", flush=True)
    print(f"{len(MUTANTS)} mutants, {len(MUTANTS) - survived} killed, {survived} survived")


if __name__ == "__main__":
    main()

"""The benchmark registry and the timing helpers every benchmark shares."""

import resource
import statistics
import time

BENCHMARKS = {}


def benchmark(name, help):
    """Register ``function(args) -> dict`` as the subcommand ``name``."""

    def register(function):
        BENCHMARKS[name] = (function, help)
        return function

    return register



def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _interleaved(loops, repeats, work):
    """Run each loop once per round, ``repeats + 1`` rounds (the first a warm-up); returns
    per-loop lists of ``work / seconds``. Interleaving puts every loop under the same load."""
    rates = {label: [] for label in loops}
    for repeat in range(repeats + 1):
        for label, loop in loops.items():
            started = time.perf_counter()
            loop()
            if repeat:
                rates[label].append(work / (time.perf_counter() - started))
    return rates


def _paired_ratio(rates, label, reference):
    """The median, first and third quartiles over rounds of the rate of ``label`` over the
    reference's in the same round: a slow spell of the machine cancels in each pair."""
    pairs = [a / b for a, b in zip(rates[label], rates[reference], strict=True)]
    if len(pairs) < 2:
        return pairs[0], pairs[0], pairs[0]
    q1, median, q3 = statistics.quantiles(pairs, n=4)
    return median, q1, q3

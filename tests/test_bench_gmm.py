"""The mixture benchmarks (ppl_vae.commands.bench.gmm) in quick mode: their numbers
against scikit-learn and the batch methods, and their memory probes."""

import sys

import numpy as np
import pytest

from ppl_vae.commands import bench
from ppl_vae.commands.bench import gmm


def quick(name, *extra):
    # The benchmarks take a resolved device, as main hands them; "auto" is the flag's default.
    return bench.build_parser().parse_args([name, "--quick", "--device", "cpu", *extra])


def test_bench_gmm_quick_agrees_with_sklearn_and_streaming_reaches_the_target(capsys):
    rows = bench.bench_gmm(quick("gmm"))
    peers = {key: row for key, row in rows.items() if not key.startswith("stream")}
    assert {key.split(" ", 1)[1] for key in peers} >= {"scikit-learn", "ours (float32)",
                                                       "ours (float64)"}
    for row in peers.values():
        assert row["log_likelihood"] == pytest.approx(row["sklearn_log_likelihood"], rel=1e-6)
    em = rows["stream batch EM (log-lik/example)"]["objective"]
    cavi = rows["stream CAVI (ELBO, total nats)"]["objective"]
    assert rows["stream stepwise EM"]["objective"] >= em - 1e-3 * abs(em)
    assert rows["stream SVI (natural gradient)"]["objective"] >= cavi - 1e-3 * abs(cavi)
    assert "CPU ratio" in capsys.readouterr().out


def test_missing_pomegranate_is_reported_not_raised(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pomegranate", None)  # import now raises ImportError
    assert gmm.pomegranate_version() is None
    args = quick("gmm")
    fits = gmm._peer_fits(args, "full", 3, {"max_iter": 1})
    assert "pomegranate" not in fits and "scikit-learn" in fits


def test_peak_rss_anon_sees_an_allocation_and_not_a_mapping(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4_000_000, 4), dtype=np.float32))  # 64 MB
    with gmm.PeakRssAnon(0.001) as mapped:
        float(np.load(tmp_path / "x.npy", mmap_mode="r").sum(dtype=np.float64))
    with gmm.PeakRssAnon(0.001) as allocated:
        block = np.ones(8_000_000)  # 64 MB, touched
        block.sum()
    assert allocated.added > 48 * 2**20
    assert mapped.added < 16 * 2**20


@pytest.mark.slow
def test_bench_gmm_stream_quick_runs_out_of_core_and_cleans_up(tmp_path, capsys):
    result = bench.bench_gmm_stream(quick("gmm-stream", "--scratch", str(tmp_path)))
    baseline = result["baseline_rss_anon_bytes"]
    for phase in ("fit", "predict_proba", "score_samples", "score"):
        assert result[phase]["peak_rss_anon_bytes"] - baseline < 128 * 2**20, phase
    assert result["check"]["proba_rows_sum_to_one"]
    assert np.isfinite(result["mean_log_likelihood"])
    assert list(tmp_path.iterdir()) == []
    assert "peak RssAnon" in capsys.readouterr().out

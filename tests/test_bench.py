"""The benchmark runner (``python -m fastembed.bench``), run in-process on tiny sizes: the structure of its
results, and that a peer whose answer differs from fastembed's is reported as wrong and never timed."""
import importlib.util
import json

import numpy as np
import pytest

from fastembed import bench
from fastembed.bench import registry, report
from fastembed.bench.__main__ import main

# In-process, numpy peers only, one short round: a few seconds.
TINY = dict(rounds=1, isolate=False, progress=False, libraries=["numpy"], copy_mib=8, copy_repeats=1,
            target_batch_s=0.001, warmup=1, min_samples=2)
OPS = ("gather", "sparse_grad", "scatter_add")


def test_results_structure():
    results = bench.run(workloads=["tiny", "imdb"], threads=[1, 2], **TINY)
    json.dumps(results)  # a JSON document as it stands
    assert results["schema"] == 1
    assert results["config"]["threads"] == [1, 2] and "bytes_formula" in results["config"]
    assert set(results["copy_bandwidth"]) == {"1", "2"}
    assert all(c["gbps"] > 0 and c["n_samples"] == 2 for c in results["copy_bandwidth"].values())
    assert results["workloads"]["imdb"]["ids_shape"] == [64, 500]
    assert results["workloads"]["tiny"]["bytes"] == 2 * 64_000 * 3 * 4 + 64_000 * 8
    cells = results["results"]
    assert sorted((c["op"], c["workload"], c["threads"]) for c in cells) == sorted(
        (op, wl, t) for op in OPS for wl in ("tiny", "imdb") for t in (1, 2))
    for cell in cells:
        fe = cell["impls"][0]
        assert fe["package"] == "fastembed" and fe["status"] == "ok"
        assert 0 < fe["min_ms"] <= fe["q1_ms"] <= fe["median_ms"] <= fe["q3_ms"] <= fe["max_ms"]
        assert cell["fastembed_ms"] == fe["median_ms"]
        assert cell["fastembed_gbps"] == pytest.approx(cell["bytes"] / (fe["median_ms"] * 1e-3) / 1e9)
        copy = results["copy_bandwidth"][str(cell["threads"])]
        assert cell["copy_fraction"] == pytest.approx(cell["fastembed_gbps"] / copy["gbps"])
        timed = [i for i in cell["impls"][1:] if i["status"] == "ok"]
        assert timed and {i["package"] for i in timed} == {"numpy"}
        for impl in timed:
            assert impl["speedup"] == pytest.approx(impl["median_ms"] / fe["median_ms"])
            assert impl["n_samples"] >= 2
        fastest = min(timed, key=lambda i: i["median_ms"])
        assert cell["fastest_peer"] == fastest["name"]
        assert cell["speedup_vs_fastest_peer"] == fastest["speedup"]
        others = [i for i in cell["impls"][1:] if i["package"] != "numpy"]
        assert all(i["status"] == "excluded" for i in others)
    text = report.markdown(results)
    for op in OPS:
        assert f"(`{op}`)" in text
    assert "| imdb | 2 |" in text


def _off_by_one_gather(wl, n):
    return bench.Case(lambda: np.take(wl.table, (wl.ids + 1) % wl.rows, axis=0), result=bench.Dense)


def _buffered_scatter(wl, n):
    """``dense[ids] += grad``: numpy's buffered fancy indexing keeps one contribution per duplicate id."""
    dense = np.zeros_like(wl.table)

    def call():
        dense[wl.flat_ids] += wl.grad2d

    return bench.Case(call, result=lambda _: bench.Dense(dense))


def _last_occurrence_sparse(wl, n):
    """Unique rows right, values wrong: the gradient of each row's last occurrence instead of the sum."""
    def call():
        rows = np.unique(wl.flat_ids)
        values = np.zeros((rows.shape[0], wl.dim), dtype=wl.grad_out.dtype)
        values[np.searchsorted(rows, wl.flat_ids)] = wl.grad2d
        return bench.Sparse(rows, values)

    return bench.Case(call)


def _with_peers(name, bad):
    op = registry.get_op(name)
    return bench.Op(f"{name}_bad", f"{op.title} with a wrong peer", op.fastembed,
                    (op.peers[0], bench.Impl("wrong peer", "numpy", bad)), op.check)


def test_wrong_peer_is_reported_and_not_timed():
    ops = [_with_peers("gather", _off_by_one_gather), _with_peers("scatter_add", _buffered_scatter),
           _with_peers("sparse_grad", _last_occurrence_sparse), _with_peers("sparse_grad", _buffered_scatter)]
    ops[3] = bench.Op("sparse_grad_dense_bad", ops[3].title, ops[3].fastembed, ops[3].peers, ops[3].check)
    results = bench.run(ops=ops, workloads=["tiny"], threads=[1], **TINY)
    assert len(results["results"]) == 4
    for cell in results["results"]:
        fe, good, bad = cell["impls"]
        assert fe["status"] == "ok" and good["status"] == "ok", cell["op"]
        assert bad["status"] == "wrong", cell["op"]
        assert "not timed" in bad["message"] and "median_ms" not in bad and "speedup" not in bad
        assert cell["fastest_peer"] == good["name"]
    assert sum("wrong result" in note for note in results["notes"]) == 4
    assert "wrong" in report.markdown(results)


def test_checks_catch_subtle_errors():
    wl = bench.build_workload("imdb")
    sparse, scatter = registry.get_op("sparse_grad"), registry.get_op("scatter_add")
    expected = sparse.fastembed.build(wl, 1).run_once()
    dense = expected.values.copy()
    assert sparse.check(expected, bench.Sparse(expected.rows, dense), wl) is None
    dense[3, 1] += 1e-3  # a small error on one element
    assert "differs" in sparse.check(expected, bench.Sparse(expected.rows, dense), wl)
    full = np.zeros_like(wl.table)
    full[expected.rows] = expected.values
    assert sparse.check(expected, bench.Dense(full), wl) is None
    untouched = np.setdiff1d(np.arange(wl.rows), expected.rows)[0]
    full[untouched, 0] = 1.0  # a gradient where no id looks
    assert "no id" in sparse.check(expected, bench.Dense(full), wl)
    before = wl.table.copy()
    after = before.copy()
    after[expected.rows] -= 0.5 * expected.values
    assert sparse.check(expected, bench.Updated(before, after, 0.5), wl) is None
    after[untouched] += 1.0
    assert "changed" in sparse.check(expected, bench.Updated(before, after, 0.5), wl)
    got = scatter.fastembed.build(wl, 2).run_once()
    assert scatter.check(scatter.fastembed.build(wl, 1).run_once(), got, wl) is None


def test_workloads_are_deterministic_and_zipf_spreads():
    a, b = bench.build_workload("zipf", scale=1 / 64), bench.build_workload("zipf", scale=1 / 64)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.table, b.table)
    assert a.ids.min() >= 0 and a.ids.max() < a.rows
    counts = np.bincount(a.flat_ids, minlength=a.rows)
    hottest = np.argsort(counts)[::-1][:8]
    assert counts.max() < 0.2 * a.n_ids  # skewed, not piled onto one row
    assert len(np.unique(a.flat_ids)) > 0.05 * a.rows
    assert np.ptp(hottest) > a.rows // 4  # hot rows scattered over the table by the permutation


def test_command_line(tmp_path, capsys):
    json_path = tmp_path / "out" / "results.json"
    plot = tmp_path / "chart.png" if importlib.util.find_spec("matplotlib") else ""
    code = main(["--quick", "--in-process", "--no-progress", "--peers", "numpy", "--workloads", "tiny",
                 "--threads", "1", "--rounds", "1", "--copy-mib", "8", "--ops", "gather,scatter_add",
                 "--json", str(json_path), "--plot", str(plot)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| tiny | 1 |" in out and "np.take clip" in out
    results = json.loads(json_path.read_text())
    assert [c["op"] for c in results["results"]] == ["gather", "scatter_add"]
    if plot:
        assert plot.stat().st_size > 10_000
    assert main(["--workloads", "nope", "--in-process"]) == 2
    assert "unknown workload" in capsys.readouterr().err


BAG_OPS = ("bag_forward", "bag_forward_int8", "bag_backward", "fused_step")


def test_bag_ops_run_on_bag_workloads_with_checked_peers():
    pytest.importorskip("torch")
    results = bench.run(ops=list(BAG_OPS) + ["gather"], workloads=["bags1_39", "tiny"], threads=[1], scale=1 / 1024,
                        **dict(TINY, libraries=["numpy", "torch"]))
    cells = {(c["op"], c["workload"]) for c in results["results"]}
    # Bag ops run on bag workloads only, lookup ops on the others (every bag op's peers pass their checks on
    # the full-size workloads too: that is what a runner run checks before timing).
    assert cells == {(op, "bags1_39") for op in BAG_OPS} | {("gather", "tiny")}
    assert results["workloads"]["bags1_39"]["n_bags"] == 16
    for cell in results["results"]:
        statuses = {i["name"]: i["status"] for i in cell["impls"]}
        assert "wrong" not in statuses.values() and "error" not in statuses.values(), cell
        if cell["op"] != "gather":
            assert any(i["package"] == "torch" and i["status"] == "ok" for i in cell["impls"]), cell["op"]


def test_bag_checks_catch_wrong_pooling_and_wrong_updates():
    pytest.importorskip("torch")
    from fastembed.bench.ops import bags as bag_ops

    wl = bench.build_workload("bags20", scale=1 / 1024)
    forward = registry.get_op("bag_forward")
    expected = forward.fastembed.build(wl, 1).run_once()
    mean = registry.get_op("bag_forward_mean").fastembed.build(wl, 1).run_once()
    assert forward.check(expected, expected, wl) is None
    assert "differs" in forward.check(expected, mean, wl)
    backward = registry.get_op("bag_backward")
    grad = backward.fastembed.build(wl, 1).run_once()
    assert backward.check(grad, grad, wl) is None
    once_per_row = bench.Sparse(grad.rows, grad.values / 2)
    assert "differs" in backward.check(grad, once_per_row, wl)
    step = registry.get_op("fused_step")
    stepped = step.fastembed.build(wl, 1).run_once()
    assert step.check(stepped, stepped, wl) is None
    # Row-wise Adagrad's table checked as the element-wise rule, and SGD's as row-wise Adagrad: both caught.
    assert "differs" in step.check(stepped, bag_ops.Stepped("adagrad", stepped.after), wl)
    sgd = registry.get_op("fused_step_sgd").fastembed.build(wl, 1).run_once()
    assert "differs" in step.check(stepped, bag_ops.Stepped("rowwise_adagrad", sgd.after), wl)
    touched = stepped.after.copy()
    touched[np.setdiff1d(np.arange(wl.rows), grad.rows)[0]] += 1.0
    assert "no id" in step.check(stepped, bag_ops.Stepped("rowwise_adagrad", touched), wl)


def test_default_ops_and_workloads_leave_out_the_opt_in_ones():
    from fastembed.bench.runner import Config

    default = Config.make().ops
    assert "bag_forward" in default and "fused_step" in default and "fused_step_sgd" not in default
    assert Config.make(ops=["fused_step_sgd"]).ops == ["fused_step_sgd"]
    assert not registry.get_op("fused_step").applies_to("rand") and registry.get_op("gather").applies_to("rand")
    assert "bags1_39" in Config.make().workloads and "bags1_39" not in Config.make(quick=True).workloads
    assert Config.make(quick=True, workloads=["bags1_39"]).workloads == ["bags1_39"]

"""Sharded tables over torch.distributed: 2 and 3 local processes on gloo, checked against one process.

Each world size is spawned once per module (a forkserver that has imported torch forks the ranks); the ranks run
every scenario and write what they saw to files, and the tests compare those with a one-process fastembed table
(or PyTorch) trained on the concatenation of the ranks' batches.
"""
import json
import multiprocessing
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

import fastembed
from fastembed import checkpoint
from fastembed import distributed as fd

try:
    import torch
    import torch.distributed as dist
except ImportError:
    torch = dist = None
# The one-process tests need neither torch nor a process group; the others need both.
HAVE_GLOO = dist is not None and dist.is_available() and dist.is_gloo_available()
needs_gloo = pytest.mark.skipif(not HAVE_GLOO, reason="needs torch.distributed with the gloo backend")

V, D = 23, 5            # 23 rows: divisible by neither 2 nor 3
SEED = 7
STEPS = 4
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}
PEER_TIMEOUT = 2.0      # seconds a rank waits for a silent peer in the dead-peer scenarios
LAUNCH_DEADLINE = 240   # seconds for a whole world's run before its processes are killed

CONFIGS = {}
for _partition in ("mod", "range"):
    for _optimizer, _lr in (("adam", 0.05), ("rowwise_adagrad", 0.1)):
        for _dtype in ("float64", "float32"):
            CONFIGS[f"{_optimizer}-{_partition}-{_dtype}"] = dict(
                kind="lookup", partition=_partition, optimizer=_optimizer, lr=_lr, dtype=_dtype, options={})
CONFIGS.update({
    "sgd-momentum-mod-float64": dict(kind="lookup", partition="mod", optimizer="sgd", lr=0.1, dtype="float64",
                                     options={"momentum": 0.9, "weight_decay": 0.01}),
    "adagrad-range-float32": dict(kind="lookup", partition="range", optimizer="adagrad", lr=0.1, dtype="float32",
                                  options={"initial_accumulator_value": 0.1}),
    "bag-mean-range-adam-float64": dict(kind="bag", mode="mean", partition="range", optimizer="adam", lr=0.05,
                                        dtype="float64", options={"betas": (0.8, 0.99)}),
    "bag-max-mod-rowwise-float32": dict(kind="bag", mode="max", partition="mod", optimizer="rowwise_adagrad",
                                        lr=0.1, dtype="float32", options={}),
    "bag-weighted-sum-mod-sgd-float64": dict(kind="bag", mode="sum", weighted=True, partition="mod",
                                             optimizer="sgd", lr=0.1, dtype="float64", options={}),
})


# --- batches: the same on the ranks and in the parent ----------------------------------------------------
def _owned(partition, world, rank):
    """The rows a rank owns, from the definition of each partition."""
    if partition == "mod":
        return np.arange(rank, V, world)
    return np.array_split(np.arange(V), world)[rank]


def _call(config, rng, ids, offsets=None):
    """One call's arguments: {"ids"} for a lookup; {"ids", "offsets", "per_sample_weights"} for bags."""
    if config["kind"] == "lookup":
        return {"ids": ids}
    weights = rng.uniform(0.5, 2.0, size=ids.shape) if config.get("weighted") else None
    return {"ids": ids, "offsets": offsets, "per_sample_weights": weights}


def _grad_for(config, rng, call):
    shape = call["ids"].shape if config["kind"] == "lookup" else (_n_bags(call), )
    return rng.standard_normal(shape + (D,)).astype(config["dtype"])


def _n_bags(call):
    return call["ids"].shape[0] if call["offsets"] is None else len(call["offsets"])


def _schedule(config, step, world, rank):
    """What ``rank`` does at ``step``: [("forward", call)] and [("backward", call, grad_out)] in order; every
    rank does the same kinds of calls in the same order, with its own data.

    step 0: duplicates within and across ranks, ids 0 and V - 1; step 1: rank 1 has an empty batch; step 2:
    every id belongs to rank 0; step 3: two forward calls, then the backward of the first (not the last
    forward: routes exchanged again) and of the second, on a copy of its ids (the last forward's routes,
    recognised by content) except on rank 1, whose ids no forward call looked up: the ranks must notice
    that they disagree and exchange routes again.
    """
    rng = np.random.default_rng([SEED, step, world, rank])
    bag = config["kind"] == "bag"
    if step == 0:
        ids = rng.choice([0, V - 1, 1, 2, 12, 13], size=12)
        ids[:2] = [0, V - 1]
        call = _call(config, rng, ids, [0, 3, 3, 7]) if bag else _call(config, rng, ids.reshape(2, 6))
    elif step == 1:
        if rank == 1:
            call = _call(config, rng, np.zeros(0, np.int64), []) if bag else _call(config, rng, np.zeros((0, 3), int))
        else:
            call = _call(config, rng, rng.integers(0, V, size=(3, 2)), None) if bag else \
                _call(config, rng, rng.integers(0, V, size=5))
    elif step == 2:
        ids = rng.choice(_owned(config["partition"], world, 0), size=6)
        call = _call(config, rng, ids.reshape(3, 2), None) if bag else _call(config, rng, ids)
    else:
        first = _call(config, rng, rng.integers(0, V, size=8), [0, 2, 5]) if bag else \
            _call(config, rng, rng.integers(0, V, size=(3, 4)))
        second = _call(config, rng, rng.integers(0, V, size=(2, 3)), None) if bag else \
            _call(config, rng, np.concatenate([[V - 1] * 3, rng.integers(0, V, size=2)]))
        again = dict(first, ids=first["ids"].copy())
        other = dict(second, ids=(second["ids"] + 1) % V) if rank == 1 else dict(second, ids=second["ids"].copy())
        return [("forward", first), ("forward", second), ("backward", again, _grad_for(config, rng, again)),
                ("backward", other, _grad_for(config, rng, other))]
    return [("forward", call), ("backward", call, _grad_for(config, rng, call))]


def _make_table(config, **extra):
    common = dict(partition=config["partition"], optimizer=config["optimizer"], lr=config["lr"], seed=SEED,
                  dtype=config["dtype"], optimizer_options=config["options"], n_threads=1, **extra)
    if config["kind"] == "bag":
        return fd.ShardedEmbeddingBag(V, D, mode=config["mode"], **common)
    return fd.ShardedEmbedding(V, D, **common)


def _backward(table, call, grad):
    if isinstance(table, fd.ShardedEmbeddingBag):
        table.backward(call["ids"], call["offsets"], grad, per_sample_weights=call["per_sample_weights"])
    else:
        table.backward(call["ids"], grad)


# --- the ranks ----------------------------------------------------------------------------------------------
def _rank_main(rank, world, directory, source):
    """Every scenario, in order, on one rank; results go to ``directory``, a traceback to error-<rank>.txt."""
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{directory}/rendezvous", rank=rank, world_size=world)
        _run_equality(rank, world, directory)
        _run_mismatch(rank, directory)
        _run_module(rank, world, directory)
        _run_checkpoints(rank, world, directory, source)
        _run_dead_peer(rank, world, directory)
    except BaseException:
        with open(os.path.join(directory, f"error-{rank}.txt"), "w") as handle:
            handle.write(traceback.format_exc())
        os._exit(1)


def _save(directory, name, rank, **arrays):
    np.savez(os.path.join(directory, f"{name}-rank{rank}.npz"), **arrays)


def _train_step(table, config, step, world, rank, record=None):
    """Play the step's schedule; ``record`` (a dict) gets the outputs and this rank's gradient before ``step()``."""
    for k, op in enumerate(_schedule(config, step, world, rank)):
        if op[0] == "forward":
            out = table(**op[1])
            if record is not None:
                record[f"out-{step}-{k}"] = out
        else:
            _backward(table, op[1], op[2])
    if record is not None:
        record[f"grad-rows-{step}"], record[f"grad-values-{step}"] = table.grad.rows, table.grad.values
    table.step()


def _run_equality(rank, world, directory):
    for name, config in CONFIGS.items():
        table = _make_table(config, timeout=60)
        record = {"initial": table.full_weights(), "owned": table.owned_rows()}
        for step in range(STEPS):
            _train_step(table, config, step, world, rank, record)
        record["final"] = table.full_weights()
        _save(directory, name, rank, **record)


def _run_mismatch(rank, directory):
    """Ranks that disagree on the table's shape all raise, naming the difference."""
    try:
        fd.ShardedEmbedding(V, D + rank, timeout=60)
        message = ""
    except ValueError as error:
        message = str(error)
    _save(directory, "mismatch", rank, message=np.array(message))


MODULE_CASES = {"bag-sum-sgd": dict(kind="bag", mode="sum", partition="range", optimizer="sgd", lr=0.1),
                "lookup-adam": dict(kind="lookup", partition="mod", optimizer="adam", lr=0.05)}


def _module_batch(case, step, world, rank):
    rng = np.random.default_rng([SEED, 100 + step, world, rank])
    ids = rng.integers(0, V, size=(4, 3))
    ids[0, 0] = V - 1
    if rank == 1 and step == 1:
        ids = ids[:0]
    return ids, rng.standard_normal(ids.shape[:1] if case["kind"] == "bag" else ids.shape)


def _module_linear():
    linear = torch.nn.Linear(D, 1, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(np.random.default_rng(SEED).standard_normal((1, D))))
        linear.bias.fill_(0.25)
    return linear


def _module_loss(linear, out, target):
    return ((linear(out).squeeze(-1) - torch.from_numpy(target)) ** 2).sum()


def _run_module(rank, world, directory):
    for name, case in MODULE_CASES.items():
        config = dict(case, dtype="float64", options={})
        module = fd.ShardedEmbeddingModule(_make_table(config, timeout=60))
        linear = _module_linear()
        record = {}
        for step in range(3):
            ids, target = _module_batch(case, step, world, rank)
            out = module(torch.from_numpy(ids))
            loss = _module_loss(linear, out, target)
            linear.zero_grad()
            loss.backward()
            record[f"loss-{step}"], record[f"linear-grad-{step}"] = loss.item(), linear.weight.grad.numpy().copy()
            module.step()
        record["final"] = module.table.full_weights()
        _save(directory, f"module-{name}", rank, **record)


CHECKPOINT_CASES = {"adam-mod-float64": ("range", CONFIGS["adam-mod-float64"]),
                    "bag-mean-range-adam-float64": ("mod", CONFIGS["bag-mean-range-adam-float64"]),
                    "rowwise_adagrad-range-float32": ("mod", CONFIGS["rowwise_adagrad-range-float32"])}


def _run_checkpoints(rank, world, directory, source):
    """Two ranks train two steps and save (twice, replacing the first save); three ranks load that into the
    other partition, train one more step and save."""
    for name, (other_partition, config) in CHECKPOINT_CASES.items():
        target = os.path.join(directory, f"checkpoint-{name}")
        if source is None:
            table = _make_table(config, timeout=60)
            for step in range(2):
                _train_step(table, config, step, world, rank)
                table.save(target)
            record = {"saved": table.full_weights()}
        else:
            cls = fd.ShardedEmbeddingBag if config["kind"] == "bag" else fd.ShardedEmbedding
            table = cls.load(os.path.join(source, f"checkpoint-{name}"), partition=other_partition, timeout=60,
                             n_threads=1)
            record = {"loaded": table.full_weights(), "partition": np.array(table.partition),
                      "steps": table.steps}
            _train_step(table, config, 2, world, rank)
            table.save(target)
            record["saved"] = table.full_weights()
        _save(directory, f"checkpoint-{name}", rank, **record)


def _wait_for(paths, seconds=60):
    deadline = time.monotonic() + seconds
    while not all(os.path.exists(path) for path in paths):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {seconds} s for {paths}")
        time.sleep(0.05)


def _run_dead_peer(rank, world, directory):
    """The last rank leaves: with two ranks it stays alive but stops calling (the others time out); with three
    it exits at once (the others see the connection close)."""
    config = CONFIGS["adam-mod-float64"]
    table = _make_table(config, timeout=60)
    _train_step(table, config, 0, world, rank)
    table.timeout = PEER_TIMEOUT
    flags = os.path.join(directory, "dead-peer-{}.{}")
    if rank == world - 1:
        # Leave only once the others have finished the step, so that no data of it is still in flight.
        _wait_for([flags.format("ready", r) for r in range(world - 1)])
        if world == 3:
            os._exit(0)
        _wait_for([flags.format("done", r) for r in range(world - 1)])
        return
    Path(flags.format("ready", rank)).touch()
    ids = np.arange(5)
    began = time.monotonic()
    try:
        table(ids)
        first = None
    except fd.PeerError as error:
        first = error
    elapsed = time.monotonic() - began
    began = time.monotonic()
    try:
        table.backward(ids, np.zeros((5, D)))
        second = None
    except fd.PeerError as error:
        second = error
    record = {"elapsed": elapsed, "again": time.monotonic() - began,
              "message": np.array(str(first)), "again_message": np.array(str(second)),
              "operation": np.array(getattr(first, "operation", "")), "step": getattr(first, "step", -1)}
    _save(directory, "dead-peer", rank, **record)
    Path(flags.format("done", rank)).touch()


# --- launching ----------------------------------------------------------------------------------------------
def _launch(world, directory, source=None):
    """Run ``_rank_main`` on ``world`` processes; every process is reaped, killed if it overruns."""
    if not HAVE_GLOO:
        pytest.skip("needs torch.distributed with the gloo backend")
    context = multiprocessing.get_context("forkserver")
    # The forkserver imports torch once; every rank is forked from it (no second import, no inherited threads).
    context.set_forkserver_preload(["torch", "torch.distributed", "fastembed.distributed"])
    processes = [context.Process(target=_rank_main, args=(rank, world, str(directory), source), daemon=True)
                 for rank in range(world)]
    try:
        for process in processes:
            process.start()
        deadline = time.monotonic() + LAUNCH_DEADLINE
        while time.monotonic() < deadline and any(p.is_alive() for p in processes):
            if any(p.exitcode not in (None, 0) for p in processes):
                break  # one rank failed: the others would only wait for it
            time.sleep(0.05)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join()
    errors = [path.read_text() for path in sorted(Path(directory).glob("error-*"))]
    codes = [p.exitcode for p in processes]
    if errors or any(codes):
        pytest.fail(f"world of {world}: exit codes {codes}\n" + "\n".join(errors))
    return str(directory)


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    return _launch(2, tmp_path_factory.mktemp("world2"))


@pytest.fixture(scope="module")
def world3(tmp_path_factory, world2):
    return _launch(3, tmp_path_factory.mktemp("world3"), source=world2)


@pytest.fixture(params=[2, 3], ids=["2-ranks", "3-ranks"])
def run(request):
    """(directory, world size) of one launched world."""
    return request.getfixturevalue(f"world{request.param}"), request.param


def _manifest(directory):
    return json.loads((Path(directory) / fd.MANIFEST).read_text())


def _load(directory, name, rank):
    with np.load(os.path.join(directory, f"{name}-rank{rank}.npz")) as data:
        return {key: data[key] for key in data.files}


# --- the one-process reference ------------------------------------------------------------------------------
def _reference_layer(config):
    initial = fd.initial_rows(V, D, seed=SEED, dtype=config["dtype"])
    if config["kind"] == "bag":
        layer = fastembed.EmbeddingBag(V, D, mode=config["mode"], weights=initial, dtype=config["dtype"])
    else:
        layer = fastembed.Embedding(V, D, weights=initial, dtype=config["dtype"])
    return layer, fd.OPTIMIZERS[config["optimizer"]](layer, lr=config["lr"], **config["options"])


def _reference_step(layer, opt, config, step, world):
    """One process's step on the ranks' calls; returns the outputs {(k, rank): out} and the table's gradient."""
    outputs = {}
    for rank in range(world):
        for k, op in enumerate(_schedule(config, step, world, rank)):
            if op[0] == "forward":
                outputs[k, rank] = layer(**op[1])
    for rank in range(world):
        for op in _schedule(config, step, world, rank):
            if op[0] == "backward":
                call = op[1]
                if config["kind"] == "bag":
                    layer.backward(call["ids"], call["offsets"], op[2], per_sample_weights=call["per_sample_weights"])
                else:
                    layer.backward(call["ids"], op[2])
    grad = layer.grad
    opt.step()
    return outputs, grad


def _copied_state(opt):
    return {key: np.array(value, copy=True) for key, value in opt.state_dict().items()}


def _close(actual, expected, dtype, what):
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol, err_msg=what)


# --- tests ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_sharded_training_equals_one_process(run, name):
    """Outputs, owner-side gradients and weights after four steps equal a one-process table's."""
    directory, world = run
    config = CONFIGS[name]
    results = [_load(directory, name, rank) for rank in range(world)]
    layer, opt = _reference_layer(config)
    for rank, result in enumerate(results):
        np.testing.assert_array_equal(result["owned"], _owned(config["partition"], world, rank))
        np.testing.assert_array_equal(result["initial"], layer.embeddings)
    for step in range(STEPS):
        outputs, grad = _reference_step(layer, opt, config, step, world)
        for (k, rank), expected in outputs.items():
            _close(results[rank][f"out-{step}-{k}"], expected, config["dtype"], f"output of call {k}, step {step}")
        for rank, result in enumerate(results):
            mine = np.isin(grad.rows, _owned(config["partition"], world, rank))
            np.testing.assert_array_equal(result[f"grad-rows-{step}"], grad.rows[mine])
            _close(result[f"grad-values-{step}"], grad.values[mine], config["dtype"], f"rank {rank}'s gradient")
    assert np.any(layer.embeddings != results[0]["initial"])
    for result in results:
        _close(result["final"], layer.embeddings, config["dtype"], "weights after training")


def test_initial_rows_are_splitmix64_per_entry():
    """Entry (r, c) is SplitMix64's output number r * D + c (checked against a plain-Python SplitMix64)."""
    mask = (1 << 64) - 1

    def splitmix(seed, n):
        state = seed
        for _ in range(n + 1):
            state = (state + 0x9E3779B97F4A7C15) & mask
            z = state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    rows = np.array([0, 3, 22])
    table = fd.initial_rows(V, D, rows=rows, init=fastembed.initializers.RandomUniform(-1.0, 1.0), seed=SEED,
                            dtype="float64")
    for i, row in enumerate(rows):
        for column in range(D):
            unit = (splitmix(SEED, row * D + column) >> 11) * 2.0 ** -53
            assert table[i, column] == -1.0 + 2.0 * unit
    # Any subset of rows, in any order, gets the same values as the whole table.
    whole = fd.initial_rows(V, D, seed=SEED, dtype="float64")
    np.testing.assert_array_equal(fd.initial_rows(V, D, rows=[22, 0, 5], seed=SEED, dtype="float64"), whole[[22, 0, 5]])


def test_initial_rows_have_the_initializers_distributions():
    uniform = fd.initial_rows(4000, 50, seed=1, dtype="float64")
    assert -0.05 <= uniform.min() and uniform.max() < 0.05
    assert abs(uniform.mean()) < 1e-3 and abs(uniform.std() - 0.1 / np.sqrt(12)) < 1e-3
    normal = fd.initial_rows(4000, 50, init=fastembed.initializers.RandomNormal(1.0, 2.0), seed=1, dtype="float64")
    assert abs(normal.mean() - 1.0) < 0.02 and abs(normal.std() - 2.0) < 0.02
    assert abs(np.mean(np.abs(normal - 1.0) < 2.0) - 0.6827) < 0.01
    limit = np.sqrt(6.0 / (4000 + 50))
    glorot = fd.initial_rows(4000, 50, init="glorot_uniform", dtype="float32")
    assert glorot.dtype == np.float32 and -limit <= glorot.min() and glorot.max() <= limit
    assert not np.array_equal(fd.initial_rows(V, D, seed=1), fd.initial_rows(V, D, seed=2))
    np.testing.assert_array_equal(fd.initial_rows(V, D, init="ones"), np.ones((V, D), np.float32))
    matrix = np.arange(V * D, dtype=np.float64).reshape(V, D)
    np.testing.assert_array_equal(fd.initial_rows(V, D, rows=[4, 1], init=matrix, dtype="float64"), matrix[[4, 1]])
    np.testing.assert_array_equal(fd.initial_rows(V, D, rows=[4, 1], init=lambda rows: matrix[rows] * 2),
                                  (matrix[[4, 1]] * 2).astype(np.float32))


def test_ranks_that_disagree_on_the_table_all_raise(world2):
    for rank in range(2):
        message = str(_load(world2, "mismatch", rank)["message"])
        assert "rank 1 built this table with a different dim (6) than rank 0 (5)" in message or \
            "rank 0 built this table with a different dim (5) than rank 1 (6)" in message, message


@pytest.mark.parametrize("name", list(MODULE_CASES))
def test_module_trains_like_torch(run, name):
    """Through autograd: the dense layer's gradient on each rank and the table after three steps equal
    PyTorch's sparse embedding and optimizer on the ranks' batches in one process."""
    directory, world = run
    case = MODULE_CASES[name]
    results = [_load(directory, f"module-{name}", rank) for rank in range(world)]
    initial = torch.from_numpy(fd.initial_rows(V, D, seed=SEED, dtype="float64"))
    if case["kind"] == "bag":
        embedding = torch.nn.EmbeddingBag.from_pretrained(initial, freeze=False, mode="sum", sparse=True)
        opt = torch.optim.SGD(embedding.parameters(), lr=case["lr"])
    else:
        embedding = torch.nn.Embedding.from_pretrained(initial, freeze=False, sparse=True)
        opt = torch.optim.SparseAdam(embedding.parameters(), lr=case["lr"])
    linear = _module_linear()
    for step in range(3):
        opt.zero_grad()
        for rank in range(world):
            ids, target = _module_batch(case, step, world, rank)
            loss = _module_loss(linear, embedding(torch.from_numpy(ids)), target)
            linear.zero_grad()
            loss.backward()
            np.testing.assert_allclose(results[rank][f"loss-{step}"], loss.item(), rtol=1e-12)
            np.testing.assert_allclose(results[rank][f"linear-grad-{step}"], linear.weight.grad.numpy(), rtol=1e-12,
                                       atol=1e-12)
        opt.step()
    for result in results:
        np.testing.assert_allclose(result["final"], embedding.weight.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(CHECKPOINT_CASES))
def test_checkpoints_reshard_across_world_sizes(world2, world3, name):
    """2 ranks save; 3 ranks load into the other partition and go on; one process loads both checkpoints. Rows,
    optimizer state and step counts all match a one-process run of the same three steps."""
    other_partition, config = CHECKPOINT_CASES[name]
    layer, opt = _reference_layer(config)
    for step in range(2):
        _reference_step(layer, opt, config, step, 2)
    saved_by_two = _load(world2, f"checkpoint-{name}", 0)["saved"]
    _close(saved_by_two, layer.embeddings, config["dtype"], "weights saved by two ranks")
    expected = [(world2, saved_by_two, _copied_state(opt))]
    for rank in range(3):
        result = _load(world3, f"checkpoint-{name}", rank)
        np.testing.assert_array_equal(result["loaded"], saved_by_two)
        assert str(result["partition"]) == other_partition and int(result["steps"]) == 2
    _reference_step(layer, opt, config, 2, 3)
    saved_by_three = _load(world3, f"checkpoint-{name}", 0)["saved"]
    _close(saved_by_three, layer.embeddings, config["dtype"], "weights after loading and one more step")
    expected.append((world3, saved_by_three, _copied_state(opt)))

    cls = fd.ShardedEmbeddingBag if config["kind"] == "bag" else fd.ShardedEmbedding
    for directory, weights, expected_state in expected:
        loaded = cls.load(os.path.join(directory, f"checkpoint-{name}"))
        assert loaded.world_size == 1
        assert loaded.partition == (other_partition if directory == world3 else config["partition"])
        np.testing.assert_array_equal(loaded.full_weights(), weights)
        state = loaded.optimizer.state_dict()
        assert sorted(state) == sorted(expected_state) and str(state.pop("optimizer")) == type(opt).__name__
        for key, value in state.items():
            _close(np.asarray(value, dtype=float), np.asarray(expected_state[key], dtype=float), config["dtype"], key)
    # The second save replaced the first: one manifest and the two shards it names, nothing else.
    folder = os.path.join(world2, f"checkpoint-{name}")
    manifest = _manifest(folder)
    assert sorted(os.listdir(folder)) == sorted(manifest["shards"] + [fd.MANIFEST])


def test_damaged_checkpoints_are_refused(world2, tmp_path):
    source = os.path.join(world2, "checkpoint-adam-mod-float64")
    manifest = _manifest(source)
    with pytest.raises(checkpoint.CheckpointError, match="holds a ShardedEmbedding, not a ShardedEmbeddingBag"):
        fd.ShardedEmbeddingBag.load(source)
    with pytest.raises(checkpoint.CheckpointError, match="no manifest"):
        fd.ShardedEmbedding.load(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in manifest["shards"]:
        (broken / name).write_bytes((Path(source) / name).read_bytes())
    (broken / fd.MANIFEST).write_text(json.dumps(dict(manifest, token=manifest["token"] + 1)))
    with pytest.raises(checkpoint.CheckpointError, match="is not shard 0 of the checkpoint"):
        fd.ShardedEmbedding.load(broken)
    shard = broken / manifest["shards"][1]
    shard.write_bytes(shard.read_bytes()[:-100])
    (broken / fd.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupted"):
        fd.ShardedEmbedding.load(broken)


def test_a_silent_peer_times_out(world2):
    """Rank 1 stays alive but stops calling: rank 0 raises PeerError after the timeout, not later, and at once
    on every later call."""
    result = _load(world2, "dead-peer", 0)
    assert PEER_TIMEOUT - 0.1 <= float(result["elapsed"]) < PEER_TIMEOUT + 3.0
    message = str(result["message"])
    assert message.startswith("rank 0 of 2: forward: exchange id counts failed at step 1: a peer exited, "
                              "crashed or did not take part within 2 s"), message
    assert str(result["operation"]) == "forward: exchange id counts" and int(result["step"]) == 1
    assert float(result["again"]) < 0.5
    assert "backward: match forward calls refused at step 1" in str(result["again_message"])


def test_a_peer_that_exits_fails_the_others_fast(world3):
    for rank in range(2):
        result = _load(world3, "dead-peer", rank)
        assert float(result["elapsed"]) < PEER_TIMEOUT + 3.0
        assert str(result["message"]).startswith(f"rank {rank} of 3: forward: exchange id counts failed at step 1")


def test_one_process_table_and_bad_arguments():
    """Without a process group a table is a world of one; bad arguments raise before any collective."""
    table = fd.ShardedEmbedding(V, D, optimizer="sgd", lr=1.0, dtype="float64", seed=SEED, n_threads=1)
    assert (table.rank, table.world_size) == (0, 1)
    np.testing.assert_array_equal(table.full_weights(), fd.initial_rows(V, D, seed=SEED, dtype="float64"))
    with pytest.raises(IndexError, match=r"ids\[1, 0\] = 23 is out of range \[0, 23\)"):
        table([[0, 1], [V, 2]])
    with pytest.raises(ValueError, match=r"grad_out must have shape ids.shape \+ \(D,\) = \(2, 5\)"):
        table.backward([0, 1], np.zeros((2, 4)))
    assert table.grad is None
    table.step()
    np.testing.assert_array_equal(table.full_weights(), fd.initial_rows(V, D, seed=SEED, dtype="float64"))
    with pytest.raises(ValueError, match="partition must be one of 'mod', 'range'; got 'hash'"):
        fd.ShardedEmbedding(V, D, partition="hash")
    with pytest.raises(ValueError, match="optimizer must be one of 'sgd', 'adagrad', 'rowwise_adagrad', 'adam'"):
        fd.ShardedEmbedding(V, D, optimizer="lamb")
    with pytest.raises(ValueError, match="seed must be an int"):
        fd.ShardedEmbedding(V, D, seed=None)
    with pytest.raises(ValueError, match="cannot be drawn row by row"):
        fd.ShardedEmbedding(V, D, init="truncated_normal")
    with pytest.raises(ValueError, match="timeout must be positive"):
        fd.ShardedEmbedding(V, D, timeout=0)
    with pytest.raises(TypeError, match="timeout must be seconds"):
        table.timeout = "5"
    table.timeout = 1.5
    assert table.timeout.total_seconds() == 1.5
    with pytest.raises(ValueError, match=r"init\(rows\) must return \(len\(rows\), dim\)"):
        fd.ShardedEmbedding(V, D, init=lambda rows: np.zeros((len(rows), D + 1)))


@needs_gloo
def test_module_refuses_bag_arguments_for_a_lookup():
    table = fd.ShardedEmbedding(V, D, n_threads=1)
    with pytest.raises(TypeError, match="offsets and per_sample_weights apply to a ShardedEmbeddingBag only"):
        fd.ShardedEmbeddingModule(table)(torch.tensor([1]), torch.tensor([0]))
    bags = fd.ShardedEmbeddingModule(fd.ShardedEmbeddingBag(V, D, n_threads=1))
    with pytest.raises(ValueError, match="per_sample_weights get no gradient"):
        bags(torch.tensor([[1, 2]]), None, torch.ones(1, 2, requires_grad=True))


def test_importing_fastembed_does_not_import_torch():
    code = "import sys, fastembed, fastembed.distributed; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=os.getcwd()))


def test_one_process_bags_with_last_offsets_match_embedding_bag():
    rng = np.random.default_rng(SEED)
    table = fd.ShardedEmbeddingBag(V, D, mode="sqrtn", include_last_offset=True, optimizer="adagrad", lr=0.1,
                                   dtype="float64", seed=SEED, n_threads=1)
    layer = fastembed.EmbeddingBag(V, D, mode="sqrtn", include_last_offset=True, dtype="float64",
                                   weights=fd.initial_rows(V, D, seed=SEED, dtype="float64"))
    opt = fastembed.optim.Adagrad(layer, lr=0.1)
    for _ in range(3):
        ids, offsets = rng.integers(0, V, size=9), np.array([0, 4, 4, 9])
        weights, grad = rng.uniform(0.5, 2.0, size=9), rng.standard_normal((3, D))
        np.testing.assert_allclose(table(ids, offsets, weights), layer(ids, offsets, weights), rtol=1e-12, atol=1e-12)
        table.backward(ids, offsets, grad, per_sample_weights=weights)
        layer.backward(ids, offsets, grad, per_sample_weights=weights)
        table.step()
        opt.step()
    np.testing.assert_allclose(table.full_weights(), layer.embeddings, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"grad_out must have shape \(number of bags, dim\) = \(3, 5\)"):
        table.backward(ids, offsets, grad[:2])

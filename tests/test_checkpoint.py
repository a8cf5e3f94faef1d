"""Checkpoints: round trips, damaged files raise CheckpointError, and a writer killed mid-save loses nothing."""
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import fastembed
from fastembed.checkpoint import CheckpointError, load_arrays, save_arrays
from fastembed.layers import _table_arrays

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _layer(**kwargs):
    return fastembed.Embedding(50, 6, seed=3, **kwargs)


def test_arrays_and_meta_round_trip(tmp_path):
    arrays = {"table": np.arange(12.0).reshape(3, 4), "steps": np.array(7), "rows": np.arange(5, dtype=np.int32),
              "empty": np.zeros((0, 3), np.float32), "fortran": np.asfortranarray(np.ones((3, 2), np.float32))}
    meta = {"lr": 0.1, "nested": {"names": ["a", "b"]}}
    path = save_arrays(tmp_path / "state.npz", arrays, meta)
    loaded, loaded_meta = load_arrays(path)
    assert loaded_meta == meta and sorted(loaded) == sorted(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
        np.testing.assert_array_equal(loaded[name], array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.npz"]   # no temporary file left


@pytest.mark.parametrize("kwargs", [{}, {"mask_zero": True, "input_length": 4, "name": "words"},
                                    {"dtype": "float64", "trainable": False, "out_of_range": 7},
                                    {"out_of_range": "zero", "padding_idx": -1, "scale_grad_by_freq": True},
                                    {"max_norm": 1.5, "norm_type": 1.0, "max_norm_mode": "output"},
                                    {"max_norm": 1.5, "norm_type": float("inf")},
                                    {"trainable": False, "storage": "float16"},
                                    {"trainable": False, "storage": "bfloat16"},
                                    {"trainable": False, "storage": "int8", "out_of_range": "clip"}])
def test_layer_round_trip_keeps_table_and_config(tmp_path, kwargs):
    layer = _layer(**kwargs)
    if layer.trainable:
        layer.backward(np.array([[1, 2, 3, 4]]), np.ones((1, 4, 6)))
        layer.step(0.5)
    layer.save(tmp_path / "layer.npz")
    again = fastembed.Embedding.load(tmp_path / "layer.npz")
    assert again.get_config() == layer.get_config() and repr(again) == repr(layer)
    assert type(again.embeddings) is type(layer.embeddings)
    # The stored representation itself (codes and scales, bfloat16 bits, ...) comes back bit for bit.
    saved, loaded = _table_arrays(layer.embeddings), _table_arrays(again.embeddings)
    assert {k: (v.dtype, v.tobytes()) for k, v in saved.items()} == \
        {k: (v.dtype, v.tobytes()) for k, v in loaded.items()}
    assert again.grad is None
    ids = np.array([[0, 1, 49, 2]])
    np.testing.assert_array_equal(again(ids), layer(ids))


def test_save_replaces_an_existing_checkpoint(tmp_path):
    path = tmp_path / "layer.npz"
    first = _layer()
    first.save(path)
    second = fastembed.Embedding(50, 6, seed=4)
    second.save(path)
    np.testing.assert_array_equal(fastembed.Embedding.load(path).embeddings, second.embeddings)


def _valid_checkpoint(tmp_path):
    path = tmp_path / "layer.npz"
    _layer().save(path)
    return path


@pytest.mark.parametrize("keep", [0, 1, 10, 100, 1000, -200, -22, -1])
def test_truncated_file_raises_checkpoint_error(tmp_path, keep):
    path = _valid_checkpoint(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    with pytest.raises(CheckpointError, match=str(path)):
        fastembed.Embedding.load(path)


def test_every_flipped_byte_in_the_table_is_caught(tmp_path, rng):
    path = _valid_checkpoint(tmp_path)
    data = bytearray(path.read_bytes())
    start = data.index(b"\x93NUMPY", data.index(b"embeddings.npy"))     # the table's .npy member
    positions = rng.choice(np.arange(start, start + 50 * 6 * 4), size=25, replace=False)
    for position in positions:
        damaged = bytearray(data)
        damaged[position] ^= 0x10
        path.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError):
            fastembed.Embedding.load(path)


def test_checksum_catches_what_the_zip_layer_does_not(tmp_path):
    """A member rewritten with a consistent zip CRC (a buggy tool, a hand edit) still fails our CRC-32."""
    path = _valid_checkpoint(tmp_path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    table = bytearray(members["embeddings.npy"])
    table[-1] ^= 0x01
    members["embeddings.npy"] = bytes(table)
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    with pytest.raises(CheckpointError, match="'embeddings' fails its CRC-32 check"):
        fastembed.Embedding.load(path)


def _rewrite_header(path, change):
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    header_member = "_fastembed_header.npy"
    header = json.loads(np.lib.format.read_array(io.BytesIO(members[header_member])).tobytes())
    change(header)
    buffer = io.BytesIO()
    np.save(buffer, np.frombuffer(json.dumps(header).encode(), np.uint8))
    members[header_member] = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)


@pytest.mark.parametrize("change, message", [
    (lambda h: h.update(version=99), "format version 99, this fastembed reads version 1"),
    (lambda h: h.update(format="other"), "not a fastembed checkpoint"),
    (lambda h: h["arrays"]["embeddings"].update(shape=[6, 50]), r"header says \(6, 50\)"),
    (lambda h: h["arrays"]["embeddings"].update(dtype="<f8"), "header says"),
    (lambda h: h["arrays"].update(missing={"shape": [1], "dtype": "<f4", "crc32": 0}), "'missing' is listed"),
    (lambda h: h["arrays"].pop("embeddings"), r"arrays \['embeddings'\] are not listed"),
    (lambda h: h["meta"].update({"class": "EmbeddingBag"}), "holds a 'EmbeddingBag', not an Embedding"),
    (lambda h: h["meta"]["config"].update(input_dim=51), r"the config says \(51, 6\)"),
    (lambda h: h["meta"]["config"].update(colour="blue"), "the saved config does not make a layer: .*colour"),
    (lambda h: h["meta"]["config"].update(dtype="int32"), "the saved config does not make a layer|the table is"),
    (lambda h: h.clear() or h.update(format="fastembed-checkpoint", version=1), "'arrays'|KeyError"),
])
def test_inconsistent_header_raises(tmp_path, change, message):
    path = _valid_checkpoint(tmp_path)
    _rewrite_header(path, change)
    with pytest.raises(CheckpointError, match=message):
        fastembed.Embedding.load(path)


def test_a_header_that_is_not_an_object(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, _fastembed_header=np.frombuffer(b"[1, 2]", np.uint8))
    with pytest.raises(CheckpointError, match="the header is not a JSON object"):
        load_arrays(path)


def test_other_files_are_not_checkpoints(tmp_path):
    plain_npy = tmp_path / "table.npy"
    np.save(plain_npy, np.zeros((3, 2)))
    with pytest.raises(CheckpointError, match="not an .npz archive"):
        load_arrays(plain_npy)
    plain_npz = tmp_path / "plain.npz"
    np.savez(plain_npz, table=np.zeros(3))
    with pytest.raises(CheckpointError, match="no header"):
        load_arrays(plain_npz)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        load_arrays(text)
    with pytest.raises(FileNotFoundError):
        load_arrays(tmp_path / "absent.npz")


def test_pickled_objects_are_refused_on_both_sides(tmp_path):
    with pytest.raises(TypeError, match=r"arrays\['bad'\] must be numeric, got dtype object"):
        save_arrays(tmp_path / "x.npz", {"bad": np.array([{}], dtype=object)})
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, _fastembed_header=np.array([{"format": "fastembed-checkpoint"}], dtype=object))
    with pytest.raises(CheckpointError):
        load_arrays(pickled)
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("name", ["", "_private", "a/b", 3])
def test_bad_array_names(tmp_path, name):
    with pytest.raises(ValueError, match="array names"):
        save_arrays(tmp_path / "x.npz", {name: np.zeros(2)})
    assert list(tmp_path.iterdir()) == []


WRITERS = {
    # every element of a complete checkpoint holds its version
    "arrays": """
import sys
import numpy as np
from fastembed.checkpoint import save_arrays
path, rows = sys.argv[1], int(sys.argv[2])
table = np.empty((rows, 64), np.float32)
version = 1
while True:
    table.fill(version)
    save_arrays(path, {"table": table}, {"version": version})
    print(version, flush=True)
    version += 1
""",
    # the optimizer's step count is the version; every element of its state holds it too
    "optimizer": """
import sys
import fastembed
path, rows = sys.argv[1], int(sys.argv[2])
opt = fastembed.optim.SparseAdam(fastembed.Embedding(rows, 64, embeddings_initializer="zeros"), lr=0.1)
version = 1
while True:
    opt.step_count = version
    for array in opt.state.values():
        array.fill(version)
    opt.save(path)
    print(version, flush=True)
    version += 1
""",
}


def _read_version(kind, path, rows):
    """The version of the checkpoint at ``path``, after checking that it is one whole save."""
    if kind == "arrays":
        arrays, meta = load_arrays(path)
        assert arrays["table"].shape == (rows, 64)
        assert (arrays["table"] == meta["version"]).all(), "a checkpoint mixes two saves"
        return meta["version"]
    opt = fastembed.optim.SparseAdam(fastembed.Embedding(rows, 64, embeddings_initializer="zeros"), lr=0.1)
    opt.load(path)
    assert all((array == opt.step_count).all() for array in opt.state.values()), "a checkpoint mixes two saves"
    return opt.step_count


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_writer_killed_mid_save_leaves_the_previous_checkpoint_intact(tmp_path, kind):
    """SIGKILL a process that saves 16 MiB arrays over and over: the file on disk is always one whole save."""
    path = tmp_path / "state.npz"
    rows = 1 << 16
    save_arrays(path, {"table": np.zeros((rows, 64), np.float32)}, {"version": 0})
    rng = np.random.default_rng()
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    killed_mid_write = rounds = 0
    # Saving dominates the writer's loop, so most kills land inside a save; stop once one has, after two rounds.
    while rounds < 2 or (killed_mid_write == 0 and rounds < 10):
        rounds += 1
        writer = subprocess.Popen([sys.executable, "-c", WRITERS[kind], str(path), str(rows)], env=env,
                                  stdout=subprocess.PIPE, text=True)
        try:
            # Time one whole save cycle, then kill at a random point of the next: the kill lands inside a save as
            # often as saving fills the cycle, however loaded the machine is.
            assert writer.stdout.readline().strip(), "the writer failed to start"
            started = time.perf_counter()
            assert writer.stdout.readline().strip(), "the writer stopped"
            time.sleep(rng.uniform(0.0, time.perf_counter() - started))
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            writer.stdout.close()
        leftovers = [p for p in tmp_path.iterdir() if p.name != path.name]
        killed_mid_write += bool(leftovers)
        assert _read_version(kind, path, rows) >= 1
        for leftover in leftovers:
            assert leftover.name.startswith(".state.npz.") and leftover.name.endswith(".tmp")
            leftover.unlink()
    assert killed_mid_write >= 1, "no kill landed between the temporary file's creation and its rename"


# --- optimizer state: opt.save / opt.load ---------------------------------------------------------------------
OPTIMIZERS = {
    "SGD": dict(lr=0.1, momentum=0.9, weight_decay=0.01),
    "Adagrad": dict(lr=0.1, eps=1e-6, initial_accumulator_value=0.1),
    "RowWiseAdagrad": dict(lr=0.1, weight_decay=0.02),
    "SparseAdam": dict(lr=0.01, betas=(0.8, 0.95)),
}


def _optimizer(key, layer, **changes):
    return getattr(fastembed.optim, key)(layer, **{**OPTIMIZERS[key], **changes})


def _train(opt, batches):
    for ids, offsets, grad_out in batches:
        if offsets is None:
            opt.fused_step(ids, grad_out, n_threads=2)
        else:
            opt.layer.backward(ids, offsets, grad_out)
            opt.step()


def _batches(rng, bags, n=4):
    if bags:
        return [(rng.integers(0, 50, size=20), np.array([0, 5, 5, 12]), rng.standard_normal((4, 6)))
                for _ in range(n)]
    return [(rng.integers(0, 50, size=(3, 7)), None, rng.standard_normal((3, 7, 6))) for _ in range(n)]


@pytest.mark.parametrize("key", sorted(OPTIMIZERS))
@pytest.mark.parametrize("layer_class", ["Embedding", "EmbeddingBag"])
def test_training_resumed_from_checkpoints_equals_uninterrupted_training(tmp_path, rng, key, layer_class):
    cls = getattr(fastembed, layer_class)
    batches = _batches(rng, layer_class == "EmbeddingBag")
    straight = cls(50, 6, seed=1)
    straight_opt = _optimizer(key, straight)
    _train(straight_opt, batches[:2])
    straight.save(tmp_path / "layer.npz")
    straight_opt.save(tmp_path / "opt.npz")
    _train(straight_opt, batches[2:])

    resumed = cls.load(tmp_path / "layer.npz")
    resumed_opt = _optimizer(key, resumed, lr=123.0)     # the checkpoint's hyper-parameters replace these
    resumed_opt.load(tmp_path / "opt.npz")
    assert resumed_opt.lr == straight_opt.lr
    _train(resumed_opt, batches[2:])
    assert resumed.embeddings.tobytes() == straight.embeddings.tobytes()
    assert {k: v.tobytes() for k, v in resumed_opt.state.items()} == \
        {k: v.tobytes() for k, v in straight_opt.state.items()}
    assert repr(resumed_opt) == repr(straight_opt)


def _snapshot(opt):
    return repr(opt), {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in opt.state.items()}


def _saved_adam(tmp_path, **layer_kwargs):
    layer = fastembed.Embedding(50, 6, seed=0, **layer_kwargs)
    opt = fastembed.optim.SparseAdam(layer, lr=0.01)
    opt.fused_step([[1, 2, 2]], np.ones((1, 3, 6)))
    path = tmp_path / "opt.npz"
    opt.save(path)
    return path


@pytest.mark.parametrize("target, message", [
    (lambda: fastembed.optim.Adagrad(fastembed.Embedding(50, 6), lr=0.1),
     r"holds the state of 'SparseAdam', not of 'Adagrad'"),
    (lambda: fastembed.optim.SparseAdam(fastembed.Embedding(51, 6), lr=0.1),
     r"the state is for a \(50, 6\) float32 table, this optimizer's layer has a \(51, 6\) float32 table"),
    (lambda: fastembed.optim.SparseAdam(fastembed.Embedding(50, 6, dtype="float64"), lr=0.1),
     r"the state is for a \(50, 6\) float32 table, this optimizer's layer has a \(50, 6\) float64 table"),
    (lambda: fastembed.optim.SparseAdam(fastembed.EmbeddingBag(50, 7), lr=0.1), r"\(50, 7\) float32 table"),
])
def test_optimizer_load_refuses_another_optimizer_or_table(tmp_path, target, message):
    path = _saved_adam(tmp_path)
    opt = target()
    before = _snapshot(opt)
    with pytest.raises(CheckpointError, match=message):
        opt.load(path)
    assert _snapshot(opt) == before


def _rewrite(path, arrays=None, meta=None):
    """Re-save a valid optimizer checkpoint with changed arrays or metadata (checksums stay consistent)."""
    saved, saved_meta = load_arrays(path)
    if arrays:
        arrays(saved)
    if meta:
        meta(saved_meta)
    save_arrays(path, saved, saved_meta)


@pytest.mark.parametrize("arrays, meta, message", [
    (None, lambda m: m["hyper"].update(lr=-1.0), r"Invalid learning rate: -1.0"),
    (None, lambda m: m["hyper"].update(lr="fast"), r"learning rate must be a number, got 'fast'"),
    (None, lambda m: m["hyper"].update(betas=[0.9, 1.5]), r"Invalid beta parameter at index 1: 1.5"),
    (None, lambda m: m["hyper"].update(step_count=-3), r"step_count must be a non-negative int, got -3"),
    (None, lambda m: m["hyper"].pop("eps"), r"the hyper-parameters are .*SparseAdam has lr, betas, eps, step_count"),
    (None, lambda m: m.pop("table"), r"the state is for an unknown table \(None\)"),
    (None, lambda m: m["table"].update(shape=7), r"the state is for an unknown table \(\{'shape': 7"),
    (None, lambda m: m.pop("class"), r"holds the state of None, not of 'SparseAdam'"),
    (lambda a: a.pop("exp_avg_sq"), None, r"the state has no 'exp_avg_sq'"),
    (lambda a: a.update(momentum_buffer=np.zeros((50, 6), np.float32)), None,
     r"the state has unexpected arrays \['momentum_buffer'\]"),
    (lambda a: a.update(exp_avg=np.zeros((50, 5), np.float32)), None,
     r"state 'exp_avg' must have shape \(50, 6\), got \(50, 5\)"),
    (lambda a: a.update(exp_avg=np.zeros((50, 6))), None, r"state 'exp_avg' must have dtype float32, got float64"),
    (lambda a: a.update(exp_avg=np.zeros((50, 6), np.int32)), None,
     r"state 'exp_avg' must have dtype float32, got int32"),
])
def test_optimizer_load_refuses_inconsistent_checkpoints(tmp_path, arrays, meta, message):
    path = _saved_adam(tmp_path)
    _rewrite(path, arrays, meta)
    opt = fastembed.optim.SparseAdam(fastembed.Embedding(50, 6), lr=0.5, betas=(0.5, 0.5))
    before = _snapshot(opt)
    with pytest.raises(CheckpointError, match=message):
        opt.load(path)
    assert _snapshot(opt) == before


@pytest.mark.parametrize("keep", [0, 10, 300, -100, -1])
def test_optimizer_load_refuses_truncated_files(tmp_path, keep):
    path = _saved_adam(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    opt = fastembed.optim.SparseAdam(fastembed.Embedding(50, 6), lr=0.5)
    before = _snapshot(opt)
    with pytest.raises(CheckpointError, match=str(path)):
        opt.load(path)
    assert _snapshot(opt) == before


def test_optimizer_load_refuses_a_layer_checkpoint_and_a_missing_file(tmp_path):
    fastembed.Embedding(50, 6).save(tmp_path / "layer.npz")
    opt = fastembed.optim.SGD(fastembed.Embedding(50, 6), lr=0.5)
    with pytest.raises(CheckpointError, match="holds the state of 'Embedding', not of 'SGD'"):
        opt.load(tmp_path / "layer.npz")
    with pytest.raises(FileNotFoundError):
        opt.load(tmp_path / "absent.npz")
    with pytest.raises(FileNotFoundError):
        opt.save(tmp_path / "no-such-directory" / "opt.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer.npz"]

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
])
def test_inconsistent_header_raises(tmp_path, change, message):
    path = _valid_checkpoint(tmp_path)
    _rewrite_header(path, change)
    with pytest.raises(CheckpointError, match=message):
        fastembed.Embedding.load(path)


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


WRITER = """
import sys
import numpy as np
from fastembed.checkpoint import save_arrays
path, rows = sys.argv[1], int(sys.argv[2])
table = np.empty((rows, 64), np.float32)
version = 1
while True:
    table.fill(version)               # every element of a complete checkpoint holds its version
    save_arrays(path, {"table": table}, {"version": version})
    print(version, flush=True)
    version += 1
"""


def test_writer_killed_mid_save_leaves_the_previous_checkpoint_intact(tmp_path):
    """SIGKILL a process that saves a 16 MiB table over and over: the file on disk is always one whole save."""
    path = tmp_path / "table.npz"
    rows = 1 << 16
    save_arrays(path, {"table": np.zeros((rows, 64), np.float32)}, {"version": 0})
    rng = np.random.default_rng()
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    killed_mid_write = rounds = 0
    # Saving dominates the writer's loop, so most kills land inside a save; stop once one has, after two rounds.
    while rounds < 2 or (killed_mid_write == 0 and rounds < 10):
        rounds += 1
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(rows)], env=env,
                                  stdout=subprocess.PIPE, text=True)
        try:
            # Wait for one completed save, then kill at a random point of a later one.
            assert writer.stdout.readline().strip(), "the writer failed to start"
            time.sleep(rng.uniform(0.0, 0.15))
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            writer.stdout.close()
        leftovers = [p for p in tmp_path.iterdir() if p.name != path.name]
        killed_mid_write += bool(leftovers)
        arrays, meta = load_arrays(path)
        table = arrays["table"]
        assert table.shape == (rows, 64) and meta["version"] >= 1
        assert (table == meta["version"]).all(), "a checkpoint mixes two saves"
        for leftover in leftovers:
            assert leftover.name.startswith(".table.npz.") and leftover.name.endswith(".tmp")
            leftover.unlink()
    assert killed_mid_write >= 1, "no kill landed between the temporary file's creation and its rename"

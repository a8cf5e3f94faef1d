"""Checkpoints that lose nothing: named arrays and a JSON header in one ``.npz`` file, written atomically.

``save_arrays`` writes to a temporary file in the target's directory, flushes it to disk and renames it over
the target (``os.replace``), then syncs the directory: a crash or a kill at any moment leaves either the old
checkpoint or the new one, never a mix. The header records the format version, the caller's metadata (a layer's
config), and each array's shape, dtype and CRC-32; ``load_arrays`` checks them all, so a truncated or corrupted
file raises ``CheckpointError`` instead of returning garbage. Nothing is unpickled (``allow_pickle=False``).
A writer killed mid-save may leave a ``.<name>.<random>.tmp`` file beside the target; it is never read.
"""
import json
import os
import secrets
import zipfile
import zlib

import numpy as np

FORMAT = "fastembed-checkpoint"
VERSION = 1
# The member holding the header; array names may not start with an underscore, so none can clash with it.
_HEADER = "_fastembed_header"


class CheckpointError(ValueError):
    """A file that is not a complete, intact fastembed checkpoint of the expected kind."""


def save_arrays(path, arrays, meta=None):
    """Write ``arrays`` (name -> ndarray) and ``meta`` (a JSON-serialisable dict) to ``path``, atomically.

    path: the file to create or replace, used verbatim (``.npz`` is the customary suffix); its directory must
    exist. Array names are non-empty strings without ``/`` that do not start with ``_``; arrays are numeric or
    bool (no objects). Everything is checked before the first byte is written. Returns ``path``.
    """
    path = os.fspath(path)
    prepared, entries = {}, {}
    for name, array in arrays.items():
        if not isinstance(name, str) or not name or name.startswith("_") or "/" in name:
            raise ValueError(f"array names must be non-empty strings without '/' not starting with '_', got {name!r}")
        array = _c_order(array)
        if array.dtype.hasobject or array.dtype.kind not in "biufc":
            raise TypeError(f"arrays[{name!r}] must be numeric, got dtype {array.dtype}")
        prepared[name] = array
        entries[name] = {"shape": list(array.shape), "dtype": array.dtype.str, "crc32": zlib.crc32(array)}
    header = {"format": FORMAT, "version": VERSION, "meta": {} if meta is None else meta, "arrays": entries}
    try:
        encoded = json.dumps(header, allow_nan=False).encode()
    except (TypeError, ValueError) as error:
        raise TypeError(f"meta must be JSON-serialisable: {error}") from None
    prepared[_HEADER] = np.frombuffer(encoded, dtype=np.uint8)
    _write_atomically(path, lambda handle: np.savez(handle, **prepared))
    return path


def load_arrays(path):
    """Read a checkpoint written by ``save_arrays``: returns ``(arrays, meta)``.

    Raises ``CheckpointError`` (a ``ValueError``) naming the file and the problem when it is truncated,
    corrupted, of another format version or not a checkpoint at all; ``FileNotFoundError`` when it is missing.
    """
    path = os.fspath(path)
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise CheckpointError(f"{path}: not a fastembed checkpoint (not an .npz archive)")
        with archive:
            header = _read_header(archive, path)
            arrays = {name: _read_array(archive, name, entry, path) for name, entry in header["arrays"].items()}
            extra = sorted(set(archive.files) - set(header["arrays"]) - {_HEADER})
    except (CheckpointError, FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile, zlib.error) as error:
        raise CheckpointError(f"{path}: truncated or corrupted checkpoint ({type(error).__name__}: {error})") from None
    if extra:
        raise CheckpointError(f"{path}: arrays {extra} are not listed in the header")
    return arrays, header["meta"]


def _read_header(archive, path):
    if _HEADER not in archive.files:
        raise CheckpointError(f"{path}: not a fastembed checkpoint (no header)")
    header = json.loads(archive[_HEADER].tobytes().decode())
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fastembed checkpoint (format {header.get('format')!r})")
    if header.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {header.get('version')!r}, this fastembed reads "
                              f"version {VERSION}")
    return header


def _read_array(archive, name, entry, path):
    if name not in archive.files:
        raise CheckpointError(f"{path}: array {name!r} is listed in the header but missing")
    array = archive[name]
    if list(array.shape) != entry["shape"] or array.dtype.str != entry["dtype"]:
        raise CheckpointError(f"{path}: array {name!r} has shape {array.shape} and dtype {array.dtype.str}, the "
                              f"header says {tuple(entry['shape'])} and {entry['dtype']}")
    array = _c_order(array)
    if zlib.crc32(array) != entry["crc32"]:
        raise CheckpointError(f"{path}: array {name!r} fails its CRC-32 check (corrupted data)")
    return array


def _c_order(array):
    """``array`` in C order, copied only when it is not (``np.ascontiguousarray`` would turn 0-d into 1-d)."""
    array = np.asarray(array)
    return array if array.flags.c_contiguous else array.copy(order="C")


def _write_atomically(path, write):
    """Call ``write(handle)`` on a new file beside ``path``, sync it, then rename it over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    while True:
        temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
        try:
            # O_EXCL: never write through somebody else's file or link; the mode honours the umask.
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _sync_directory(directory)


def _sync_directory(directory):
    """Make the rename durable: on POSIX a directory entry reaches the disk only when the directory is synced."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

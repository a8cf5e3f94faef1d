"""Row-sharded embedding tables over ``torch.distributed``: each rank owns a slice of the rows, fastembed's
kernels do every rank's local work, and torch's collectives only move ids, rows and gradients.

One training step, as every rank sees it:

* forward: the batch's ids are grouped (each distinct id once) and bucketed by owner in one radix sort; the
  bucket sizes, then the ids, go to their owners (``all_to_all``); each owner gathers the rows asked of it
  (``gather``) and sends them back (``all_to_all``); the requesting rank expands them to the batch's shape, or
  pools its bags straight from them, so a row travels once per rank however often the batch repeats it.
* backward: the requesting rank sums the gradient of each distinct id (``sparse_grad``'s or the bag
  backward's reduction) and sends it to the owner on the forward's routes (one ``all_to_all``, after checking
  that every rank is answering the same forward call; otherwise the ids are exchanged again). The owner keeps
  what it receives.
* ``step()``: each owner runs its fused optimizer (``fastembed.optim``) once per distinct row, summing the
  contributions in rank order. No communication.

Without autograd: ``out = table(ids)`` (numpy in, numpy out), ``table.backward(ids, grad_out)``, ``table.step()``,
``table.full_weights()``. With it, ``ShardedEmbeddingModule(table)`` is a ``torch.nn.Module`` whose output's
gradient ``loss.backward()`` sends to the owners. Checkpoints: ``table.save(directory)`` (a file per rank and a
manifest) and ``ShardedEmbedding.load(directory)`` on any number of ranks.

The gradient of a row is the sum over all ranks: training on W ranks equals one process training on the
concatenation of the W batches in rank order (TorchRec's convention for sharded tables). Average the dense
layers with ``DistributedDataParallel`` as usual.

Every method that moves data is a collective: all ranks of the group call it in the same order, each with its
own batch, possibly empty. Collectives run with the table's ``timeout`` (else the process group's); a peer
that exits, crashes or stops calling makes the others raise ``PeerError`` naming the step and the exchange.

The exchanges use ``all_to_all_single`` with uneven splits, which the ``gloo`` backend runs on CPU tensors;
tables live in host memory, so the group needs a CPU backend (``gloo``, or ``mpi``). torch is imported when
a table is built, never by ``import fastembed``; without an initialised process group a table is a one-process
table (world size 1), which needs no torch at all (to load a checkpoint and inspect it, say).

Initial rows are a function of ``(seed, global row id)`` only, so every world size and partition starts from the
same table: entry ``(r, c)`` of a ``dim``-wide table is drawn from output number ``r * dim + c`` of SplitMix64
seeded with ``seed`` (two outputs, ``2k`` and ``2k + 1``, per normal draw: Box-Muller). SplitMix64 is
counter-based (output k is a mix of ``seed + (k + 1) * 0x9E3779B97F4A7C15``), so a rank computes its own rows,
vectorised, in time proportional to its shard.
"""
import datetime
import json
import math
import os
import secrets
import time

import numpy as np

from fastembed import _index, _scatter, checkpoint, initializers, optim
from fastembed._threads import resolve_threads
from fastembed._validation import FLOAT_DTYPES, as_float, as_ids, check_grad_shape, check_positive_int, check_rows
from fastembed.bags import check_mode, embedding_bag, embedding_bag_backward, prepare_bags
from fastembed.layers import Embedding
from fastembed.ops import gather, sparse_grad
from fastembed.sparse import SparseGrad

# ShardedEmbeddingModule is here too, built on first use (it imports torch), so ``import *`` leaves it out.
__all__ = ["MANIFEST", "OPTIMIZERS", "PARTITIONS", "PeerError", "ShardedEmbedding", "ShardedEmbeddingBag",
           "initial_rows"]

PARTITIONS = ("mod", "range")
OPTIMIZERS = {"sgd": optim.SGD, "adagrad": optim.Adagrad, "rowwise_adagrad": optim.RowWiseAdagrad,
              "adam": optim.SparseAdam}
MANIFEST = "manifest.json"
_FORMAT, _VERSION = "fastembed-sharded-table", 1
# Entries drawn at once while initialising a shard: bounds the generator's temporaries to a few MiB.
_INIT_CHUNK = 1 << 18
_SPLITMIX_GAMMA = np.uint64(0x9E3779B97F4A7C15)


class PeerError(RuntimeError):
    """A collective of a sharded table failed: a peer exited or crashed, or did not take part in time.

    Attributes: ``operation`` (the exchange, e.g. ``"forward: exchange ids"``), ``step`` (the number of
    ``step()`` calls made before it) and ``rank`` (this process). The table cannot be used afterwards, since its
    peers stopped at unknown points: every later collective raises at once. Restart from a checkpoint.
    """

    def __init__(self, message, operation, step, rank):
        super().__init__(message)
        self.operation, self.step, self.rank = operation, step, rank


# --- partitions ---------------------------------------------------------------------------------------------
class _Partition:
    """Which rank owns each of ``num_rows`` global rows among ``world_size`` ranks, and at which local row.

    ``mod``: rank ``id % W`` holds the id at local row ``id // W`` (rows dealt out like cards, so a few hot ids
    spread over the ranks). ``range``: W contiguous blocks, the first ``V % W`` of them one row longer.
    """

    def __init__(self, kind, num_rows, world_size):
        if kind not in PARTITIONS:
            raise ValueError(f"partition must be one of {', '.join(map(repr, PARTITIONS))}; got {kind!r}")
        if num_rows < world_size:
            raise ValueError(f"a table of {num_rows} rows cannot be sharded over {world_size} ranks: every rank "
                             f"must own at least one row")
        self.kind, self.num_rows, self.world_size = kind, num_rows, world_size
        self._base, self._longer = divmod(num_rows, world_size)
        self._stride = -(-num_rows // world_size)

    def count(self, rank):
        """How many rows ``rank`` owns."""
        if self.kind == "mod":
            return (self.num_rows - rank + self.world_size - 1) // self.world_size
        return self._base + (rank < self._longer)

    def _start(self, ranks):
        return ranks * self._base + np.minimum(ranks, self._longer)

    def rows_of(self, rank):
        """The global ids ``rank`` owns, (count,) int64 in local-row order (increasing)."""
        if self.kind == "mod":
            return np.arange(rank, self.num_rows, self.world_size, dtype=np.int64)
        start = int(self._start(rank))
        return np.arange(start, start + self.count(rank), dtype=np.int64)

    def owner(self, ids):
        """The owning rank of each id, int64 of ``ids``' shape."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.kind == "mod":
            return ids % self.world_size
        longer_rows = self._longer * (self._base + 1)
        return np.where(ids < longer_rows, ids // (self._base + 1),
                        self._longer + (ids - longer_rows) // self._base)

    def to_local(self, ids, owner):
        """The local row of each id at its ``owner``."""
        if self.kind == "mod":
            return np.asarray(ids, dtype=np.int64) // self.world_size
        return np.asarray(ids, dtype=np.int64) - self._start(owner)

    def to_global(self, local, rank):
        """The global ids of ``rank``'s local rows ``local``."""
        if self.kind == "mod":
            return local * self.world_size + rank
        return local + int(self._start(rank))

    def sort_key(self, ids):
        """A key ordering ids by (owner, local row): grouping a batch by it buckets the batch by owner too."""
        if self.kind == "mod":
            ids = ids.astype(np.int64, copy=False)
            return (ids % self.world_size) * self._stride + ids // self.world_size
        return ids

    def from_key(self, keys):
        """``(owner, local row)`` of each key of ``sort_key``."""
        if self.kind == "mod":
            return np.divmod(keys, self._stride)
        owner = self.owner(keys)
        return owner, keys - self._start(owner)


# --- initial rows -------------------------------------------------------------------------------------------
def _splitmix64(seed, counters):
    """Output number ``counters`` (uint64 array) of SplitMix64 seeded with ``seed``, as uint64."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (counters + np.uint64(1)) * _SPLITMIX_GAMMA
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def _unit(seed, counters):
    """Floats in [0, 1) from the top 53 bits of each output."""
    return (_splitmix64(seed, counters) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _counters(rows, dim, per_entry=1):
    """The generator outputs of entries ``(rows, 0..dim-1)``: ``(row * dim + column) * per_entry``."""
    with np.errstate(over="ignore"):
        entries = rows.astype(np.uint64)[:, None] * np.uint64(dim) + np.arange(dim, dtype=np.uint64)
        return entries * np.uint64(per_entry)


def _row_initializer(init, seed, num_rows, dim):
    """``init`` as ``draw(rows) -> (len(rows), dim)``, a function of the global row ids and the seed only."""
    if isinstance(init, np.ndarray) or (isinstance(init, (list, tuple)) and np.ndim(init) == 2):
        matrix = init if isinstance(init, np.ndarray) else np.asarray(init)
        if matrix.shape != (num_rows, dim):
            raise ValueError(f"an init matrix must have the table's shape {(num_rows, dim)}, got {matrix.shape}")
        return lambda rows: matrix[rows]
    if callable(init) and not isinstance(init, initializers.Initializer):
        def from_function(rows):
            values = np.asarray(init(rows))
            if values.shape != (rows.shape[0], dim):
                raise ValueError(f"init(rows) must return (len(rows), dim) = {(rows.shape[0], dim)}, "
                                 f"got {values.shape}")
            return values
        return from_function
    spec = initializers.get(init)
    if isinstance(spec, initializers.GlorotUniform):
        limit = math.sqrt(6.0 / (num_rows + dim))
        spec = initializers.RandomUniform(-limit, limit)
    if isinstance(spec, initializers.RandomUniform):
        low, high = spec.minval, spec.maxval
        return lambda rows: low + (high - low) * _unit(seed, _counters(rows, dim))
    if isinstance(spec, initializers.RandomNormal):
        mean, stddev = spec.mean, spec.stddev

        def normal(rows):
            counters = _counters(rows, dim, per_entry=2)
            radius = np.sqrt(-2.0 * np.log1p(-_unit(seed, counters)))
            return mean + stddev * radius * np.cos(2.0 * np.pi * _unit(seed, counters + np.uint64(1)))
        return normal
    if isinstance(spec, initializers.Constant):
        if spec.value.ndim == 0:
            value = float(spec.value)
            return lambda rows: np.full((rows.shape[0], dim), value)
        return _row_initializer(spec.value, seed, num_rows, dim)
    raise ValueError(f"init {spec!r} cannot be drawn row by row: use 'uniform', 'normal', 'glorot_uniform', a "
                     f"constant, a (num_rows, dim) matrix or a function of the row ids")


def _fill(out, rows, draw):
    """``out[i] = draw(rows[i])``, a bounded number of rows at a time."""
    chunk = max(1, _INIT_CHUNK // max(out.shape[1], 1))
    for start in range(0, rows.shape[0], chunk):
        out[start:start + chunk] = draw(rows[start:start + chunk])


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be an int in [0, 2**64) (the same on every rank), got {seed!r}")
    return int(seed)


def initial_rows(num_rows, dim, rows=None, init="uniform", seed=0, dtype="float32"):
    """The initial values of global ``rows`` of a sharded table: the same whatever the world size or partition.

    rows: (n,) integer ids in ``[0, num_rows)``, or None for the whole table. init: ``"uniform"`` (±0.05),
    ``"normal"`` (σ 0.05), ``"glorot_uniform"``, ``"zeros"``, ``"ones"``, an ``initializers`` instance of those
    kinds (``RandomUniform(a, b)``, ``RandomNormal(mean, stddev)``, ``Constant(c)``), a (num_rows, dim) matrix
    (a memory map works), or a function ``f(rows) -> (len(rows), dim)`` of the global ids. Returns (n, dim) of
    ``dtype``; random draws are made in float64, then cast.
    """
    num_rows, dim = check_positive_int(num_rows, "num_rows"), check_positive_int(dim, "dim")
    dtype = _float_dtype(dtype)
    rows = np.arange(num_rows, dtype=np.int64) if rows is None else as_ids(rows, "rows").reshape(-1)
    check_rows(rows, num_rows, 1, rows.shape, name="rows")
    out = np.empty((rows.shape[0], dim), dtype)
    _fill(out, rows.astype(np.int64, copy=False), _row_initializer(init, _check_seed(seed), num_rows, dim))
    return out


def _float_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


# --- torch ------------------------------------------------------------------------------------------------
def _torch():
    import torch
    import torch.distributed

    return torch


def _resolve_group(group):
    """``(torch, group, rank, world_size)``; ``torch`` is None for a one-process table (no process group)."""
    if group is None:
        try:
            torch = _torch()
            initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
        except ImportError:
            initialised = False
        if not initialised:
            if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
                raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but torch.distributed is not initialised: "
                                   f"call torch.distributed.init_process_group('gloo') before building the table")
            return None, None, 0, 1
    torch = _torch()
    dist = torch.distributed
    backend = str(dist.get_backend(group))
    if "gloo" not in backend and "mpi" not in backend:
        raise ValueError(f"the process group's backend is {backend!r}, which cannot move host memory: sharded "
                         f"tables live on the CPU, so give them a gloo group (dist.new_group(backend='gloo'))")
    return torch, group, dist.get_rank(group), dist.get_world_size(group)


def _default_threads():
    """Cores per process when torchrun starts several on one machine (``LOCAL_WORLD_SIZE``), else None."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    if local.isdigit() and int(local) > 1:
        return max(1, (os.cpu_count() or 1) // int(local))
    return None


def _as_timeout(timeout):
    if timeout is None or isinstance(timeout, datetime.timedelta):
        seconds = None if timeout is None else timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise TypeError(f"timeout must be seconds (a number), a datetime.timedelta or None, got {timeout!r}")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"timeout must be positive, got {seconds} s")
    return None if seconds is None else datetime.timedelta(seconds=seconds)


class _Route:
    """How one batch's distinct ids travel.

    slot (N,) int64: for each position of the batch, the place of its id among the distinct ids in send order;
    order (N,), seg_ptr (U + 1,) int64: the positions of each distinct id (``group_rows``'s grouping).
    local_ids (U,) int64: the distinct ids as rows of their owners, bucketed by owner (rank order).
    send_counts (W,) int64: how many distinct ids go to each rank. recv_counts (W,), recv_ids (R,): what each
    peer asked of this rank (None until exchanged). seq: the forward call that exchanged them (0: none).
    rows (U, D): the rows fetched, kept for max pooling, whose backward needs them.
    """

    __slots__ = ("local_ids", "order", "recv_counts", "recv_ids", "rows", "seg_ptr", "send_counts", "seq", "slot")

    def __init__(self, slot, order, seg_ptr, local_ids, send_counts):
        self.slot, self.order, self.seg_ptr = slot, order, seg_ptr
        self.local_ids, self.send_counts = local_ids, send_counts
        self.recv_counts = self.recv_ids = self.rows = None
        self.seq = 0

    @property
    def n_distinct(self):
        return self.local_ids.shape[0]

    def unexchanged(self):
        return _Route(self.slot, self.order, self.seg_ptr, self.local_ids, self.send_counts)


# --- tables -------------------------------------------------------------------------------------------------
class ShardedEmbedding:
    """A ``num_rows`` x ``dim`` embedding table whose rows are spread over the ranks of a process group.

    Args:
        num_rows, dim: the global table's shape (num_rows at least the world size).
        partition: ``"mod"`` (rank ``id % W`` owns id at local row ``id // W``) or ``"range"`` (contiguous
            blocks, the first ``num_rows % W`` one row longer).
        optimizer: ``"sgd"``, ``"adagrad"``, ``"rowwise_adagrad"`` or ``"adam"`` (lazy, PyTorch's SparseAdam),
            the ``fastembed.optim`` classes; lr: its learning rate; optimizer_options: its other arguments
            (``{"eps": 1e-8, "betas": (0.9, 0.999)}``, ``{"weight_decay": ...}``, ``{"momentum": ...}``).
        init: the initial rows, a function of ``(seed, global row id)`` (see ``initial_rows``); seed: an int,
            the same on every rank.
        group: a ``torch.distributed`` process group with a CPU backend; None: the default group, or a
            one-process table when torch.distributed is not initialised.
        dtype: ``"float32"`` or ``"float64"``.
        timeout: seconds (or a ``timedelta``) each collective may wait for the peers before ``PeerError``;
            None: the process group's timeout. Can be changed later (``table.timeout = 5``).
        n_threads: threads of the local kernels; None: the cores divided by ``LOCAL_WORLD_SIZE`` under
            torchrun, else fastembed's default. Give each rank its own cores when several share a machine.

    Every rank must build the table with the same arguments (checked: a ``ValueError`` on every rank names
    the first difference). Attributes: ``rank``, ``world_size``, ``local`` (the ``fastembed.Embedding`` holding
    this rank's rows, local row i being global row ``owned_rows()[i]``), ``optimizer`` (over ``local``),
    ``steps`` (``step()`` calls so far), ``comm_seconds`` (wall time spent in collectives, waits included).
    """

    def __init__(self, num_rows, dim, partition="mod", optimizer="adam", lr=0.01, init="uniform", seed=0,
                 group=None, dtype="float32", optimizer_options=None, timeout=None, n_threads=None):
        self.num_rows = check_positive_int(num_rows, "num_rows")
        self.dim = check_positive_int(dim, "dim")
        self.dtype = _float_dtype(dtype)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}; got {optimizer!r}")
        self.seed = _check_seed(seed)
        self.timeout = timeout
        self.n_threads = _default_threads() if n_threads is None else resolve_threads(n_threads)
        self._torch, self._group, self.rank, self.world_size = _resolve_group(group)
        self._partition = _Partition(partition, self.num_rows, self.world_size)
        self.partition = partition
        draw = _row_initializer(init, self.seed, self.num_rows, self.dim)
        self.local = Embedding(self._partition.count(self.rank), self.dim, embeddings_initializer="zeros",
                               dtype=self.dtype, name=f"shard {self.rank} of {self.world_size}")
        self.optimizer_name = optimizer
        self._optimizer_options = dict(optimizer_options or {})
        self.optimizer = OPTIMIZERS[optimizer](self.local, lr=lr, **self._optimizer_options)
        self.steps, self.comm_seconds = 0, 0.0
        self._failure = None
        self._pending = None
        self._last = None
        self._forward_calls = 0
        self._ones = np.ones(self.world_size, np.int64)
        self._handshake()
        _fill(self.local.embeddings, self.owned_rows(), draw)

    # --- configuration ----------------------------------------------------------------------------------
    def _signature(self):
        """Numbers every rank must agree on (as float64: the seed is compared modulo 2**52)."""
        return {"num_rows": self.num_rows, "dim": self.dim, "dtype": self.dtype.itemsize,
                "partition": PARTITIONS.index(self.partition), "seed": self.seed % 2 ** 52,
                "optimizer": list(OPTIMIZERS).index(self.optimizer_name), "lr": self.optimizer.lr}

    def _handshake(self):
        signature = self._signature()
        mine = np.array(list(signature.values()), np.float64)
        every = self._all_gather(mine, "construction: compare configurations")
        for rank, theirs in enumerate(every):
            differs = np.flatnonzero(theirs != mine)
            if differs.size:
                field = list(signature)[differs[0]]
                raise ValueError(f"rank {rank} built this table with a different {field} ({theirs[differs[0]]:g}) "
                                 f"than rank {self.rank} ({mine[differs[0]]:g}): every rank must pass the same "
                                 f"arguments")

    def get_config(self):
        """The constructor arguments that rebuild this table's layout and optimizer (a JSON-able dict)."""
        options = {key: list(value) if isinstance(value, tuple) else value
                   for key, value in self._optimizer_options.items()}
        return {"num_rows": self.num_rows, "dim": self.dim, "partition": self.partition,
                "optimizer": self.optimizer_name, "lr": self.optimizer.lr, "optimizer_options": options,
                "seed": self.seed, "dtype": self.dtype.name}

    def owned_rows(self):
        """The global ids this rank owns, (n,) int64 in local-row order."""
        return self._partition.rows_of(self.rank)

    @property
    def timeout(self):
        """How long each collective waits for the peers (a ``timedelta``), or None for the process group's
        timeout. Settable, in seconds or as a ``timedelta``: a long one for a checkpoint, a short one for steps."""
        return self._timeout

    @timeout.setter
    def timeout(self, timeout):
        self._timeout = _as_timeout(timeout)

    # --- collectives ------------------------------------------------------------------------------------
    def _collective(self, operation, start):
        """Run one collective (``start()`` returns its work handle) under the timeout; failures → PeerError."""
        if self._failure is not None:
            raise PeerError(f"rank {self.rank} of {self.world_size}: {operation} refused at step {self.steps}: an "
                            f"earlier collective of this table failed ({self._failure.operation} at step "
                            f"{self._failure.step}), so the ranks are out of step", operation, self.steps,
                            self.rank) from self._failure
        began = time.perf_counter()
        try:
            work = start()
            if self._timeout is None:
                work.wait()
            else:
                work.wait(timeout=self._timeout)
        except RuntimeError as error:
            limit = "the process group's timeout" if self._timeout is None else f"{self._timeout.total_seconds():g} s"
            self._failure = PeerError(f"rank {self.rank} of {self.world_size}: {operation} failed at step "
                                      f"{self.steps}: a peer exited, crashed or did not take part within {limit} "
                                      f"({error})", operation, self.steps, self.rank)
            raise self._failure from error
        finally:
            self.comm_seconds += time.perf_counter() - began

    def _all_to_all(self, send, send_counts, recv_counts, operation):
        """Send ``send``'s leading rows in rank order (``send_counts[r]`` to rank r); return what the peers sent
        here, in rank order (``recv_counts[r]`` rows from rank r)."""
        if self._torch is None:
            return send
        torch = self._torch
        send = np.ascontiguousarray(send)
        recv = np.empty((int(recv_counts.sum()),) + send.shape[1:], send.dtype)
        self._collective(operation, lambda: torch.distributed.all_to_all_single(
            torch.from_numpy(recv), torch.from_numpy(send), recv_counts.tolist(), send_counts.tolist(),
            group=self._group, async_op=True))
        return recv

    def _all_gather(self, array, operation):
        """Every rank's ``array`` (the same shape everywhere), stacked in rank order: (W,) + array.shape."""
        if self._torch is None:
            return array[None]
        torch = self._torch
        out = np.empty((self.world_size,) + array.shape, array.dtype)
        self._collective(operation, lambda: torch.distributed.all_gather(
            [torch.from_numpy(part) for part in out], torch.from_numpy(np.ascontiguousarray(array)),
            group=self._group, async_op=True))
        return out

    def _everywhere(self, operation, action):
        """Run ``action()`` on every rank and raise on all of them if it failed on any (collective)."""
        error = None
        try:
            action()
        except Exception as caught:
            error = caught
        failed = self._all_gather(np.array([error is not None], np.uint8), operation)[:, 0]
        if error is not None:
            raise error
        if failed.any():
            raise RuntimeError(f"{operation} failed on rank(s) {np.flatnonzero(failed).tolist()}")

    # --- routing ----------------------------------------------------------------------------------------
    def _plan(self, flat):
        """Group validated ids by owner: the local half of a route (one radix sort, O(N))."""
        keys = self._partition.sort_key(flat)
        threads = resolve_threads(self.n_threads, keys.shape[0] * 8)
        distinct, order, seg_ptr = _index.group_rows(keys, int(keys.max()) if keys.shape[0] else 0, threads)
        slot = np.empty(keys.shape[0], np.int64)
        slot[order] = np.repeat(np.arange(distinct.shape[0], dtype=np.int64), np.diff(seg_ptr))
        owner, local_ids = self._partition.from_key(distinct)
        return _Route(slot, order, seg_ptr, local_ids,
                      np.bincount(owner, minlength=self.world_size).astype(np.int64))

    def _exchange(self, route, during):
        route.recv_counts = self._all_to_all(route.send_counts, self._ones, self._ones,
                                             f"{during}: exchange id counts")
        route.recv_ids = self._all_to_all(route.local_ids, route.send_counts, route.recv_counts,
                                          f"{during}: exchange ids")

    def _fetch(self, route, during):
        """The route's rows, (U, D) in send order: each owner gathers what it was asked and sends it back."""
        rows = gather(self.local.embeddings, route.recv_ids, n_threads=self.n_threads)
        return self._all_to_all(rows, route.recv_counts, route.send_counts, f"{during}: return rows")

    def _forward(self, flat, call):
        route = self._plan(flat)
        self._forward_calls += 1
        route.seq = self._forward_calls
        self._exchange(route, "forward")
        rows = self._fetch(route, "forward")
        if self._keeps_rows:
            route.rows = rows
        return self._output(rows, route, call), route

    def _agreed(self, route):
        """``route`` when every rank is answering the same forward call, else a copy whose ids are exchanged
        again (a backward on other ids than the last forward's, or ranks answering different calls)."""
        seqs = self._all_gather(np.array([route.seq], np.int64), "backward: match forward calls")
        if route.seq > 0 and np.all(seqs == route.seq):
            return route
        fresh = route.unexchanged()
        self._exchange(fresh, "backward")
        return fresh

    def _backward(self, route, call, grad):
        route = self._agreed(route)
        if self._keeps_rows and route.rows is None:
            route.rows = self._fetch(route, "backward")
        values = self._distinct_grads(route, call, grad)
        received = self._all_to_all(values, route.send_counts, route.recv_counts, "backward: send gradients")
        self._pending = (self._pending or []) + [(route.recv_ids, received)]

    def _call(self, flat, call):
        out, route = self._forward(flat, call)
        # A copy: the caller may reuse its id buffer before calling backward.
        self._last = (flat.copy(), route)
        return out

    def _route_for(self, flat):
        """The last forward's route when ``flat`` is its batch, else the local half of a new one."""
        if self._last is not None and np.array_equal(self._last[0], flat):
            return self._last[1]
        return self._plan(flat)

    # --- the lookup ---------------------------------------------------------------------------------------
    _keeps_rows = False

    def _prepare(self, ids):
        """Validate one call's ids: ``(flat ids, the ids' shape)``."""
        ids = as_ids(ids)
        flat = ids.reshape(-1)
        check_rows(flat, self.num_rows, resolve_threads(self.n_threads, flat.shape[0] * 8), ids.shape)
        return flat, ids.shape

    def _checked_grad(self, shape, grad_out):
        grad = as_float(grad_out, "grad_out", dtype=self.dtype)
        check_grad_shape(grad, shape, self.dim)
        return grad

    def _output(self, rows, route, shape):
        return gather(rows, route.slot.reshape(shape), n_threads=self.n_threads)

    def _distinct_grads(self, route, shape, grad):
        """The summed gradient of each distinct id, (U, D) in send order: ``sparse_grad``'s reduction, on the
        grouping the route already holds."""
        grad = np.ascontiguousarray(grad).reshape(-1, self.dim)
        values = np.empty((route.n_distinct, self.dim), self.dtype)
        _scatter.segment_sum_rows(grad, route.order, route.seg_ptr, values,
                                  resolve_threads(self.n_threads, grad.nbytes))
        return values

    def __call__(self, ids):
        """Look up ``ids`` (integers of any shape in ``[0, num_rows)``) → ``ids.shape + (dim,)``, the table's
        dtype. Collective: every rank calls it, with its own ids (possibly none)."""
        return self._call(*self._prepare(ids))

    def backward(self, ids, grad_out):
        """Send the gradient of a lookup (``grad_out``: ``ids.shape + (dim,)``) to the rows' owners, who keep it
        for ``step()``. Collective. Cheapest right after the forward call on the same ids (its routes are
        reused); any ids work."""
        flat, shape = self._prepare(ids)
        self._backward(self._route_for(flat), shape, self._checked_grad(shape, grad_out))

    # --- updates ------------------------------------------------------------------------------------------
    def _received(self):
        ids = [part[0] for part in self._pending]
        grads = [part[1] for part in self._pending]
        if len(ids) == 1:
            return ids[0], grads[0]
        return np.concatenate(ids), np.concatenate(grads)

    @property
    def grad(self):
        """The gradient this rank received for its own rows since the last ``step``: a ``SparseGrad`` over
        global row ids (sorted; ``num_rows`` rows), or None before any backward."""
        if self._pending is None:
            return None
        ids, grads = self._received()
        local = sparse_grad(ids, grads, num_rows=self.local.input_dim, n_threads=self.n_threads)
        return SparseGrad(self._partition.to_global(local.rows, self.rank), local.values, self.num_rows)

    def step(self):
        """Update this rank's rows from the gradients received since the last step: the fused optimizer, once
        per distinct row, contributions summed in rank order. Local: no communication. Without a backward since
        the last step nothing changes (Adam's step count included), as for a one-process table."""
        self.steps += 1
        # The next backward reads the updated rows (max pooling's arg-max), as a one-process table would.
        self._last = None
        if self._pending is None:
            return
        ids, grads = self._received()
        self._pending = None
        self.optimizer.fused_step(ids, grads, n_threads=self.n_threads)

    def zero_grad(self):
        """Forget the gradients received since the last step."""
        self._pending = None

    def full_weights(self):
        """The whole (num_rows, dim) table, assembled on every rank (collective; for tests and small tables)."""
        counts = [self._partition.count(rank) for rank in range(self.world_size)]
        padded = np.zeros((max(counts), self.dim), self.dtype)
        padded[:counts[self.rank]] = self.local.embeddings
        shards = self._all_gather(padded, "full_weights: gather the shards")
        table = np.empty((self.num_rows, self.dim), self.dtype)
        for rank, shard in enumerate(shards):
            table[self._partition.rows_of(rank)] = shard[:counts[rank]]
        return table

    # --- checkpoints --------------------------------------------------------------------------------------
    def save(self, directory):
        """Write the table and its optimizer state under ``directory``: one file per rank and a manifest.
        Collective; returns the manifest's path.

        Rank r writes ``shard-<id>-<r>-of-<W>.npz`` (``fastembed.checkpoint``: atomic, checksummed) with its rows
        and optimizer state. Once every shard is on disk, rank 0 replaces ``manifest.json`` (atomically: the only
        file a reader trusts) and removes the shards of the checkpoint it replaces, so a job killed at any moment
        leaves the old checkpoint or the new one, whole. ``directory`` must be the same directory for every
        rank (a shared filesystem across machines) and hold one table.
        """
        directory = os.fspath(directory)
        token = int(self._all_gather(np.array([secrets.randbits(62)], np.int64), "save: agree on a name")[0, 0])
        names = [_shard_name(token, rank, self.world_size) for rank in range(self.world_size)]
        arrays = {"embeddings": self.local.embeddings,
                  **{f"state.{name}": value for name, value in self.optimizer.state.items()}}
        meta = {"token": token, "rank": self.rank, "world_size": self.world_size}

        def write_shard():
            os.makedirs(directory, exist_ok=True)
            checkpoint.save_arrays(os.path.join(directory, names[self.rank]), arrays, meta)

        self._everywhere("save: write the shards", write_shard)
        state = self.optimizer.state_dict()
        hyper = {key: np.asarray(state[key]).tolist() for key in self.optimizer.hyper_names}
        manifest = {"format": _FORMAT, "version": _VERSION, "class": type(self).__name__,
                    "config": self.get_config(), "steps": self.steps, "world_size": self.world_size,
                    "token": token, "shards": names,
                    "optimizer": {"name": type(self.optimizer).__name__, "hyper": hyper}}
        path = os.path.join(directory, MANIFEST)

        def write_manifest():
            if self.rank == 0:
                _replace_manifest(path, manifest)

        self._everywhere("save: write the manifest", write_manifest)
        return path

    @classmethod
    def load(cls, directory, partition=None, group=None, timeout=None, n_threads=None):
        """Rebuild a table written by ``save`` on this group, whatever its size: each rank reads the saved
        shards that hold its rows (re-sharding). Collective.

        partition: None keeps the saved partition; ``"mod"`` or ``"range"`` re-shards into that one. The
        optimizer and its state (Adam's step count included) and ``steps`` are restored. Raises
        ``checkpoint.CheckpointError`` for a missing, damaged or foreign manifest or shard.
        """
        directory = os.fspath(directory)
        manifest = _read_manifest(os.path.join(directory, MANIFEST))
        if manifest["class"] != cls.__name__:
            raise checkpoint.CheckpointError(f"{directory}: holds a {manifest['class']}, not a {cls.__name__}")
        config = dict(manifest["config"])
        if partition is not None:
            config["partition"] = partition
        table = cls(**config, init="zeros", group=group, timeout=timeout, n_threads=n_threads)
        table._everywhere("load: read the shards", lambda: table._restore(directory, manifest))
        table.steps = int(manifest["steps"])
        return table

    def _restore(self, directory, manifest):
        saved = _Partition(manifest["config"]["partition"], self.num_rows, manifest["world_size"])
        mine = self.owned_rows()
        owner = saved.owner(mine)
        local = saved.to_local(mine, owner)
        order = np.argsort(owner, kind="stable")
        bounds = np.searchsorted(owner[order], np.arange(saved.world_size + 1))
        state = {}
        for rank in range(saved.world_size):
            take = order[bounds[rank]:bounds[rank + 1]]
            if take.size == 0:
                continue
            path = os.path.join(directory, manifest["shards"][rank])
            arrays, meta = checkpoint.load_arrays(path)
            if meta.get("token") != manifest["token"] or meta.get("rank") != rank:
                raise checkpoint.CheckpointError(f"{path}: is not shard {rank} of the checkpoint {MANIFEST} names")
            if arrays["embeddings"].shape != (saved.count(rank), self.dim):
                raise checkpoint.CheckpointError(f"{path}: holds {arrays['embeddings'].shape} rows, shard {rank} "
                                                 f"has {(saved.count(rank), self.dim)}")
            self.local.embeddings[take] = arrays["embeddings"][local[take]]
            for key, value in arrays.items():
                if key.startswith("state."):
                    target = state.setdefault(key[len("state."):],
                                              np.empty((mine.shape[0],) + value.shape[1:], value.dtype))
                    target[take] = value[local[take]]
        saved_optimizer = manifest["optimizer"]
        self.optimizer.load_state_dict({"optimizer": saved_optimizer["name"], **saved_optimizer["hyper"], **state})

    def __repr__(self):
        return (f"{type(self).__name__}(num_rows={self.num_rows}, dim={self.dim}, dtype={self.dtype.name}, "
                f"partition={self.partition!r}, rank {self.rank} of {self.world_size} owns "
                f"{self.local.input_dim} rows, optimizer={self.optimizer_name!r}, lr={self.optimizer.lr})")


class ShardedEmbeddingBag(ShardedEmbedding):
    """A sharded table that pools bags of ids on the requesting rank (``fastembed.embedding_bag``'s pooling).

    Rows travel as for ``ShardedEmbedding`` (each distinct id once); the requesting rank pools its bags from
    them and, in backward, reduces each bag's gradient to its distinct ids before sending it to the owners.
    mode: ``"mean"``, ``"sum"``, ``"sqrtn"`` or ``"max"``; include_last_offset: as for ``EmbeddingBag``. Other
    arguments as for ``ShardedEmbedding``. Calls: ``table(ids, offsets=None, per_sample_weights=None)`` →
    (B, dim); ``table.backward(ids, offsets, grad_out, per_sample_weights=None)``.
    """

    def __init__(self, num_rows, dim, mode="mean", include_last_offset=False, **kwargs):
        self.mode = check_mode(mode)
        self.include_last_offset = bool(include_last_offset)
        super().__init__(num_rows, dim, **kwargs)

    @property
    def _keeps_rows(self):
        return self.mode == "max"

    def _signature(self):
        return {**super()._signature(), "mode": ("sum", "mean", "sqrtn", "max").index(self.mode),
                "include_last_offset": self.include_last_offset}

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "include_last_offset": self.include_last_offset}

    def _prepare(self, ids, offsets=None, per_sample_weights=None):
        bags = prepare_bags(ids, offsets, per_sample_weights, self.mode, None, self.include_last_offset,
                            self.num_rows, self.dim, self.dtype.itemsize, self.n_threads)
        return bags.ids, bags

    def _checked_grad(self, bags, grad_out):
        grad = as_float(grad_out, "grad_out", dtype=self.dtype)
        if grad.shape != (bags.n_bags, self.dim):
            raise ValueError(f"grad_out must have shape (number of bags, dim) = {(bags.n_bags, self.dim)}, "
                             f"got {grad.shape}")
        return grad

    def _output(self, rows, route, bags):
        return embedding_bag(rows, route.slot, offsets=bags.offsets, mode=self.mode, per_sample_weights=bags.weights,
                             include_last_offset=True, n_threads=self.n_threads)

    def _distinct_grads(self, route, bags, grad):
        return embedding_bag_backward(route.slot, grad, offsets=bags.offsets, mode=self.mode,
                                      per_sample_weights=bags.weights, include_last_offset=True,
                                      num_rows=max(route.n_distinct, 1), table=route.rows,
                                      n_threads=self.n_threads).values

    def __call__(self, ids, offsets=None, per_sample_weights=None):
        """Pool each bag → (B, dim), the table's dtype. ids/offsets/per_sample_weights as for
        ``fastembed.embedding_bag``. Collective."""
        return self._call(*self._prepare(ids, offsets, per_sample_weights))

    def backward(self, ids, offsets, grad_out, per_sample_weights=None):
        """Send the gradient of a pooled call (``grad_out``: (B, dim)) to the rows' owners. Collective.
        Max mode takes each column's arg-max from the rows the forward call fetched (when it is the last
        forward's batch) or from the current table."""
        flat, bags = self._prepare(ids, offsets, per_sample_weights)
        self._backward(self._route_for(flat), bags, self._checked_grad(bags, grad_out))


def _shard_name(token, rank, world_size):
    return f"shard-{token:016x}-{rank:05d}-of-{world_size:05d}.npz"


def _read_manifest(path):
    try:
        with open(path, "rb") as handle:
            manifest = json.loads(handle.read().decode())
    except FileNotFoundError:
        raise checkpoint.CheckpointError(f"{path}: no manifest (was the table saved in this directory?)") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise checkpoint.CheckpointError(f"{path}: not a readable manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise checkpoint.CheckpointError(f"{path}: not a fastembed sharded-table manifest")
    if manifest.get("version") != _VERSION:
        raise checkpoint.CheckpointError(f"{path}: manifest version {manifest.get('version')!r}, this fastembed "
                                         f"reads version {_VERSION}")
    return manifest


def _replace_manifest(path, manifest):
    """Write ``manifest`` over ``path`` atomically, then remove the shards only the previous manifest named."""
    try:
        previous = _read_manifest(path)["shards"]
    except checkpoint.CheckpointError:
        previous = []
    encoded = json.dumps(manifest, indent=1).encode()
    checkpoint._write_atomically(path, lambda handle: handle.write(encoded))
    for name in set(previous) - set(manifest["shards"]):
        try:
            os.remove(os.path.join(os.path.dirname(path), name))
        except FileNotFoundError:
            pass


# --- the torch module -------------------------------------------------------------------------------------
_MODULE_CLASS = None


def __getattr__(name):
    # ShardedEmbeddingModule subclasses torch.nn.Module: it is built on first use, so that importing this
    # module does not import torch.
    if name == "ShardedEmbeddingModule":
        return _module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _as_numpy(value, name):
    """A CPU tensor's numpy view (a numpy array or None passes through)."""
    if value is None or isinstance(value, np.ndarray):
        return value
    if getattr(value, "device", None) is not None and value.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU (sharded tables live in host memory), got {value.device}")
    return value.detach().numpy() if hasattr(value, "detach") else np.asarray(value)


def _module_class():
    global _MODULE_CLASS
    if _MODULE_CLASS is not None:
        return _MODULE_CLASS
    torch = _torch()
    from torch.autograd.function import once_differentiable

    class ShardedLookup(torch.autograd.Function):
        """The table's forward as an autograd node whose backward sends the gradient to the owners."""

        @staticmethod
        def forward(ctx, anchor, table, flat, call):
            out, route = table._forward(flat, call)
            ctx.table, ctx.route, ctx.call = table, route, call
            return torch.from_numpy(out)

        @staticmethod
        @once_differentiable
        def backward(ctx, grad_out):
            table = ctx.table
            table._backward(ctx.route, ctx.call, table._checked_grad(ctx.call, grad_out.numpy()))
            return None, None, None, None

    class ShardedEmbeddingModule(torch.nn.Module):
        """A ``ShardedEmbedding`` (or ``ShardedEmbeddingBag``) as a ``torch.nn.Module``.

        ``module(ids)`` (bags: ``module(ids, offsets=None, per_sample_weights=None)``) takes CPU tensors or
        numpy arrays and returns a tensor whose gradient flows to the rest of the model; ``loss.backward()``
        sends the table's part to the owners (a collective: every rank must run it, through the module's
        output, each step), and ``module.step()`` applies the table's optimizer. The table is not a
        ``Parameter``: torch optimizers and ``DistributedDataParallel`` do not see it (wrap the dense part only),
        nor does ``state_dict``: checkpoint it with ``module.table.save``. per_sample_weights get no gradient.
        """

        def __init__(self, table):
            super().__init__()
            if not isinstance(table, ShardedEmbedding):
                raise TypeError(f"table must be a ShardedEmbedding or ShardedEmbeddingBag, got "
                                f"{type(table).__name__}")
            self.table = table
            # The gradient goes to the owners, not to a parameter; this empty leaf only makes autograd call
            # the lookup's backward.
            self._anchor = torch.zeros(0, requires_grad=True)

        def forward(self, ids, offsets=None, per_sample_weights=None):
            if per_sample_weights is not None and getattr(per_sample_weights, "requires_grad", False):
                raise ValueError("per_sample_weights get no gradient from a sharded table: pass them detached")
            arrays = [_as_numpy(ids, "ids"), _as_numpy(offsets, "offsets"),
                      _as_numpy(per_sample_weights, "per_sample_weights")]
            if isinstance(self.table, ShardedEmbeddingBag):
                flat, call = self.table._prepare(*arrays)
            elif offsets is not None or per_sample_weights is not None:
                raise TypeError("offsets and per_sample_weights apply to a ShardedEmbeddingBag only")
            else:
                flat, call = self.table._prepare(arrays[0])
            return ShardedLookup.apply(self._anchor, self.table, flat, call)

        def step(self):
            """The table's ``step()``: apply its optimizer to the gradients received."""
            self.table.step()

        def extra_repr(self):
            return repr(self.table)

    _MODULE_CLASS = ShardedEmbeddingModule
    return _MODULE_CLASS

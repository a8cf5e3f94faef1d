"""The benchmark workloads: deterministic (seeded) float32 tables, ids and output gradients.

Shared by the side-by-side runner (``python -m fastembed.bench``) and the pytest-benchmark suite in ``bench/``.

Ids are int64 and uniform over ``[0, V)`` unless a workload says otherwise. ``zipf`` ids are skewed: a draw
``k >= 1`` from ``numpy.random.Generator.zipf(1.1)`` becomes row ``perm[(k - 1) % V]``, where ``perm`` is a
fixed random permutation of the row ids. ``(k - 1) % V`` keeps the rank order (rank 1 is the hottest row)
and wraps the long tail around the table instead of clipping it onto row ``V - 1``; the permutation scatters
the hot rows over the table, as real vocabularies do, instead of packing them into its first cache lines.

Bag workloads (``kind="bags"``, for the bag and fused-step ops) hold ``n_bags`` bags of uniform ids, each of
``bag_lengths`` ids: ``(20, 20)`` fixed or ``(1, 39)`` uniform lengths (20 on average); their ``ids`` are flat
(N,), ``offsets`` (B + 1,) int64 and ``grad_out`` (B, D).
"""
import zlib
from dataclasses import dataclass

import numpy as np

ZIPF_A = 1.1
ID_DTYPE = np.int64
TABLE_DTYPE = np.float32


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    rows: int  # V
    dim: int  # D
    ids_shape: tuple  # N = prod(ids_shape)
    distribution: str  # "uniform" or "zipf"
    description: str
    large: bool = False  # shrunk by ``scale`` in quick runs and smoke tests
    default: bool = True  # part of a run that names no workloads
    kind: str = "lookup"  # "lookup" (ids of any shape) or "bags" (CSR bags, for the bag ops)
    n_bags: int = 0  # bags only: B (shrunk by ``scale`` with V)
    bag_lengths: tuple = ()  # bags only: (shortest, longest) bag, lengths uniform between them
    quick: bool = True  # part of a --quick run that names no workloads

    @property
    def n_ids(self):
        return int(np.prod(self.ids_shape))


WORKLOADS = {
    spec.name: spec
    for spec in (
        WorkloadSpec("rand", 1_000_000, 64, (262_144,), "uniform", "1M x 64 table, 262,144 uniform ids", True),
        WorkloadSpec("zipf", 1_000_000, 64, (262_144,), "zipf",
                     f"1M x 64 table, 262,144 Zipf(a={ZIPF_A}) ids", True),
        WorkloadSpec("imdb", 5_000, 32, (64, 500), "uniform", "5000 x 32 table, 64 x 500 ids (Keras IMDB example)"),
        WorkloadSpec("glove", 100_000, 300, (65_536,), "uniform", "100k x 300 table, 65,536 ids", True),
        WorkloadSpec("tiny", 13, 3, (64, 1_000), "uniform", "13 x 3 table, 64 x 1000 ids (the months example)"),
        WorkloadSpec("smalldim", 1_000_000, 16, (1_048_576,), "uniform", "1M x 16 table, 1,048,576 ids", True),
        # Opt-in (not in the table): per-call overhead, one id from a small table.
        WorkloadSpec("overhead", 1_000, 64, (1,), "uniform", "1000 x 64 table, 1 id (per-call overhead)",
                     default=False),
        # The bag ops' workloads: 16,384 bags of uniform ids, N = 327,680 ids (about 20 per bag).
        WorkloadSpec("bags20", 1_000_000, 64, (), "uniform", "1M x 64 table, 16,384 bags of 20 ids", True,
                     kind="bags", n_bags=16_384, bag_lengths=(20, 20)),
        # Left out of --quick runs, which the fixed-length bags already give the bag ops.
        WorkloadSpec("bags1_39", 1_000_000, 64, (), "uniform", "1M x 64 table, 16,384 bags of 1-39 ids", True,
                     kind="bags", n_bags=16_384, bag_lengths=(1, 39), quick=False),
    )
}

DEFAULT_WORKLOADS = [name for name, spec in WORKLOADS.items() if spec.default]
QUICK_WORKLOADS = [name for name in DEFAULT_WORKLOADS if WORKLOADS[name].quick]


def zipf_ids(rng, n, rows, a=ZIPF_A):
    """``n`` Zipf(a)-skewed ids in ``[0, rows)``: rank ``k`` maps to ``perm[(k - 1) % rows]`` (module doc)."""
    ranks = rng.zipf(a, size=n)
    perm = rng.permutation(rows)
    return perm[(ranks - 1) % rows].astype(ID_DTYPE, copy=False)


class Workload:
    """One workload's inputs. ``cache(key, make)`` keeps per-library conversions (torch tensors, jax arrays)
    so that the ops of one run share them; they go when the workload does."""

    def __init__(self, spec, scale=1.0):
        self.spec = spec
        self.name = spec.name
        self.scale = float(scale) if spec.large else 1.0
        self.rows = max(1, int(round(spec.rows * self.scale)))
        self.dim = spec.dim
        rng = np.random.default_rng(zlib.crc32(spec.name.encode()))
        self.offsets = None
        if spec.kind == "bags":
            n_bags = max(1, int(round(spec.n_bags * self.scale)))
            low, high = spec.bag_lengths
            lengths = rng.integers(low, high + 1, size=n_bags)
            self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            shape = [int(self.offsets[-1])]
        else:
            shape = list(spec.ids_shape)
            shape[0] = max(1, int(round(shape[0] * self.scale)))
        self.ids_shape = tuple(shape)
        # Table: uniform in [-0.05, 0.05), the Keras default initializer.
        self.table = rng.random((self.rows, self.dim), dtype=TABLE_DTYPE)
        self.table -= 0.5
        self.table *= 0.1
        n = int(np.prod(self.ids_shape))
        if spec.distribution == "zipf":
            flat = zipf_ids(rng, n, self.rows)
        else:
            flat = rng.integers(0, self.rows, size=n, dtype=ID_DTYPE)
        self.ids = flat.reshape(self.ids_shape)
        out_shape = (self.n_bags,) if self.offsets is not None else self.ids_shape
        self.grad_out = rng.standard_normal(out_shape + (self.dim,), dtype=TABLE_DTYPE)
        self._cache = {}

    @property
    def n_ids(self):
        return self.ids.size

    @property
    def n_bags(self):
        """B for a bag workload, 0 otherwise."""
        return 0 if self.offsets is None else self.offsets.shape[0] - 1

    @property
    def flat_ids(self):
        return self.ids.reshape(-1)

    @property
    def grad2d(self):
        return self.grad_out.reshape(-1, self.dim)

    @property
    def bytes(self):
        """Bytes an ideal kernel moves: read and write every row once, read every id: 2*N*D*itemsize + N*id_itemsize.

        Bags: every looked-up row read once, every bag written once, every id read:
        (N + B)*D*itemsize + N*id_itemsize."""
        rows_moved = self.n_ids + self.n_bags if self.offsets is not None else 2 * self.n_ids
        return rows_moved * self.dim * self.table.itemsize + self.n_ids * self.ids.itemsize

    def cache(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def describe(self):
        return {
            "rows": self.rows,
            "dim": self.dim,
            "ids_shape": list(self.ids_shape),
            "n_ids": self.n_ids,
            "distribution": self.spec.distribution,
            "zipf_a": ZIPF_A if self.spec.distribution == "zipf" else None,
            "table_dtype": str(self.table.dtype),
            "id_dtype": str(self.ids.dtype),
            "scale": self.scale,
            "bytes": self.bytes,
            "description": self.spec.description,
            **({"kind": "bags", "n_bags": self.n_bags, "bag_lengths": list(self.spec.bag_lengths)}
               if self.offsets is not None else {}),
        }


def build_workload(name, scale=1.0):
    """The inputs of workload ``name``; ``scale`` < 1 shrinks V and N of the large ones (quick runs)."""
    try:
        spec = WORKLOADS[name]
    except KeyError:
        raise KeyError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}") from None
    return Workload(spec, scale)

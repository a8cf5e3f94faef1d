"""Backward into a dense gradient: ``dense[ids] += grad_out`` in place, into an existing (V, D) buffer."""
import fastembed
from fastembed.bench import peers
from fastembed.bench.ops._common import ADD_AT_BUDGET_S, abs_sum, np_add_at, torch_inputs, zeroed
from fastembed.bench.registry import Case, Dense, Impl, Op, Sparse, check_gradient, register


def _fastembed(wl, n):
    dense = zeroed(wl)
    return Case(lambda: fastembed.scatter_add(dense, wl.ids, wl.grad_out, n_threads=n),
                result=lambda _: Dense(dense))


def _index_add(wl, n):
    torch = peers.torch()
    _, _, flat, _, grad2d = torch_inputs(wl)
    dense = zeroed(wl)
    dense_t = torch.from_numpy(dense)
    return Case(lambda: dense_t.index_add_(0, flat, grad2d), result=lambda _: Dense(dense))


def _check(expected, got, wl):
    sums = abs_sum(wl)
    return check_gradient(Sparse(sums.rows, expected.array[sums.rows]), sums, got)


register(Op(
    name="scatter_add",
    title="dense scatter_add",
    fastembed=Impl("fastembed", "fastembed", _fastembed,
                   note="fastembed.scatter_add(dense, ids, grad_out, n_threads=) into an existing buffer"),
    peers=(
        Impl("np.add.at", "numpy", np_add_at, short="np.add.at", budget_s=ADD_AT_BUDGET_S,
             note="into an existing buffer"),
        Impl("torch index_add_", "torch", _index_add, short="index_add_", note="into an existing buffer"),
    ),
    check=_check,
    order=2,
))

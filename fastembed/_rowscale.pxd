# Row norms and the max_norm rescaling rule, shared by every kernel that renormalises rows (lookup, bags).
#
# The rule is PyTorch's ``embedding_renorm_``: a row whose p-norm exceeds max_norm is multiplied by
# ``max_norm / (norm + 1e-7)``. The norm is accumulated in double whatever the row's type, in a fixed order
# (four interleaved partial sums), so that it is deterministic and the same wherever it is computed; the
# scale is computed in double and applied in the row's own type, as PyTorch multiplies a float tensor by a
# double scalar.
from libc.math cimport fabs, pow, sqrt

from fastembed._types cimport real_t

cdef enum:
    NORM_L1 = 1
    NORM_L2 = 2
    NORM_INF = 3
    NORM_P = 4


cdef inline int norm_kind(double p) noexcept nogil:
    """The specialised loop for ``p`` (validated by the caller: p > 0, not NaN)."""
    if p == 1.0:
        return NORM_L1
    if p == 2.0:
        return NORM_L2
    if p > 1e308:
        return NORM_INF
    return NORM_P


cdef inline double row_norm(const real_t *row, Py_ssize_t dim, int kind, double p) noexcept nogil:
    """The p-norm of ``row[:dim]`` in double: L1, L2, max-abs (inf) or (sum |x|**p)**(1/p)."""
    cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0, x
    cdef Py_ssize_t j = 0, tail = dim - dim % 4
    if kind == NORM_INF:
        for j in range(dim):
            x = fabs(<double>row[j])
            if x > s0 or x != x:     # a NaN entry makes the norm NaN, as in PyTorch
                s0 = x
        return s0
    if kind == NORM_L2:
        while j < tail:
            s0 += <double>row[j] * <double>row[j]
            s1 += <double>row[j + 1] * <double>row[j + 1]
            s2 += <double>row[j + 2] * <double>row[j + 2]
            s3 += <double>row[j + 3] * <double>row[j + 3]
            j += 4
        while j < dim:
            s0 += <double>row[j] * <double>row[j]
            j += 1
        return sqrt((s0 + s1) + (s2 + s3))
    if kind == NORM_L1:
        while j < tail:
            s0 += fabs(<double>row[j])
            s1 += fabs(<double>row[j + 1])
            s2 += fabs(<double>row[j + 2])
            s3 += fabs(<double>row[j + 3])
            j += 4
        while j < dim:
            s0 += fabs(<double>row[j])
            j += 1
        return (s0 + s1) + (s2 + s3)
    for j in range(dim):
        s0 += pow(fabs(<double>row[j]), p)
    return pow(s0, 1.0 / p)


cdef inline double renorm_scale(double norm, double max_norm) noexcept nogil:
    """The factor a row of this norm is multiplied by: 1 when it is within max_norm."""
    if norm > max_norm:
        return max_norm / (norm + 1e-7)
    return 1.0


cdef inline void scale_row(real_t *row, Py_ssize_t dim, double scale) noexcept nogil:
    cdef real_t factor = <real_t>scale
    cdef Py_ssize_t j
    for j in range(dim):
        row[j] = row[j] * factor

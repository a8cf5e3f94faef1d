# Fused types shared by every kernel: tables and gradients are float32 or float64, ids int32 or int64.
from libc.stdint cimport int32_t, int64_t

ctypedef fused real_t:
    float
    double

ctypedef fused index_t:
    int32_t
    int64_t

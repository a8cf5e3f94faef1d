import numpy as np
import pytest

FLOAT_DTYPES = [np.float32, np.float64]
INDEX_DTYPES = [np.int32, np.int64]
THREADS = [1, 2, 4]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

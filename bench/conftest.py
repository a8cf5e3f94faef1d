"""Options of the pytest-benchmark suite (``pytest bench/ --benchmark-only``)."""


def pytest_addoption(parser):
    group = parser.getgroup("fastembed-bench")
    group.addoption("--bench-workloads", default=None,
                    help="comma-separated workloads (default: every workload of the issue's table)")
    group.addoption("--bench-scale", type=float, default=1.0,
                    help="multiply V and N of the large workloads (rand, zipf, glove, smalldim), e.g. 0.0625 "
                         "for a smoke run")

"""Op families for the benchmark runner: every module here registers its ops at import (``registry.register``).

To add a family, add a module that builds ``Op``/``Impl`` objects and calls ``register``; the runner, the
report and the pytest-benchmark suite pick it up by name (``--ops NAME``).
"""

"""Build script: Cython kernels with OpenMP, and a serial fallback where the compiler has none.

Environment switches:
  FASTEMBED_REQUIRE_OPENMP=1  fail instead of building serial kernels when OpenMP is missing (CI sets it)
  FASTEMBED_NATIVE=1          add -march=native (faster on the build machine, not portable)
  FASTEMBED_DEBUG_CYTHON=1    bounds and initialisation checks in the kernels, -O1 -g
  FASTEMBED_SANITIZE=1        build with AddressSanitizer and UndefinedBehaviorSanitizer
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return n > 0 ? 0 : 1;
    }
    """
)


def _flag(name):
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false", "no")


def _openmp_flags():
    """Return (compile_args, link_args) that make OpenMP work, or None when this compiler has none."""
    if sys.platform == "win32":
        return ["/openmp"], []
    if sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"]), (["-fopenmp"], ["-fopenmp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    compiler = compiler.split()
    if shutil.which(compiler[0]) is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "probe.c")
        with open(source, "w") as handle:
            handle.write(OPENMP_PROBE)
        for compile_args, link_args in candidates:
            binary = os.path.join(tmp, "probe")
            result = subprocess.run(
                compiler + compile_args + [source, "-o", binary] + link_args,
                capture_output=True,
            )
            if result.returncode == 0 and subprocess.run([binary]).returncode == 0:
                return compile_args, link_args
    return None


def _build_flags():
    compile_args, link_args = [], []
    if sys.platform != "win32":
        debug = _flag("FASTEMBED_DEBUG_CYTHON")
        compile_args += ["-O1", "-g"] if debug else ["-O3"]
        compile_args += ["-Wno-unused-function", "-Wno-unreachable-code"]
        # No kernel reads errno: without this flag a sqrt in a loop (the optimizers) cannot be vectorized.
        compile_args.append("-fno-math-errno")
        if _flag("FASTEMBED_NATIVE"):
            compile_args.append("-march=native")
        if _flag("FASTEMBED_SANITIZE"):
            sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
            compile_args += sanitize + ["-O1", "-g"]
            link_args += sanitize
    openmp = _openmp_flags()
    if openmp is None:
        if _flag("FASTEMBED_REQUIRE_OPENMP"):
            raise SystemExit("fastembed: OpenMP is required (FASTEMBED_REQUIRE_OPENMP=1) but the compiler has none")
        print("fastembed: WARNING: no OpenMP in this compiler; building single-threaded kernels", file=sys.stderr)
    else:
        compile_args += openmp[0]
        link_args += openmp[1]
    return compile_args, link_args


def _extensions():
    compile_args, link_args = _build_flags()
    sources = sorted(glob.glob(os.path.join("fastembed", "_*.pyx")))
    return [
        Extension(
            "fastembed." + os.path.splitext(os.path.basename(path))[0],
            [path],
            include_dirs=[np.get_include(), "fastembed"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
        for path in sources
    ]


debug_checks = _flag("FASTEMBED_DEBUG_CYTHON")
# Translate and compile the kernel modules on every core: a serial build of them takes minutes.
build_jobs = os.cpu_count() or 1
setup(
    options={"build_ext": {"parallel": build_jobs}},
    ext_modules=cythonize(
        _extensions(),
        nthreads=build_jobs if sys.platform.startswith("linux") else 0,
        compiler_directives={
            "language_level": 3,
            "boundscheck": debug_checks,
            "initializedcheck": debug_checks,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
)

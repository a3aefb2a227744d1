"""Builds spark_nn._kernels: every csrc/*.c plus the Cython wrapper, -O3 with OpenMP.

Portable by default (the wheel runs on any x86-64: executors are not the build box);
SPARK_NN_NATIVE=1 adds -march=native for a local build. SPARK_NN_SANITIZE=1 builds with
AddressSanitizer and UBSan for the kernel tests.
"""
import glob
import os
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Python's own CFLAGS carry -fwrapv, which keeps gcc from vectorizing loops over g[H + j];
# no-trapping-math lets it turn the branch-free selects of the activation code into vector
# blends. The kernels rely on neither signed wrap-around nor floating-point exceptions.
compile_args = ["-O3", "-std=c99", "-fopenmp", "-fno-wrapv", "-fno-math-errno", "-fno-trapping-math"]
link_args = ["-fopenmp"]
if os.environ.get("SPARK_NN_NATIVE") == "1":
    compile_args.append("-march=native")
if os.environ.get("SPARK_NN_SANITIZE") == "1":
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    compile_args = [a for a in compile_args if a != "-O3"] + ["-O1", "-g"] + san
    link_args += san

ext = Extension(
    "spark_nn._kernels",
    sources=["spark_nn/_kernels.pyx"] + sorted(glob.glob("csrc/*.c")),
    # every object is rebuilt when a header changes (setuptools compares each object with its
    # source and these; it cannot tell which .c includes which header)
    depends=sorted(glob.glob("csrc/*.h")),
    include_dirs=["csrc", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)


class ParallelBuildExt(build_ext):
    """Compiles the extension's sources side by side, one compiler process per core (at most
    SPARK_NN_BUILD_JOBS where set): setuptools compiles one extension's sources one after
    another, and ours are ~20 files (67 s in a row on 2 cores, gemm_packed.c 14 s of it). The
    largest files start first; the first file that fails ends the build."""

    def build_extension(self, ext):
        serial = self.compiler.compile
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        jobs = int(os.environ.get("SPARK_NN_BUILD_JOBS", cores))

        def compile_side_by_side(sources, *args, **kwargs):
            if min(jobs, len(sources)) < 2:
                return serial(sources, *args, **kwargs)
            order = sorted(range(len(sources)), key=lambda i: -os.path.getsize(sources[i]))
            pool = ThreadPoolExecutor(min(jobs, len(sources)))
            try:
                futures = {pool.submit(serial, [sources[i]], *args, **kwargs): i for i in order}
                for done in as_completed(futures):
                    done.result()  # raises the first failure
                objects = {futures[f]: f.result() for f in futures}
            finally:
                pool.shutdown(cancel_futures=True)
            return [obj for i in range(len(sources)) for obj in objects[i]]

        self.compiler.compile = compile_side_by_side
        try:
            super().build_extension(ext)
        finally:
            self.compiler.compile = serial


setup(ext_modules=cythonize([ext], compiler_directives={"language_level": "3"}),
      cmdclass={"build_ext": ParallelBuildExt})

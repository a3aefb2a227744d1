"""Builds spark_nn._kernels: every csrc/*.c plus the Cython wrapper, -O3 with OpenMP.

Portable by default (the wheel runs on any x86-64: executors are not the build box);
SPARK_NN_NATIVE=1 adds -march=native for a local build. SPARK_NN_SANITIZE=1 builds with
AddressSanitizer and UBSan for the kernel tests.
"""
import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

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

setup(ext_modules=cythonize([ext], compiler_directives={"language_level": "3"}))

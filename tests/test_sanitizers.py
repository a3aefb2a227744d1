"""The kernels under AddressSanitizer and UBSan: build the extension with SPARK_NN_SANITIZE=1
into a temporary copy of the package and run every kernel test against it, in a subprocess
with the sanitizer runtimes preloaded. Any report aborts that process, so success means zero
reports (leak checking is off: CPython itself does not free everything at exit)."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _runtime(name):
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.timeout(600)  # a build and every kernel test under the sanitizers: about 1 minute here
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_kernel_tests_pass_under_asan_and_ubsan(tmp_path):
    asan, ubsan = _runtime("libasan.so"), _runtime("libubsan.so")
    if not (asan and ubsan):
        pytest.skip("gcc has no libasan/libubsan runtime here")
    env = dict(os.environ, SPARK_NN_SANITIZE="1")
    build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-temp", str(tmp_path / "build"),
                            "--build-lib", str(tmp_path / "lib")], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    pkg = tmp_path / "pkg"
    shutil.copytree(os.path.join(ROOT, "spark_nn"), pkg / "spark_nn",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    for so in (tmp_path / "lib" / "spark_nn").glob("_kernels*.so"):
        shutil.copy(so, pkg / "spark_nn")
    tests = sorted(os.path.join(ROOT, "tests", f) for f in os.listdir(os.path.join(ROOT, "tests"))
                   if f.startswith("test_kernels_"))
    env = dict(os.environ, PYTHONPATH=str(pkg), LD_PRELOAD=f"{asan} {ubsan}",
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1", UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    check = subprocess.run([sys.executable, "-c", "import spark_nn._kernels as k; print(k.__file__)"], env=env,
                           capture_output=True, text=True, cwd=str(tmp_path))
    assert check.stdout.strip().startswith(str(pkg)), check.stdout + check.stderr  # the sanitized build runs
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
                          str(tmp_path), *tests], env=env, capture_output=True, text=True, cwd=str(tmp_path),
                         timeout=900)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-5000:]
    assert "AddressSanitizer" not in out and "runtime error" not in out

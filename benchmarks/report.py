"""One-run benchmark report: kernels vs PyTorch, the CNN vs MLlib (and the in-process epoch vs
PyTorch), the Spark step overhead, the scaling measurement, the step cost vs data size and the
comparison with TorchDistributor, the seed's RNN program on a real text set, written to benchmarks/RESULTS.md with the machine, the
versions and the date.

    python benchmarks/report.py [--out benchmarks/RESULTS.md]
"""
import argparse
import datetime
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PARTS = [
    ("Kernels and the in-process digits epoch vs PyTorch CPU (2 threads each)", "compare_torch.py", ["--runs", "5"]),
    ("CNN vs MLlib on Spark local[2], and the per-step overhead", "compare_mllib.py", []),
    ("Step time vs parameters and workers (docs/scaling.md)", "scaling.py", []),
    ("Where a Spark step's time goes, a local round by part; step time vs data size", "step_cost.py", []),
    ("A round's parts vs the number of executors (standalone cluster, oversubscribed)", "executors.py", []),
    ("Ours vs the limit (our kernels in one process), TorchDistributor, torch and MLlib (digits; 60k "
     "MNIST-sized images; text)", "compare_peers.py", []),
    ("The seed's RNN program on a real text set (Rotten Tomatoes snippets)", "text_rnn.py", []),
    ("Classic sessions vs Spark Connect (the same fits, one run)", "connect_vs_classic.py", []),
    ("Data larger than memory: 60k and 1M rows, Python workers capped", "large_data.py", []),
]


def versions():
    import numpy
    import pyspark
    import scipy

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}",
            "python": platform.python_version(), "numpy": numpy.__version__, "scipy": scipy.__version__,
            "pyspark": pyspark.__version__, "torch": torch_version, "java": java[0] if java else "not found"}


def run(script, args):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.join(HERE, script)] + args, capture_output=True, text=True,
                          env=dict(os.environ, PYSPARK_PYTHON=sys.executable))
    keep = [line for line in proc.stdout.splitlines() if not line.startswith(("spark_nn CNNClassifier.fit:", "\r"))]
    if proc.returncode:
        keep += ["", f"FAILED (exit {proc.returncode}):"] + proc.stderr.splitlines()[-30:]
    return "\n".join(keep).strip(), time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args(argv)
    info = versions()
    lines = ["# spark_nn benchmark results", "", "Written by `python benchmarks/report.py` in one run.", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()] + [""]
    for title, script, extra in PARTS:
        print(f"running {script} ...", flush=True)
        text, seconds = run(script, extra)
        print(text, flush=True)
        lines += [f"## {title}", "", f"`python benchmarks/{script}` ({seconds:.0f} s)", "", "```", text, "```", ""]
    with open(args.out + ".tmp", "w") as f:
        f.write("\n".join(lines))
    os.replace(args.out + ".tmp", args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

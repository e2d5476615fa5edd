"""Helpers for the Python-driven tests: run attnreg under mpirun, load its outputs."""
import json
import os
import subprocess
import numpy as np

ATTNREG = os.environ.get("ATTNREG", "build/attnreg")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OPENBLAS_NUM_THREADS="1", OMPI_MCA_rmaps_base_oversubscribe="1")


def run(np_, *args, check=True, timeout=300):
    """Run attnreg on np_ ranks; returns CompletedProcess (text)."""
    cmd = ["mpirun", "--oversubscribe", "-n", str(np_), ATTNREG] + [str(a) for a in args]
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s\n%s" % (" ".join(cmd), p.returncode, p.stdout, p.stderr))
    return p


def history(path):
    """history.csv as a dict of numpy columns (hessian and step are strings)."""
    data = np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="utf-8")
    return {k: np.atleast_1d(data[k]) for k in data.dtype.names}


def summary(path):
    with open(path) as f:
        return json.load(f)


def tree_bytes(path):
    """{relative path: bytes} of every file below path."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out

"""Helpers for the Python-driven tests: run attnreg under mpirun, load its outputs."""
import json
import os
import subprocess
import numpy as np

ATTNREG = os.environ.get("ATTNREG", "build/attnreg")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OPENBLAS_NUM_THREADS="1", OMPI_MCA_rmaps_base_oversubscribe="1")


def run(np_, *args, check=True, timeout=300, fault=None, env=None, cwd=None):
    """Run attnreg on np_ ranks; returns CompletedProcess (text).  fault: ATTNREG_FAULT (src/sys/fault.h);
    env: extra environment variables.  timeout only detects a hang: it is far above any run's time.
    np_ = 0: one rank without mpirun (a singleton MPI process, as a user may start it); Open MPI's
    mpirun adds about 2 s to every run that exits with a non-zero status."""
    launch = ["mpirun", "--oversubscribe", "-n", str(np_)] if np_ else []
    cmd = launch + [ATTNREG] + [str(a) for a in args]
    e = dict(ENV, **(env or {}))
    if fault:
        e["ATTNREG_FAULT"] = fault
    p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=timeout, cwd=cwd)
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


def state(path, dir_times=True):
    """What a reader can observe below path (path itself included): for every entry its type, mode,
    inode, size, modification time and contents (or link target).  dir_times=False leaves out the
    directories' own modification times (changed by adding and removing an entry)."""
    out = {}

    def entry(full):
        st = os.lstat(full)
        rel = os.path.relpath(full, path)
        if os.path.islink(full):
            body = "-> " + os.readlink(full)
        elif os.path.isdir(full):
            body = "dir"
        else:
            with open(full, "rb") as f:
                body = f.read()
        mtime = st.st_mtime_ns if dir_times or not os.path.isdir(full) or os.path.islink(full) else None
        out[rel] = (st.st_mode, st.st_ino, st.st_size, mtime, body)

    entry(path)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            entry(os.path.join(root, name))
    return out


def rank_pids(mpirun_pid):
    """The processes mpirun started (its children), without matching command lines."""
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    stat = f.read()
            except OSError:
                continue
            # field 4 (ppid) follows the command name in parentheses, which may contain spaces
            if int(stat[stat.rindex(")") + 2:].split()[1]) == mpirun_pid:
                kids.append(int(d))
    return sorted(kids)


def planted(tmp, name, **kw):
    """A planted problem from attnreg generate in tmp/name (made once): keyword arguments are
    generate's options (x_scale=0.5 is --x-scale 0.5; causal=True is the flag --causal)."""
    d = os.path.join(tmp, name)
    if not os.path.exists(d):
        args = ["generate", "--out", d, "--quiet"]
        for k, v in kw.items():
            args += ["--" + k.replace("_", "-")] + ([] if v is True else [v])
        run(2, *args)
    return d


def masked_model(A1, A2, A3, X, Y, segments=None, causal=False):
    """attnreg's model under issue 19's masks, computed the plain way (an oracle for the packed
    and causal paths): the whole n x n logit matrix with -inf where row i may not see key k (k in
    another segment of the offsets `segments`; with causal also k > i), one softmax over the rows.
    Returns (P, O): the n x n attention map (zero across segments) and O = P A3 Y."""
    n = A1.shape[0]
    o = np.array([0, n]) if segments is None else np.asarray(segments)
    seg = np.repeat(np.arange(len(o) - 1), np.diff(o))
    allowed = seg[:, None] == seg[None, :]
    if causal:
        allowed &= np.arange(n)[None, :] <= np.arange(n)[:, None]
    S = np.where(allowed, A1 @ X @ A2.T, -np.inf)
    P = np.exp(S - S.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    return P, P @ A3 @ Y

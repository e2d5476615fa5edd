"""Reliability: the bad-input catalogue, checkpoint/restart on signals, rank failure, numerical faults."""
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from arutil import ATTNREG, ENV, rank_pids, run, state, summary  # noqa: E402

# a checkpoint of format version 3 (attnreg before the one checkpoint module)
OLD_CKPT = os.path.join(os.path.dirname(__file__), "fuzz", "corpus_checkpoint", "v3_solve_iter2.ckpt")
TMP = tempfile.mkdtemp(prefix="attnreg-rel-")
REF = os.path.join(os.path.dirname(__file__), "data", "reference")


def npy_raw(path, header, payload=b""):
    """Write an npy v1.0 file with a hand-made header dict."""
    h = header.encode()
    pad = (64 - (10 + len(h) + 1) % 64) % 64
    h = h + b" " * pad + b"\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h + payload)


def write_text(path, text):
    with open(path, "w") as f:
        f.write(text)


def make_bad_inputs():
    """A directory per bad case: (name, args, exit code, message substring)."""
    good = os.path.join(REF, "tiny")
    bad = os.path.join(TMP, "bad")
    os.makedirs(bad, exist_ok=True)

    def variant(name, file, writer):
        d = os.path.join(bad, name)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(good, d)
        for f in os.listdir(d):
            os.chmod(os.path.join(d, f), 0o644)
        writer(os.path.join(d, file))
        return d

    A1 = np.load(good + "/A1.npy")
    cases = []
    c = lambda name, args, code, msg: cases.append((name, args, code, msg))  # noqa: E731
    d = variant("missing", "A2.npy", os.remove)
    c("missing file", ["--data", d], 4, "A2.npy: cannot open")
    d = variant("isdir", "A2.npy", lambda p: (os.remove(p), os.mkdir(p)))
    c("directory instead of file", ["--data", d], 4, "A2.npy: is a directory")
    d = variant("empty", "B.npy", lambda p: write_text(p, ""))
    c("empty file", ["--data", d], 3, "B.npy: empty")
    d = variant("notnpy", "A1.npy", lambda p: write_text(p, "hello, world\n" * 10))
    c("not an npy file", ["--data", d], 3, "A1.npy: not an npy file")
    d = variant("trunc", "A3.npy", lambda p: os.truncate(p, os.path.getsize(p) - 8))
    c("truncated data", ["--data", d], 3, "A3.npy: truncated")
    d = variant("bigshape", "A1.npy", lambda p: npy_raw(p, "{'descr': '<f8', 'fortran_order': False, 'shape': (500, 2), }",
                                                       A1.tobytes()))
    c("header shape larger than data", ["--data", d], 3, "A1.npy: truncated")
    d = variant("int", "A1.npy", lambda p: np.save(p, np.ones((5, 2), dtype=np.int64)))
    c("int dtype", ["--data", d], 3, "A1.npy: dtype")
    d = variant("complex", "A2.npy", lambda p: np.save(p, np.ones((5, 2), dtype=np.complex128)))
    c("complex dtype", ["--data", d], 3, "A2.npy: dtype")
    d = variant("bigend", "A3.npy", lambda p: np.save(p, np.ones((5, 2), dtype=">f8")))
    c("big-endian", ["--data", d], 3, "big-endian")
    d = variant("object", "B.npy", lambda p: np.save(p, np.array([[1, "a"]] * 5, dtype=object), allow_pickle=True))
    c("object dtype", ["--data", d], 3, "B.npy: dtype")
    d = variant("rows", "B.npy", lambda p: np.save(p, np.ones((4, 2))))
    c("B rows != n", ["--data", d], 3, "B.npy: has 4 rows")
    d = variant("rows2", "A2.npy", lambda p: np.save(p, np.ones((6, 2))))
    c("A1/A2 row counts disagree", ["--data", d], 3, "A2.npy: has 6 rows")
    d = variant("width", "A3.npy", lambda p: np.save(p, np.ones((5, 3))))
    c("A widths disagree", ["--data", d], 3, "A3.npy: has 3 columns")
    d = variant("nan", "A2.npy", lambda p: np.save(p, np.where(np.arange(10).reshape(5, 2) == 7, np.nan, 1.0)))
    c("NaN in A2", ["--data", d], 3, "A2.npy: non-finite value (nan) at row 3, column 1")
    d = variant("inf", "B.npy", lambda p: np.save(p, np.where(np.arange(10).reshape(5, 2) == 9, np.inf, 1.0)))
    c("Inf in B", ["--data", d], 3, "B.npy: non-finite value (inf) at row 4, column 1")
    d = variant("n0", "A1.npy", lambda p: np.save(p, np.ones((0, 2))))
    c("n = 0", ["--data", d], 3, "no rows")
    d = variant("d0", "A1.npy", lambda p: np.save(p, np.ones((5, 0))))
    c("d = 0", ["--data", d], 3, "no columns")
    d = variant("m0", "B.npy", lambda p: np.save(p, np.ones((5, 0))))
    c("m = 0", ["--data", d], 3, "no columns")
    np.save(os.path.join(bad, "X3.npy"), np.ones((3, 3)))
    np.save(os.path.join(bad, "Y3.npy"), np.ones((2, 3)))
    np.save(os.path.join(bad, "Xnan.npy"), np.array([[1.0, np.nan], [0, 1]]))
    c("X0 not d x d", ["--data", good, "--x0", bad + "/X3.npy"], 3, "--x0")
    c("Y0 not d x m", ["--data", good, "--y0", bad + "/Y3.npy"], 3, "--y0")
    c("NaN in X0", ["--data", good, "--x0", bad + "/Xnan.npy"], 3, "Xnan.npy: non-finite value (nan)")
    c("--grid mismatch", ["--data", good, "--grid", "5x5"], 2, "--grid 5x5 needs 25 ranks")
    c("--grid malformed", ["--data", good, "--grid", "2by2"], 2, "--grid: expected PRxPC")
    c("--nb zero", ["--data", good, "--nb", "0"], 2, "--nb: must be >= 1")
    c("--nb negative", ["--data", good, "--nb", "-4"], 2, "--nb: must be >= 1")
    c("--tile zero", ["--data", good, "--tile", "0"], 2, "--tile: must be >= 1")
    c("--tile-mem negative", ["--data", good, "--tile-mem", "-1"], 2, "--tile-mem: must be > 0")
    c("--gttol negative", ["--data", good, "--gttol", "-1e-3"], 2, "--gttol: must be >= 0")
    c("--steptol not a number", ["--data", good, "--steptol", "abc"], 2, "--steptol: expected a finite number")
    c("--max-iter zero", ["--data", good, "--max-iter", "0"], 2, "--max-iter: must be >= 1")
    c("--max-iter negative", ["--data", good, "--max-iter", "-5"], 2, "--max-iter: must be >= 1")
    c("--chord-steps negative", ["--data", good, "--chord-steps", "-1"], 2, "--chord-steps: must be >= 0")
    c("--chord-steps huge", ["--data", good, "--chord-steps", "5000"], 2, "--chord-steps 5000: at most 1000")
    c("--hessian unknown", ["--data", good, "--hessian", "newton"], 2, "--hessian")
    c("unknown option", ["--data", good, "--frobnicate"], 2, "unknown option '--frobnicate'")
    c("missing value", ["--out", os.path.join(bad, "unused"), "--data"], 2, "--data needs a value")
    c("unknown method", ["--data", good, "--method", "sgd"], 2, "--method: 'sgd' is not one of")
    c("no data", [], 2, "no input data")
    c("missing data dir", ["--data", bad + "/nowhere"], 3, "no such directory")
    c("--out is a file", ["--data", good, "--out", good + "/X.npy"], 4, "exists and is not a directory")
    c("--out unwritable", ["--data", good, "--out", good + "/X.npy/new"], 4, "cannot create")
    return cases


class BadInput(unittest.TestCase):
    """Each case: one error line naming the file/option, documented exit code, every rank gone (the
    timeout only detects a hang), and an existing OUT (with an earlier result) unchanged.  These
    cases fail before OUT is touched; tests/test_output.py covers the failures after it."""

    def test_catalogue(self):
        cases = make_bad_inputs()
        self.assertGreaterEqual(len(cases), 25)
        out = os.path.join(TMP, "kept")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "summary.json"), "w") as f:
            f.write('{"earlier": "result"}\n')
        before = state(out)
        for name, args, code, msg in cases:
            for np_ in (0, 3):  # 0: one rank, without mpirun (arutil.run)
                with self.subTest(case=name, ranks=np_):
                    full = ["solve"] + args
                    if "--out" not in args:
                        full += ["--out", out]
                    p = run(np_, *full, check=False, timeout=HANG)
                    self.assertEqual(p.returncode, code, p.stderr[-600:])
                    errs = [l for l in p.stderr.splitlines() if l.startswith("attnreg: error:")]
                    self.assertEqual(len(errs), 1, p.stderr[-600:])
                    self.assertIn(msg, errs[0])
                    self.assertEqual(state(out), before)


def solve_cmd(np_, data, *extra):
    return ["mpirun", "--oversubscribe", "-n", str(np_), ATTNREG, "solve", "--data", data, "--x0",
            data + "/X0.npy", *extra]


# Runs that only a signal (or a rank's death) can end: no convergence test can fire, and the
# iteration limit is far beyond what the signal needs, even on a machine many times slower.
ENDLESS = ["--gttol", "0", "--steptol", "0", "--floor-iters", "0", "--max-iter", "100000"]
HANG = 600  # seconds: a hang detector, not a speed requirement


def signal_at(cmd, iteration, send):
    """Run cmd; once the progress line of `iteration` appears, call send(popen); returns
    (exit status, stdout, stderr)."""
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sent, lines = False, []
    for line in p.stdout:
        lines.append(line)
        parts = line.split()
        if not sent and parts and parts[0].isdigit() and int(parts[0]) >= iteration:
            send(p)
            sent = True
    err = p.stderr.read()
    return p.wait(timeout=HANG), "".join(lines), err


def to_each_rank(sig):
    """What srun does: every rank gets the signal itself."""
    def send(p):
        pids = rank_pids(p.pid)
        assert pids, "no rank processes under mpirun %d" % p.pid
        for pid in pids:
            os.kill(pid, sig)
    return send


def restart_iteration(stdout):
    return int(re.search(r"restarting from .* at iteration (\d+)", stdout).group(1))


def hist_rows(path):
    with open(path) as f:
        return [r[:7] + r[8:] for r in csv.reader(f)]  # everything but the seconds column


class Checkpoint(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = os.path.join(TMP, "ck-data")
        # noisy B: --hessian auto goes from Gauss-Newton to exact, with Newton and chord steps
        run(2, "generate", "--n", 1536, "--d", 12, "--m", 6, "--seed", 21, "--x-scale", 0.7, "--start-noise", 0.5,
            "--noise", 0.003, "--out", cls.data, "--quiet")
        cls.full = os.path.join(TMP, "ck-full")
        subprocess.run(solve_cmd(2, cls.data, "--out", cls.full, "--quiet"), env=ENV, check=True)
        cls.full_X = np.load(cls.full + "/X.npy")
        cls.full_Y = np.load(cls.full + "/Y.npy")
        cls.full_s = summary(cls.full + "/summary.json")

    def check_same(self, out, tol, full=None):
        full = full or self.full
        fs = summary(full + "/summary.json")
        s = summary(out + "/summary.json")
        self.assertEqual(s["iterations"], fs["iterations"])
        self.assertEqual(s["reason"], fs["reason"])
        self.assertLessEqual(np.abs(np.load(out + "/X.npy") - np.load(full + "/X.npy")).max(), tol)
        self.assertLessEqual(np.abs(np.load(out + "/Y.npy") - np.load(full + "/Y.npy")).max(), tol)
        if tol <= 1e-12:
            self.assertEqual(hist_rows(out + "/history.csv"), hist_rows(full + "/history.csv"))
        return s

    def test_signal_and_restart(self):
        """SIGUSR1 at the boundary of iteration k (raised by the solver's test hook, so the run
        cannot converge first), on every rank, on one rank only, or while the job starts; the
        restart, on the same or another rank count, grid and block size, ends as the uninterrupted
        run did."""
        self.assertGreaterEqual(self.full_s["iterations"], 6)
        for fault, k, np_restart, tol, extra in (
                ("signal:2", 2, 2, 1e-12, []),
                ("signal:5", 5, 2, 1e-12, []),
                ("signal:3:1", 3, 2, 1e-12, []),  # rank 1 only: every rank stops and checkpoints
                ("signal-startup:1", 0, 2, 1e-12, []),  # before iteration 0 was computed
                ("signal:3", 3, 3, 1e-8, []),
                ("signal:4", 4, 1, 1e-8, []),
                ("signal:2", 2, 4, 1e-8, ["--grid", "4x1", "--nb", "5"])):
            with self.subTest(fault=fault, restart_ranks=np_restart, extra=extra):
                ck = os.path.join(TMP, "ck-%s-%d.bin" % (fault.replace(":", "_"), np_restart))
                out = os.path.join(TMP, "ck-out-%s-%d" % (fault.replace(":", "_"), np_restart))
                p = run(2, "solve", "--data", self.data, "--x0", self.data + "/X0.npy", "--checkpoint", ck,
                        "--out", out, "--quiet", check=False, fault=fault, timeout=HANG)
                self.assertEqual(p.returncode, 75, p.stderr)
                self.assertIn("attnreg: interrupted: stopped by signal 10 after iteration %d; checkpoint written"
                              % k, p.stderr)
                self.assertFalse(os.path.exists(out))  # no partial result
                r = run(np_restart, "solve", "--data", self.data, "--restart", ck, "--checkpoint", ck, "--out", out,
                        *extra, timeout=HANG)
                self.assertEqual(restart_iteration(r.stdout), k)
                s = self.check_same(out, tol)
                if extra:  # the options took effect on the restart
                    self.assertEqual((s["ranks"], s["grid"], s["nb"]), (4, "4x1", 5))

    def test_sigusr1_to_mpirun(self):
        """Under mpirun the signal goes to mpirun, which forwards it; the run stops after the
        iteration in progress and its restart continues it exactly."""
        ck = os.path.join(TMP, "ck-mpirun.bin")
        rc, _, err = signal_at(solve_cmd(2, self.data, "--checkpoint", ck, *ENDLESS), 2,
                               lambda p: p.send_signal(signal.SIGUSR1))
        self.assertEqual(rc, 75, err)
        self.assertIn("stopped by signal 10", err)
        out = os.path.join(TMP, "ck-mpirun-out")
        r = run(2, "solve", "--data", self.data, "--restart", ck, *ENDLESS[:4], "--max-iter", 8, "--out", out,
                timeout=HANG)
        j = restart_iteration(r.stdout)
        self.assertGreaterEqual(j, 2)
        ref = os.path.join(TMP, "ck-mpirun-ref")
        run(2, "solve", "--data", self.data, "--x0", self.data + "/X0.npy", *ENDLESS[:4], "--max-iter", max(8, j),
            "--out", ref, "--quiet", timeout=HANG)
        self.check_same(out, 1e-12, full=ref)

    def test_restart_from_every_iteration(self):
        """A checkpoint after each iteration k (newton or chord state, gn or exact) restarts into the
        uninterrupted run's exact history on the same ranks."""
        h = hist_rows(self.full + "/history.csv")
        steps = {r[-1] for r in h[1:]}
        self.assertTrue({"newton", "chord"} <= steps, steps)  # both states get checkpointed below
        self.assertEqual({r[-2] for r in h[1:]}, {"gauss-newton", "exact"})
        for k in range(1, self.full_s["iterations"]):
            with self.subTest(iteration=k):
                ck = os.path.join(TMP, "ck-every-%d.bin" % k)
                run(2, "solve", "--data", self.data, "--x0", self.data + "/X0.npy", "--checkpoint", ck,
                    "--checkpoint-every", "1", "--max-iter", k, "--quiet")
                out = os.path.join(TMP, "ck-every-out-%d" % k)
                run(2, "solve", "--data", self.data, "--restart", ck, "--out", out, "--quiet")
                self.check_same(out, 1e-12)

    def test_periodic_and_sigterm_under_each_rank(self):
        """Every rank getting SIGTERM (what srun does) also checkpoints; --checkpoint-every writes too."""
        ck = os.path.join(TMP, "ck-term.bin")
        seen = []

        def send(p):
            seen.append(os.path.exists(ck))  # the periodic checkpoint of iteration 2
            to_each_rank(signal.SIGTERM)(p)

        rc, _, err = signal_at(solve_cmd(3, self.data, "--checkpoint", ck, "--checkpoint-every", "2", *ENDLESS), 3,
                               send)
        self.assertEqual(rc, 75, err)
        self.assertEqual(seen, [True])
        self.assertIn("stopped by signal 15", err)
        out = os.path.join(TMP, "ck-term-out")
        r = run(2, "solve", "--data", self.data, "--restart", ck, *ENDLESS[:4], "--max-iter", 8, "--out", out,
                timeout=HANG)
        j = restart_iteration(r.stdout)
        self.assertGreaterEqual(j, 3)
        ref = os.path.join(TMP, "ck-term-ref")
        run(2, "solve", "--data", self.data, "--x0", self.data + "/X0.npy", *ENDLESS[:4], "--max-iter", max(8, j),
            "--out", ref, "--quiet", timeout=HANG)
        self.check_same(out, 1e-8, full=ref)

    def test_sigint_without_checkpoint(self):
        """SIGINT (Ctrl-C under srun) also stops cleanly with status 75; without --checkpoint the
        message says that the progress is lost, and an existing OUT is kept."""
        out = os.path.join(TMP, "int-out")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "X.npy"), "w") as f:
            f.write("earlier\n")
        before = state(out)
        rc, _, err = signal_at(solve_cmd(2, self.data, "--out", out, *ENDLESS), 1, to_each_rank(signal.SIGINT))
        self.assertEqual(rc, 75, err)
        self.assertIn("attnreg: interrupted: stopped by signal 2 after iteration", err)
        self.assertIn("no --checkpoint given, progress not saved", err)
        self.assertEqual(state(out), before)

    def test_refusals(self):
        ck = os.path.join(TMP, "ck-ref.bin")
        run(2, "solve", "--data", self.data, "--x0", self.data + "/X0.npy", "--checkpoint", ck, "--checkpoint-every",
            2, "--max-iter", 2, "--quiet")
        other = os.path.join(TMP, "ck-other")
        run(1, "generate", "--n", 1536, "--d", 12, "--m", 6, "--seed", 22, "--out", other, "--quiet")
        with open(ck, "rb") as f:
            raw = f.read()
        corrupt = os.path.join(TMP, "ck-corrupt.bin")
        with open(corrupt, "wb") as f:
            f.write(raw[:200] + bytes([raw[200] ^ 1]) + raw[201:])
        trunc = os.path.join(TMP, "ck-trunc.bin")
        with open(trunc, "wb") as f:
            f.write(raw[: len(raw) // 2])
        cases = [
            (["--data", other, "--restart", ck], 3, "written for other input data"),
            (["--data", self.data, "--restart", corrupt], 3, "checksum mismatch"),
            (["--data", self.data, "--restart", trunc], 3, "checksum mismatch"),
            (["--data", self.data, "--restart", self.data + "/B.npy"], 3, "not an attnreg checkpoint"),
            (["--data", self.data, "--restart", ck, "--method", "alternating"], 2, "this run has --method alternating"),
            (["--data", self.data, "--restart", ck, "--hessian", "exact"], 2, "--hessian"),
            (["--data", self.data, "--restart", ck, "--chord-steps", "0"], 2, "--chord-steps"),
            (["--data", self.data, "--restart", ck, "--lambda-x", "0.5"], 2, "--lambda-x"),
            (["--data", self.data, "--restart", ck, "--lambda-y", "0.5"], 2,
             "--lambda-x 0 --lambda-y 0; this run has --whiten off --lambda-y 0.5"),
            (["--data", REF + "/tiny", "--restart", ck], 3, "written for n=1536 d=12 m=6"),
            (["--data", self.data, "--restart", OLD_CKPT], 3,
             "checkpoint format version 3, written by an earlier attnreg, is not supported"),
            (["--data", self.data, "--restart", ck, "--starts", 8], 2, "a single solve's checkpoint"),
        ]
        for i, (args, code, msg) in enumerate(cases):
            np_ = (0, 3)[i % 2]  # every rank checks: one rank (no mpirun, arutil.run) and three, alternately
            with self.subTest(args=args, ranks=np_):
                p = run(np_, "solve", *args, check=False, timeout=HANG)
                self.assertEqual(p.returncode, code, p.stderr[-500:])
                errs = [l for l in p.stderr.splitlines() if l.startswith("attnreg: error:")]
                self.assertEqual(len(errs), 1, p.stderr[-500:])
                self.assertIn(msg, errs[0])

    def test_rank_killed(self):
        """A rank killed mid-solve: every process ends (no hang), the status is non-zero, and an
        existing OUT keeps its earlier result."""
        out = os.path.join(TMP, "kill-out")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "summary.json"), "w") as f:
            f.write("earlier\n")
        before = state(out)
        victims = []

        def kill_one(p):
            pids = rank_pids(p.pid)
            victims.append(pids)
            os.kill(pids[1], signal.SIGKILL)

        rc, _, _ = signal_at(solve_cmd(3, self.data, "--method", "alternating", "--out", out, *ENDLESS), 2, kill_one)
        self.assertEqual(len(victims[0]), 3)
        self.assertNotEqual(rc, 0)
        self.assertEqual(state(out), before)


class Failures(unittest.TestCase):
    def test_nan_trial_rejected(self):
        data = os.path.join(TMP, "nan-data")
        run(1, "generate", "--n", 256, "--d", 4, "--seed", 8, "--out", data, "--quiet")

        def solve(name, inject, *extra):
            out = os.path.join(TMP, name)
            env = dict(ENV, ATTNREG_FAULT="nan-trial:%d" % inject)
            subprocess.run(["mpirun", "-n", "2", ATTNREG, "solve", "--data", data, "--x0", data + "/X0.npy", "--out",
                            out, "--quiet", *extra], env=env, check=True)
            with open(out + "/history.csv") as f:
                rows = list(csv.DictReader(f))
            s = summary(out + "/summary.json")
            self.assertTrue(s["converged"], s["reason"])
            self.assertTrue(np.all(np.isfinite(np.load(out + "/X.npy"))))
            return rows

        # a Newton step's NaN trial: rejected, mu grows (trial k is iteration k's)
        rows = solve("nan-out", 3, "--chord-steps", "0")
        self.assertEqual((rows[3]["accepted"], rows[3]["rho"], rows[3]["step"]), ("0", "-inf", "newton"))
        self.assertGreater(float(rows[3]["mu"]), float(rows[2]["mu"]))
        # a chord step's NaN trial: rejected, mu kept, and a Newton step with a fresh Hessian follows
        clean = solve("nan-clean", 0)
        k = next(int(r["iter"]) for r in clean if r["step"] == "chord")
        rows = solve("nan-chord", k)
        self.assertEqual((rows[k]["accepted"], rows[k]["rho"], rows[k]["step"]), ("0", "-inf", "chord"))
        self.assertEqual(rows[k]["mu"], rows[k - 1]["mu"])
        self.assertEqual(rows[k + 1]["step"], "newton")

    def test_nan_start(self):
        data = os.path.join(TMP, "nan-data2")
        run(1, "generate", "--n", 64, "--d", 3, "--seed", 8, "--out", data, "--quiet")
        np.save(data + "/Xhuge.npy", np.full((3, 3), 1e307))
        out = os.path.join(TMP, "nan-out2")
        p = run(2, "solve", "--data", data, "--x0", data + "/Xhuge.npy", "--out", out, check=False)
        self.assertEqual(p.returncode, 6, p.stderr)
        self.assertIn("not finite", p.stderr)
        self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
    unittest.main(verbosity=2)

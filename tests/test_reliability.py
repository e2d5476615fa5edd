"""Reliability: the bad-input catalogue, checkpoint/restart on signals, rank failure, numerical faults."""
import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from arutil import ATTNREG, ENV, run, summary, tree_bytes  # noqa: E402

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
    """Each case: one error line naming the file/option, documented exit code, all ranks gone
    within 10 s, and an existing OUT (with an earlier result) unchanged."""

    def test_catalogue(self):
        cases = make_bad_inputs()
        self.assertGreaterEqual(len(cases), 25)
        out = os.path.join(TMP, "kept")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "summary.json"), "w") as f:
            f.write('{"earlier": "result"}\n')
        before = tree_bytes(out)
        for name, args, code, msg in cases:
            for np_ in (1, 3):
                with self.subTest(case=name, ranks=np_):
                    full = ["solve"] + args
                    if "--out" not in args:
                        full += ["--out", out]
                    t0 = time.time()
                    p = run(np_, *full, check=False, timeout=30)
                    el = time.time() - t0
                    self.assertEqual(p.returncode, code, p.stderr[-600:])
                    errs = [l for l in p.stderr.splitlines() if l.startswith("attnreg: error:")]
                    self.assertEqual(len(errs), 1, p.stderr[-600:])
                    self.assertIn(msg, errs[0])
                    self.assertLess(el, 10.0)
                    self.assertEqual(tree_bytes(out), before)


def solve_cmd(np_, data, *extra):
    return ["mpirun", "--oversubscribe", "-n", str(np_), ATTNREG, "solve", "--data", data, "--x0",
            data + "/X0.npy", *extra]


def interrupt_at(cmd, iteration, sig=signal.SIGUSR1):
    """Run cmd, send sig to mpirun once the progress line of `iteration` appears."""
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sent = False
    for line in p.stdout:
        parts = line.split()
        if not sent and parts and parts[0].isdigit() and int(parts[0]) >= iteration:
            p.send_signal(sig)
            sent = True
    err = p.stderr.read()
    return p.wait(timeout=60), err


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

    def check_same(self, out, tol):
        s = summary(out + "/summary.json")
        self.assertEqual(s["iterations"], self.full_s["iterations"])
        self.assertEqual(s["reason"], self.full_s["reason"])
        self.assertLessEqual(np.abs(np.load(out + "/X.npy") - self.full_X).max(), tol)
        self.assertLessEqual(np.abs(np.load(out + "/Y.npy") - self.full_Y).max(), tol)
        if tol <= 1e-12:
            self.assertEqual(hist_rows(out + "/history.csv"), hist_rows(self.full + "/history.csv"))

    def test_signal_and_restart(self):
        self.assertGreaterEqual(self.full_s["iterations"], 6)
        for k, np_restart, tol in ((2, 2, 1e-12), (5, 2, 1e-12), (3, 3, 1e-8), (4, 1, 1e-8)):
            with self.subTest(iteration=k, restart_ranks=np_restart):
                ck = os.path.join(TMP, "ck-%d-%d.bin" % (k, np_restart))
                out = os.path.join(TMP, "ck-out-%d-%d" % (k, np_restart))
                rc, err = interrupt_at(solve_cmd(2, self.data, "--checkpoint", ck, "--out", out), k)
                self.assertEqual(rc, 75, err)
                self.assertIn("attnreg: interrupted: stopped by signal 10", err)
                self.assertTrue(os.path.exists(ck))
                self.assertFalse(os.path.exists(out))  # no partial result
                run(np_restart, "solve", "--data", self.data, "--restart", ck, "--checkpoint", ck, "--out", out,
                    "--quiet")
                self.check_same(out, tol)

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
        p = subprocess.Popen(solve_cmd(3, self.data, "--checkpoint", ck, "--checkpoint-every", "2"), env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in p.stdout:
            parts = line.split()
            if parts and parts[0].isdigit() and int(parts[0]) >= 3:
                self.assertTrue(os.path.exists(ck))  # periodic checkpoint of iteration 2
                subprocess.run(["pkill", "-TERM", "-f", "^%s solve --data %s " % (ATTNREG, self.data)])
                break
        p.stdout.read()
        err = p.stderr.read()
        self.assertEqual(p.wait(timeout=60), 75, err)
        self.assertIn("stopped by signal 15", err)
        out = os.path.join(TMP, "ck-term-out")
        run(2, "solve", "--data", self.data, "--restart", ck, "--out", out, "--quiet")
        self.check_same(out, 1e-8)

    def test_refusals(self):
        ck = os.path.join(TMP, "ck-ref.bin")
        rc, err = interrupt_at(solve_cmd(2, self.data, "--checkpoint", ck), 2)
        self.assertEqual(rc, 75, err)
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
            (["--data", self.data, "--restart", ck, "--method", "alternating"], 2, "another --method"),
            (["--data", self.data, "--restart", ck, "--chord-steps", "0"], 2, "--chord-steps"),
            (["--data", self.data, "--restart", ck, "--lambda-x", "0.5"], 2, "--lambda-x"),
            (["--data", REF + "/tiny", "--restart", ck], 3, "written for n=1536 d=12 m=6"),
        ]
        for args, code, msg in cases:
            for np_ in (1, 3):
                p = run(np_, "solve", *args, check=False, timeout=30)
                self.assertEqual(p.returncode, code, p.stderr[-500:])
                errs = [l for l in p.stderr.splitlines() if l.startswith("attnreg: error:")]
                self.assertEqual(len(errs), 1, p.stderr[-500:])
                self.assertIn(msg, errs[0])


class Failures(unittest.TestCase):
    def test_rank_killed(self):
        data = os.path.join(TMP, "kill-data")
        run(2, "generate", "--n", 2048, "--d", 16, "--seed", 5, "--out", data, "--quiet")
        out = os.path.join(TMP, "kill-out")
        cmd = ["mpirun", "--oversubscribe", "-n", "3", ATTNREG, "solve", "--data", data, "--x0", data + "/X0.npy",
               "--method", "alternating", "--max-iter", "500", "--out", out]
        p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in p.stdout:
            parts = line.split()
            if parts and parts[0].isdigit() and int(parts[0]) >= 2:
                break
        pids = subprocess.run(["pgrep", "-f", "^%s solve --data %s" % (ATTNREG, data)], capture_output=True,
                              text=True).stdout.split()
        self.assertEqual(len(pids), 3)
        t0 = time.time()
        os.kill(int(pids[1]), signal.SIGKILL)
        p.stdout.read()
        rc = p.wait(timeout=60)
        self.assertLess(time.time() - t0, 30)
        self.assertNotEqual(rc, 0)
        leftover = sorted(os.listdir(out)) if os.path.exists(out) else []
        self.assertEqual([f for f in leftover if not f.startswith(".")], [])  # no result files
        self.assertEqual(leftover, [])  # and no temporary ones either

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

"""solve with whitening and the matrix-free Newton-CG step, end to end.

  * the matrix-free and the dense step reach the same solution (1e-8), with and without whitening;
  * the iterates of the matrix-free path do not depend on the rank count (1e-8);
  * a checkpoint taken mid-run (signal raised by the test hook) restarts into the same answer;
  * whitening is refused with ridge weights when asked for, skipped with a note for rank-deficient
    inputs under --whiten auto, and an error naming the file and column under --whiten on;
  * the real trained head (tests/data/real), whitened, matrix-free, from X_true + 10 % noise:
    relative loss 1e-10 within a few Newton steps, and a peak RSS per rank far below the dense path's.
"""
import os
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import arutil  # noqa: E402
from arutil import ENV, run, history, summary  # noqa: E402

TMP = tempfile.mkdtemp(prefix="attnreg-cg-")
REAL = os.path.join(os.path.dirname(__file__), "data", "real", "ppocr_v4_svtr_b0h0")


def planted(name, **kw):
    return arutil.planted(TMP, name, **kw)


class MatrixFree(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = planted("p384", n=384, d=6, m=4, seed=5, x_scale=0.6)

    def solve(self, np_, out, *extra, env=None):
        run(np_, "solve", "--data", self.data, "--x0", self.data + "/X0.npy", "--out", out, "--quiet", *extra)
        return summary(out + "/summary.json")

    def test_same_solution_as_cholesky(self):
        xs = {}
        for ls in ("cholesky", "cg"):
            for w in ("off", "on"):
                out = os.path.join(TMP, "same-%s-%s" % (ls, w))
                s = self.solve(2, out, "--linear-solver", ls, "--whiten", w)
                with self.subTest(linear_solver=ls, whiten=w):
                    self.assertTrue(s["converged"], s["reason"])
                    self.assertLessEqual(s["rel_loss"], 1e-20)
                    self.assertEqual(s["linear_solver"], ls)
                    self.assertEqual(s["whitened"], w == "on")
                    h = history(out + "/history.csv")
                    if ls == "cg":
                        self.assertGreater(s["cg_iterations"], 0)
                        self.assertEqual(int(h["cg_iters"].sum()), s["cg_iterations"])
                    else:
                        self.assertEqual(s["cg_iterations"], 0)
                xs[ls, w] = np.load(out + "/X.npy"), np.load(out + "/Y.npy")
        X0, Y0 = xs["cholesky", "off"]
        for k, (X, Y) in xs.items():
            with self.subTest(k=k):
                self.assertLessEqual(np.abs(X - X0).max(), 1e-8 * max(1, np.abs(X0).max()))
                self.assertLessEqual(np.abs(Y - Y0).max(), 1e-8 * max(1, np.abs(Y0).max()))

    def test_rank_count_invariance(self):
        ref = None
        for np_ in (1, 2, 3):
            out = os.path.join(TMP, "ranks-%d" % np_)
            s = self.solve(np_, out, "--linear-solver", "cg")
            self.assertTrue(s["converged"], s["reason"])
            X = np.load(out + "/X.npy")
            if ref is None:
                ref, its = X, s["iterations"]
            else:
                self.assertLessEqual(np.abs(X - ref).max(), 1e-8 * np.abs(ref).max(), np_)
                self.assertEqual(s["iterations"], its)

    def test_checkpoint_restart(self):
        full = os.path.join(TMP, "ck-full")
        s_full = self.solve(2, full, "--linear-solver", "cg", "--gttol", "0", "--steptol", "0", "--max-iter", "7")
        ck = os.path.join(TMP, "cg.ckpt")
        env = dict(ENV, ATTNREG_FAULT="signal:3")
        import subprocess
        p = subprocess.run(["mpirun", "--oversubscribe", "-n", "2", os.environ.get("ATTNREG", "build/attnreg"), "solve",
                            "--data", self.data, "--x0", self.data + "/X0.npy", "--linear-solver", "cg", "--gttol", "0",
                            "--steptol", "0", "--max-iter", "7", "--checkpoint", ck, "--quiet"],
                           env=env, capture_output=True, text=True, timeout=600)
        self.assertEqual(p.returncode, 75, p.stderr)
        out = os.path.join(TMP, "ck-restart")
        run(2, "solve", "--data", self.data, "--restart", ck, "--linear-solver", "cg", "--gttol", "0", "--steptol", "0",
            "--max-iter", "7", "--out", out, "--quiet")
        s = summary(out + "/summary.json")
        self.assertEqual(s["iterations"], s_full["iterations"])
        self.assertLessEqual(np.abs(np.load(out + "/X.npy") - np.load(full + "/X.npy")).max(), 1e-12)
        # another linear solver or whitening setting is refused
        p = run(2, "solve", "--data", self.data, "--restart", ck, "--linear-solver", "cholesky", check=False)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("--linear-solver cg --whiten on", p.stderr)


class Whitening(unittest.TestCase):
    def test_refusals_and_rank_deficiency(self):
        data = planted("p64", n=64, d=4, m=2, seed=3)
        p = run(1, "solve", "--data", data, "--whiten", "on", "--lambda-x", "0.1", check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--whiten on: the ridge terms", p.stderr)
        bad = os.path.join(TMP, "deficient")
        os.makedirs(bad, exist_ok=True)
        A = np.load(os.path.join(data, "A1.npy"))
        A[:, 3] = A[:, 0] - 2 * A[:, 1]
        np.save(os.path.join(bad, "A.npy"), A)
        np.save(os.path.join(bad, "B.npy"), np.load(os.path.join(data, "B.npy")))
        p = run(2, "solve", "--data", bad, "--whiten", "on", check=False)
        self.assertEqual(p.returncode, 3, p.stderr)
        self.assertIn("A.npy: column 4", p.stderr)
        p = run(2, "solve", "--data", bad, "--max-iter", "3", "--out", os.path.join(TMP, "def-out"))
        self.assertIn("note: not whitened", p.stdout)
        self.assertFalse(summary(os.path.join(TMP, "def-out", "summary.json"))["whitened"])


@unittest.skipUnless(os.path.isdir(REAL), "the real head is not in tests/data/real")
class RealHead(unittest.TestCase):
    def test_whitened_matrix_free(self):
        X = np.load(os.path.join(REAL, "X_true.npy"))
        rng = np.random.default_rng(1)
        x0 = os.path.join(TMP, "real-X0.npy")
        np.save(x0, X + 0.1 * np.sqrt(np.mean(X ** 2)) * rng.standard_normal(X.shape))
        out = os.path.join(TMP, "real")
        run(2, "solve", "--data", REAL, "--x0", x0, "--linear-solver", "cg", "--max-iter", "6", "--out", out, "--quiet",
            timeout=1800)
        s = summary(out + "/summary.json")
        h = history(out + "/history.csv")
        self.assertTrue(s["whitened"])
        self.assertLessEqual(s["rel_loss"], 1e-10, h["rel_loss"])
        # superlinear: the relative loss falls by more each step (ratios of successive losses shrink)
        rel = h["rel_loss"][h["accepted"] == 1]
        ratios = rel[1:] / rel[:-1]
        self.assertLess(min(ratios[2:]), 0.05, rel)
        self.assertLess(s["peak_rss_mb"]["max"], 300)  # the dense path needs > 2 GB per rank here


if __name__ == "__main__":
    unittest.main(verbosity=2)

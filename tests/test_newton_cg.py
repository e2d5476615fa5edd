"""solve with whitening and the matrix-free Newton-CG step, end to end.

  * the matrix-free and the dense step reach the same solution (1e-8), with and without whitening;
  * the iterates of the matrix-free path do not depend on the rank count (1e-8);
  * a checkpoint taken mid-run (signal raised by the test hook) restarts into the same answer;
  * whitening is refused with ridge weights when asked for, skipped with a note for rank-deficient
    inputs under --whiten auto, and an error naming the file and column under --whiten on;
  * --shift gram on badly scaled, correlated inputs: the first dense step is the one NumPy
    computes from the assembled Hessian and the Gram metric (1, 2, 4 ranks, small blocks), and
    whitened variables make that metric the identity (the same step as --shift identity);
  * the row-space step (--linear-solver rows; auto when n m < D), on an underdetermined planted
    problem with packed causal sequences: auto says why, the first step equals the dense
    Gauss-Newton step with the identity shift, quadratic convergence, the same iterates on 1-3
    ranks, a restart into the same answer, and its refusals;
  * the real trained head (tests/data/real), whitened, matrix-free, from X_true + 10 % noise:
    relative loss 1e-10 within a few Newton steps, and a peak RSS per rank far below the dense path's;
    with the defaults (the row-space step: n m = 3120 < D = 16200) 1e-14 within 6 iterations;
    unwhitened with the dense step and the Gram shift: 1e-10 in two steps, each cutting L 100-fold.
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

    def test_auto_says_why(self):
        """--linear-solver auto states its choice and its reason in the header: here the dense step
        fits; under a budget it does not fit, the matrix-free step runs and the header says so."""
        data = planted("why", n=512, d=24, m=4, seed=6)
        for extra, ls, fits in (([], "cholesky", "within"), (["--mem-per-rank", "0.025"], "cg", "over")):
            out = os.path.join(TMP, "why-" + ls)
            p = run(2, "solve", "--data", data, "--x0", data + "/X0.npy", "--max-iter", 1, "--out", out, *extra)
            line = [l for l in p.stdout.splitlines() if l.startswith("  linear solver: auto chose")]
            self.assertEqual(len(line), 1, p.stdout[:2000])
            self.assertIn("auto chose %s: the dense step needs" % ls, line[0])
            self.assertIn(fits + " the budget", line[0])
            self.assertEqual(summary(out + "/summary.json")["linear_solver"], ls)
        p = run(2, "solve", "--data", self.data, "--x0", self.data + "/X0.npy", "--max-iter", 1, "--linear-solver", "cg",
                "--out", os.path.join(TMP, "why-given"))
        self.assertNotIn("auto chose", p.stdout)

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
        s_full = self.solve(2, full, "--linear-solver", "cg", "--gttol", "0", "--steptol", "0", "--floor-iters", "0", "--max-iter", "7")
        ck = os.path.join(TMP, "cg.ckpt")
        env = dict(ENV, ATTNREG_FAULT="signal:3")
        import subprocess
        p = subprocess.run(["mpirun", "--oversubscribe", "-n", "2", os.environ.get("ATTNREG", "build/attnreg"), "solve",
                            "--data", self.data, "--x0", self.data + "/X0.npy", "--linear-solver", "cg", "--gttol", "0",
                            "--steptol", "0", "--max-iter", "7", "--checkpoint", ck, "--quiet"],
                           env=env, capture_output=True, text=True, timeout=600)
        self.assertEqual(p.returncode, 75, p.stderr)
        out = os.path.join(TMP, "ck-restart")
        run(2, "solve", "--data", self.data, "--restart", ck, "--linear-solver", "cg", "--gttol", "0", "--steptol", "0", "--floor-iters", "0",
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


class GramShift(unittest.TestCase):
    """The dense step with the shift mu s M, M = (G1 (x) G2) + (G3 (x) I) scaled to mean diagonal 1,
    plus 1e-8 I (G_k = A_k^T A_k), against NumPy on the assembled Hessian."""

    def test_first_step_against_numpy(self):
        base = planted("p96", n=96, d=4, m=3, seed=11, x_scale=0.5)
        data = os.path.join(TMP, "gram-data")
        os.makedirs(data, exist_ok=True)
        rng = np.random.default_rng(4)
        A = [np.load(os.path.join(base, "A%d.npy" % k)) for k in (1, 2, 3)]
        # badly scaled, correlated columns: whitening would change them a lot
        mix = np.diag([1.0, 1e-2, 3.0, 30.0]) @ (np.eye(4) + 0.5 * rng.standard_normal((4, 4)))
        A = [a @ mix for a in A]
        for k in (1, 2, 3):
            np.save(os.path.join(data, "A%d.npy" % k), A[k - 1])
        np.save(os.path.join(data, "B.npy"), np.load(os.path.join(base, "B.npy")))
        d, m = 4, 3
        X0 = 0.3 * rng.standard_normal((d, d))
        Y0 = rng.standard_normal((d, m))
        np.save(os.path.join(data, "X0.npy"), X0)
        np.save(os.path.join(data, "Y0.npy"), Y0)
        ev = os.path.join(TMP, "gram-eval")
        run(1, "eval", "--data", data, "--x", data + "/X0.npy", "--y", data + "/Y0.npy", "--hessian", "gauss-newton",
            "--out", ev, "--quiet")
        H = np.load(ev + "/hessian.npy")
        g = np.concatenate([np.load(ev + "/grad_X.npy").ravel(), np.load(ev + "/grad_Y.npy").ravel()])
        G = [a.T @ a for a in A]
        M = np.zeros_like(H)
        M[:d * d, :d * d] = np.kron(G[0], G[1])
        M[d * d:, d * d:] = np.kron(G[2], np.eye(m))
        M = M / np.mean(np.diag(M)) + 1e-8 * np.eye(len(g))
        mu0 = 1e-3
        s = mu0 * np.mean(np.abs(np.diag(H)))
        S = H + s * M  # condition number ~1e12 here: compare residuals, not steps
        for np_, nb in ((1, 64), (2, 4), (4, 3)):
            out = os.path.join(TMP, "gram-%d" % np_)
            run(np_, "solve", "--data", data, "--x0", data + "/X0.npy", "--y0", data + "/Y0.npy", "--whiten", "off",
                "--linear-solver", "cholesky", "--shift", "gram", "--hessian", "gauss-newton", "--mu0", mu0,
                "--nb", nb, "--max-iter", "1", "--out", out, "--quiet")
            h = history(out + "/history.csv")
            with self.subTest(ranks=np_):
                self.assertEqual(int(h["accepted"][1]), 1)
                dz = np.concatenate([(np.load(out + "/X.npy") - X0).ravel(), (np.load(out + "/Y.npy") - Y0).ravel()])
                self.assertLessEqual(np.linalg.norm(S @ dz + g), 1e-11 * np.linalg.norm(g))
                # the identity shift's system is another one: this step does not solve it
                S_id = H + s * np.eye(len(g))
                self.assertGreater(np.linalg.norm(S_id @ dz + g), 1e-4 * np.linalg.norm(g))
        # the row-space step with the Gram shift: the metric in its factored form,
        # (Ga + f I) (x) (Gb + f I) on X and (Gy + f I) (x) I on Y, G scaled as above
        tr = [np.trace(x) for x in G]
        mean = (tr[0] * tr[1] + m * tr[2]) / len(g)
        f = 1e-8
        Mr = np.zeros_like(H)
        Mr[:d * d, :d * d] = np.kron(G[0] / mean + f * np.eye(d), G[1] + f * np.eye(d))
        Mr[d * d:, d * d:] = np.kron(G[2] / mean + f * np.eye(d), np.eye(m))
        Sr = H + s * Mr
        for np_ in (1, 3):
            out = os.path.join(TMP, "gram-rows-%d" % np_)
            run(np_, "solve", "--data", data, "--x0", data + "/X0.npy", "--y0", data + "/Y0.npy", "--whiten", "off",
                "--linear-solver", "rows", "--mu0", mu0, "--max-iter", "1", "--out", out, "--quiet")
            with self.subTest(rows_ranks=np_):
                self.assertEqual(int(history(out + "/history.csv")["accepted"][1]), 1)
                dz = np.concatenate([(np.load(out + "/X.npy") - X0).ravel(), (np.load(out + "/Y.npy") - Y0).ravel()])
                self.assertLessEqual(np.linalg.norm(Sr @ dz + g), 1e-10 * np.linalg.norm(g))
                self.assertGreater(np.linalg.norm((H + s * np.eye(len(g))) @ dz + g), 1e-4 * np.linalg.norm(g))
        # the whitened variables have G_k = I: the Gram shift is the identity shift (plus 1e-8)
        xs = {}
        for shift in ("identity", "gram"):
            out = os.path.join(TMP, "gram-white-" + shift)
            run(2, "solve", "--data", data, "--x0", data + "/X0.npy", "--y0", data + "/Y0.npy", "--whiten", "on",
                "--linear-solver", "cholesky", "--shift", shift, "--max-iter", "3", "--out", out, "--quiet")
            xs[shift] = np.load(out + "/X.npy")
        self.assertLessEqual(np.abs(xs["gram"] - xs["identity"]).max(), 1e-6 * np.abs(xs["identity"]).max())


class RowSpace(unittest.TestCase):
    """n = 30 rows in 3 causal sequences, d = 8, m = 2: n m = 60 outputs for D = 80 unknowns."""

    @classmethod
    def setUpClass(cls):
        cls.data = planted("under", n=30, d=8, m=2, seed=4, segments=3, causal=True, start_noise=0.1)

    def solve(self, np_, out, *extra, quiet=True):
        p = run(np_, "solve", "--data", self.data, "--causal", "--x0", self.data + "/X0.npy", "--out", out,
                *((["--quiet"] if quiet else []) + list(extra)))
        return p, summary(out + "/summary.json"), history(out + "/history.csv")

    def test_auto_converges_quadratically_on_any_rank_count(self):
        ref = None
        for np_ in (1, 2, 3):
            out = os.path.join(TMP, "rows-%d" % np_)
            p, s, h = self.solve(np_, out, quiet=False)
            with self.subTest(ranks=np_):
                self.assertIn("auto chose rows: n m = 60 < D = 80", p.stdout)
                self.assertEqual((s["linear_solver"], s["segments"], s["causal"]), ("rows", 3, True))
                self.assertTrue(s["converged"], s["reason"])
                self.assertLessEqual(s["rel_loss"], 1e-20)
                self.assertLessEqual(s["iterations"], 8, h["rel_loss"])
                self.assertTrue(all(k == "gauss-newton" for k in h["hessian"]), h["hessian"])
                rel = h["rel_loss"][h["accepted"] == 1]
                # superlinear: one step cuts L a millionfold (measured: 6.7e-14 -> 1.6e-22)
                self.assertLess(min(rel[1:] / rel[:-1]), 1e-6, rel)
                X = np.load(out + "/X.npy")
                if ref is None:
                    ref, its = X, s["iterations"]
                else:
                    self.assertLessEqual(np.abs(X - ref).max(), 1e-8 * np.abs(ref).max())
                    self.assertEqual(s["iterations"], its)

    def test_first_step_is_the_dense_gauss_newton_step(self):
        xs = {}
        for ls, extra in (("rows", ["--shift", "identity"]),
                          ("cholesky", ["--shift", "identity", "--hessian", "gauss-newton"])):
            out = os.path.join(TMP, "rows-first-%s" % ls)
            self.solve(2, out, "--linear-solver", ls, "--max-iter", 1, "--chord-steps", 0, *extra)
            xs[ls] = np.load(out + "/X.npy"), np.load(out + "/Y.npy")
        for a, b in zip(xs["rows"], xs["cholesky"]):
            self.assertLessEqual(np.abs(a - b).max(), 1e-9 * np.abs(b).max())

    def test_restart_and_refusals(self):
        full = os.path.join(TMP, "rows-full")
        _, s_full, _ = self.solve(2, full, "--linear-solver", "rows")
        ck, out = os.path.join(TMP, "rows.ckpt"), os.path.join(TMP, "rows-part")
        self.solve(2, out, "--linear-solver", "rows", "--max-iter", 2, "--checkpoint", ck, "--checkpoint-every", 1)
        _, s, _ = self.solve(3, out, "--linear-solver", "rows", "--restart", ck)
        self.assertEqual(s["iterations"], s_full["iterations"])
        self.assertLessEqual(np.abs(np.load(out + "/X.npy") - np.load(full + "/X.npy")).max(),
                             1e-8 * np.abs(np.load(full + "/X.npy")).max())
        for extra, msg in ((["--hessian", "exact"], "the row-space step is Gauss-Newton"),
                           (["--lambda-x", 0.1], "not with the ridge terms"),
                           (["--method", "alternating"], "needs --method joint")):
            p = run(2, "solve", "--data", self.data, "--causal", "--linear-solver", "rows", "--out",
                    os.path.join(TMP, "rows-bad"), *extra, check=False)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn(msg, p.stderr)
            self.assertFalse(os.path.exists(os.path.join(TMP, "rows-bad")))


def real_start(name, seed):
    """X_true of the real head + 10 % noise (relative to its rms), saved as TMP/name.npy."""
    X = np.load(os.path.join(REAL, "X_true.npy"))
    x0 = os.path.join(TMP, name + ".npy")
    np.save(x0, X + 0.1 * np.sqrt(np.mean(X ** 2)) * np.random.default_rng(seed).standard_normal(X.shape))
    return x0


@unittest.skipUnless(os.path.isdir(REAL), "the real head is not in tests/data/real")
class RealHead(unittest.TestCase):
    def test_whitened_matrix_free(self):
        x0 = real_start("real-X0", 1)
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

    def test_defaults_take_the_row_space_step(self):
        x0 = real_start("real-X0-rows", 2)
        out = os.path.join(TMP, "real-rows")
        p = run(2, "solve", "--data", REAL, "--x0", x0, "--out", out, timeout=1800)
        self.assertIn("auto chose rows: n m = 3120 < D = 16200", p.stdout)
        s, h = summary(out + "/summary.json"), history(out + "/history.csv")
        self.assertEqual(s["linear_solver"], "rows")
        self.assertTrue(s["converged"], s["reason"])
        hit = [k for k, r in enumerate(h["rel_loss"]) if r <= 1e-14]
        self.assertTrue(hit and hit[0] <= 6, h["rel_loss"])
        self.assertLess(s["peak_rss_mb"]["max"], 400)  # the dense path needs > 2 GB per rank here

    def test_unwhitened_dense_gram_shift(self):
        """Not whitened (cond(A) = 2e6), dense step, the default Gram shift: fast from the first
        step, as whitened (the identity shift crawls here: 2.4e-7, 3.9e-8, 1.3e-8, ...)."""
        x0 = real_start("real-X0-dense", 1)
        out = os.path.join(TMP, "real-dense")
        run(2, "solve", "--data", REAL, "--x0", x0, "--whiten", "off", "--linear-solver", "cholesky", "--max-iter", "2",
            "--out", out, "--quiet", timeout=3600)
        s = summary(out + "/summary.json")
        h = history(out + "/history.csv")
        self.assertFalse(s["whitened"])
        rel = h["rel_loss"]
        self.assertTrue(all(h["accepted"] == 1), h)
        self.assertLessEqual(rel[2], 1e-10, rel)
        # each step cuts L more than 100-fold (the identity shift: 0.03, then 0.16, 0.33)
        self.assertLess(max(rel[1:] / rel[:-1]), 0.01, rel)


if __name__ == "__main__":
    unittest.main(verbosity=2)

"""attnreg solve on planted problems: convergence, methods, rank/grid independence, hard starts."""
import os
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import arutil  # noqa: E402
from arutil import run, history, summary  # noqa: E402

TMP = tempfile.mkdtemp(prefix="attnreg-solve-")


def planted(name, **kw):
    return arutil.planted(TMP, name, **kw)


class PlantedJoint(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = planted("p512", n=512, d=8, m=8, seed=7, x_scale=0.5)

    def solve(self, np_, out, *extra):
        run(np_, "solve", "--data", self.data, "--x0", self.data + "/X0.npy", "--out", out, "--quiet", *extra)
        return history(out + "/history.csv"), summary(out + "/summary.json")

    def test_joint_quadratic(self):
        h, s = self.solve(2, TMP + "/joint")
        self.assertTrue(s["converged"], s["reason"])
        self.assertLessEqual(s["rel_loss"], 1e-14)
        self.assertLessEqual(s["iterations"], 30)
        rel = h["rel_loss"][h["accepted"] == 1]
        # quadratic at the end: some step takes a small relative loss L_k <= 1e-5 to <= L_k^1.6
        quad = [(a, b) for a, b in zip(rel[:-1], rel[1:]) if 1e-28 < a <= 1e-5 and b <= a ** 1.6]
        self.assertTrue(quad, "no quadratic step in %s" % rel)
        # the written X, Y are the solution: eval at them agrees with the summary's loss
        run(1, "eval", "--data", self.data, "--x", TMP + "/joint/X.npy", "--y", TMP + "/joint/Y.npy",
            "--out", TMP + "/joint-eval", "--quiet")
        e = summary(TMP + "/joint-eval/eval.json")
        self.assertLessEqual(abs(e["loss"] - s["loss"]), 1e-12 * max(1.0, s["loss"]) + 1e-20)

    def test_gauss_newton(self):
        h, s = self.solve(2, TMP + "/gn", "--hessian", "gauss-newton")
        self.assertTrue(s["converged"], s["reason"])
        self.assertLessEqual(s["rel_loss"], 1e-14)

    def test_chord_steps(self):
        """One chord step per Hessian (the default): the same answer for fewer flops."""
        h0, s0 = self.solve(2, TMP + "/chord0", "--chord-steps", "0")
        h1, s1 = self.solve(2, TMP + "/chord1")
        for s in (s0, s1):
            self.assertTrue(s["converged"], s["reason"])
            self.assertLessEqual(s["rel_loss"], 1e-14)
        self.assertNotIn("chord", set(h0["step"]))
        self.assertIn("chord", set(h1["step"][h1["accepted"] == 1]))
        self.assertLess(s1["flops"], s0["flops"])  # fewer Hessians
        self.assertLessEqual(np.abs(np.load(TMP + "/chord0/X.npy") - np.load(TMP + "/chord1/X.npy")).max(), 1e-8)

    def test_alternating_monotone(self):
        h, s = self.solve(2, TMP + "/alt", "--method", "alternating", "--max-iter", "40")
        loss = h["loss"][h["accepted"] == 1]
        self.assertTrue(np.all(np.diff(loss) <= 1e-12 * loss[:-1]), loss)
        self.assertLess(loss[-1], 0.01 * loss[0])  # it makes real progress
        self.assertNotEqual(s["reason"], "DIVERGED_NAN")

    def test_ranks_and_grids_agree(self):
        """The same answer on every rank count, grid, block size and tile, and each of these options
        took effect (summary.json records what was used); the defaults are the documented ones:
        the squarest grid, nb = min(64, ceil(D / max(PR, PC))) with D = 128 here."""
        base_h, base = self.solve(1, TMP + "/r1")
        self.assertEqual((base["grid"], base["nb"]), ("1x1", 64))
        X1 = np.load(TMP + "/r1/X.npy")
        Y1 = np.load(TMP + "/r1/Y.npy")
        for np_, extra, grid, nb, tile in [
                (2, [], "1x2", 64, None), (3, [], "1x3", 43, None), (4, [], "2x2", 64, None),
                (2, ["--grid", "2x1", "--nb", "3"], "2x1", 3, None), (3, ["--grid", "3x1"], "3x1", 43, None),
                (4, ["--grid", "1x4"], "1x4", 32, None), (4, ["--grid", "4x1", "--nb", "5"], "4x1", 5, None),
                (3, ["--tile", "7"], "1x3", 43, 7)]:
            out = TMP + "/r%d%s" % (np_, "".join(extra).replace("-", ""))
            h, s = self.solve(np_, out, *extra)
            self.assertEqual((s["ranks"], s["grid"], s["nb"]), (np_, grid, nb), extra)
            if tile:
                self.assertEqual(s["tile"], tile)
                self.assertEqual(s["options"]["tile"], tile)
            else:
                self.assertGreater(s["tile"], 7)
            self.assertEqual(s["iterations"], base["iterations"], (np_, extra))
            self.assertEqual(s["reason"], base["reason"], (np_, extra))
            self.assertLessEqual(np.abs(np.load(out + "/X.npy") - X1).max(), 1e-8, (np_, extra))
            self.assertLessEqual(np.abs(np.load(out + "/Y.npy") - Y1).max(), 1e-8, (np_, extra))


class Hybrid(unittest.TestCase):
    def test_auto_on_noisy_data(self):
        """Nonzero residual: --hessian auto starts with Gauss-Newton, switches to the exact Hessian
        when progress slows, and ends quadratically, where Gauss-Newton alone crawls."""
        data = planted("noisy", n=512, d=8, m=8, seed=7, x_scale=0.5, noise=0.003)

        def solve(name, *extra):
            out = TMP + "/" + name
            run(2, "solve", "--data", data, "--x0", data + "/X0.npy", "--out", out, "--quiet", *extra)
            return history(out + "/history.csv"), summary(out + "/summary.json")

        ha, sa = solve("auto")
        he, se = solve("exact", "--hessian", "exact")
        for s in (sa, se):
            self.assertEqual(s["reason"], "CONVERGED_GTTOL")
        self.assertEqual(ha["hessian"][0], "gauss-newton")
        self.assertEqual(ha["hessian"][-1], "exact")
        self.assertLessEqual(abs(sa["loss"] - se["loss"]), 1e-12 * se["loss"])
        self.assertLessEqual(sa["iterations"], se["iterations"])
        hg, sg = solve("gn-only", "--hessian", "gauss-newton", "--max-iter", sa["iterations"])
        self.assertGreater(sg["grad_norm"], 100 * sa["grad_norm"])


class HardStarts(unittest.TestCase):
    def test_indefinite_start(self):
        """Far from the optimum the exact Hessian is indefinite: mu must grow and the solve go on."""
        data = planted("far", n=256, d=4, m=4, seed=11, x_scale=1.0)
        Y0 = np.load(data + "/Y_true.npy")
        X0 = 4.0 * np.load(data + "/X_true.npy").T  # far away
        np.save(TMP + "/farX0.npy", X0)
        np.save(TMP + "/farY0.npy", -Y0)
        run(1, "eval", "--data", data, "--x", TMP + "/farX0.npy", "--y", TMP + "/farY0.npy", "--hessian", "exact",
            "--out", TMP + "/far-eval", "--quiet")
        H = np.load(TMP + "/far-eval/hessian.npy")
        self.assertLess(np.linalg.eigvalsh(H).min(), 0.0, "the start should have an indefinite Hessian")
        out = TMP + "/far-solve"
        run(2, "solve", "--data", data, "--x0", TMP + "/farX0.npy", "--y0", TMP + "/farY0.npy", "--max-iter", "60",
            "--hessian", "exact", "--out", out, "--quiet")
        h = history(out + "/history.csv")
        s = summary(out + "/summary.json")
        self.assertTrue(np.all(np.isfinite(h["loss"])))
        self.assertTrue(np.any(np.diff(h["mu"]) > 0), "mu never grew")
        self.assertLess(s["loss"], 0.5 * h["loss"][0])
        self.assertNotEqual(s["reason"], "DIVERGED_NAN")


class SubSampledHessian(unittest.TestCase):
    """--hessian-sample F: the dense step's Hessians from a growing uniform sample of the rows."""

    @classmethod
    def setUpClass(cls):
        cls.data = planted("hs", n=2048, d=6, m=4, seed=8, start_noise=0.3)

    def solve(self, np_, out, *extra):
        run(np_, "solve", "--data", self.data, "--x0", self.data + "/X0.npy", "--linear-solver", "cholesky",
            "--out", out, "--quiet", *extra)
        return summary(out + "/summary.json"), history(out + "/history.csv")

    def test_converges_and_grows(self):
        """From a sample of 1/8 the solve reaches the full solve's answer; the sample grows to every
        row (history.csv's hessian_sample), the iterates do not depend on the rank count, and a
        restart continues exactly."""
        s, h = self.solve(2, TMP + "/hs-8", "--hessian-sample", 0.125)
        self.assertTrue(s["converged"], s["reason"])
        self.assertLessEqual(s["rel_loss"], 1e-20)
        f = np.array(h["hessian_sample"])
        self.assertEqual(f[0], 0.125)
        self.assertEqual(f[-1], 1.0)
        self.assertTrue(np.all(np.diff(f) >= 0))
        full, _ = self.solve(2, TMP + "/hs-full")
        X, Xf = np.load(TMP + "/hs-8/X.npy"), np.load(TMP + "/hs-full/X.npy")
        self.assertLessEqual(np.abs(X - Xf).max(), 1e-8 * np.abs(Xf).max())
        s3, h3 = self.solve(3, TMP + "/hs-8-3", "--hessian-sample", 0.125)
        self.assertEqual(s3["iterations"], s["iterations"])
        self.assertLessEqual(np.abs(np.array(h3["grad_norm"]) - np.array(h["grad_norm"])).max(),
                             1e-8 * max(h["grad_norm"]))
        ck = TMP + "/hs.ckpt"
        self.solve(2, TMP + "/hs-a", "--hessian-sample", 0.125, "--checkpoint", ck, "--checkpoint-every", 2,
                   "--max-iter", 2)
        run(2, "solve", "--data", self.data, "--restart", ck, "--linear-solver", "cholesky", "--hessian-sample", 0.125,
            "--out", TMP + "/hs-b", "--quiet")
        self.assertLessEqual(np.abs(np.load(TMP + "/hs-b/X.npy") - X).max(), 1e-12 * np.abs(X).max())
        p = run(2, "solve", "--data", self.data, "--restart", ck, "--linear-solver", "cholesky", "--out",
                TMP + "/hs-c", "--quiet", check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--hessian-sample", p.stderr)

    def test_refusals(self):
        for extra, msg in ((["--hessian-sample", 0], "must be in (0, 1]"), (["--hessian-sample", 1.5], "(0, 1]"),
                           (["--hessian-sample", 0.5, "--linear-solver", "cg"], "for the dense step only")):
            p = run(2, "solve", "--data", self.data, "--out", TMP + "/hs-bad", "--quiet", *extra, check=False)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn(msg, p.stderr)


class Termination(unittest.TestCase):
    """Every termination reason fires, and in the documented order: each run below also meets the
    condition of the reason after it (shown by the next run), so the earlier reason must win."""

    def test_every_reason_in_order(self):
        data = planted("term", n=128, d=4, m=4, seed=3, x_scale=0.5, noise=0.01)
        endless = ["--gttol", "0", "--steptol", "0", "--floor-iters", "0"]

        def solve(name, *extra, fault=None, code=0):
            out = os.path.join(TMP, "term-" + name)
            p = run(2, "solve", "--data", data, "--x0", data + "/X0.npy", "--out", out, *extra, check=False,
                    fault=fault)
            self.assertEqual(p.returncode, code, p.stderr[-800:])
            if code:
                return p, None, None
            s = summary(out + "/summary.json")
            self.assertEqual(s["converged"], s["reason"].startswith("CONVERGED_"))
            if "--quiet" not in extra:
                self.assertIn("%s due to %s after %d iterations" % ("converged" if s["converged"] else "stopped",
                                                                     s["reason"], s["iterations"]), p.stdout)
            return p, s, history(out + "/history.csv")

        # the iteration-1 numbers the thresholds below are set from
        _, s, h = solve("maxits", "--max-iter", 1, *endless)
        self.assertEqual((s["reason"], s["iterations"]), ("DIVERGED_MAXITS", 1))
        g0, g1 = h["grad_norm"]
        self.assertEqual(h["accepted"][1], 1)
        self.assertLess(g1, g0)  # so a gttol between g1/g0 and 1 fires at iteration 1, not 0
        gttol = np.sqrt(g1 / g0)
        r0, r1 = h["rel_loss"]
        self.assertLess(r1, r0)  # so a loss target between them is met at iteration 1, not 0
        target = np.sqrt(r0 * r1)
        cases = [  # reason, iterations, options, fault hook
            ("CONVERGED_GATOL", 0, ["--gatol", 1e300, "--grtol", 1e300], None),
            ("CONVERGED_GRTOL", 0, ["--grtol", 1e300, "--gttol", 1], None),
            ("CONVERGED_GTTOL", 1, ["--gttol", gttol, "--loss-target", target], None),
            ("CONVERGED_LOSS_TARGET", 1, ["--loss-target", target, "--ftol", 1], None),
            ("CONVERGED_FTOL", 1, ["--ftol", 1, "--steptol", 1e300, "--gttol", 0], None),
            ("CONVERGED_STEPTOL", 1, ["--steptol", 1e300, "--max-iter", 1, "--gttol", 0], None),
            # a NaN trial loss rejects the first step, and mu0 6e15 grows past mu_max = 1e16
            ("DIVERGED_MAXITS", 1, ["--max-iter", 1, "--mu0", 6e15] + endless, "nan-trial:1"),
            ("DIVERGED_MU_OVERFLOW", 1, ["--mu0", 6e15] + endless, "nan-trial:1"),
            ("DIVERGED_MU_OVERFLOW", 0, ["--mu0", 2e16, "--time-limit", 1e-9], None),
            # a signal while starting is seen at the first iteration boundary, after the time limit
            ("DIVERGED_TIME_LIMIT", 0, ["--time-limit", 1e-9], "signal-startup:1"),
        ]
        for reason, iterations, extra, fault in cases:
            with self.subTest(reason=reason, options=extra, fault=fault):
                _, s, _ = solve(reason, *extra, fault=fault)
                self.assertEqual((s["reason"], s["iterations"]), (reason, iterations))
        # the rounding floor (noise 0.01: a nonzero residual): with the gradient and step tests off
        # the solve ends there, converged, well before --max-iter; with --floor-iters 0 it runs on
        _, s, h = solve("floor", "--gttol", 0, "--steptol", 0, "--max-iter", 200)
        self.assertEqual(s["reason"], "CONVERGED_FLOOR")
        self.assertLess(s["iterations"], 60)
        f = np.array(h["loss"])
        self.assertLessEqual(abs(f[-1] - f[-3]), 1e-12 * f[-1])  # two steps in a row changed L by rounding only
        _, s, _ = solve("floor-off", *endless, "--max-iter", s["iterations"] + 5)
        self.assertEqual(s["reason"], "DIVERGED_MAXITS")
        # a time limit in the middle of a run that nothing else would end: it stops at the first
        # iteration boundary past the limit, however fast the machine
        limit = 0.5
        _, s, h = solve("time", "--time-limit", limit, "--max-iter", 20000, "--quiet", *endless)
        self.assertEqual(s["reason"], "DIVERGED_TIME_LIMIT")
        self.assertGreaterEqual(s["iterations"], 1)
        self.assertLess(h["seconds"][-2], limit)
        # the signal: status 75 (tests/test_reliability.py checks the checkpoint and restart)
        p, _, _ = solve("signal", "--time-limit", 1e6, *endless, fault="signal:2", code=75)
        self.assertIn("stopped by signal 10 after iteration 2", p.stderr)
        # a non-finite loss can only be met at the start (a trial point's is a rejected step): status 6
        np.save(os.path.join(TMP, "term-Xhuge.npy"), np.full((4, 4), 1e307))
        p, _, _ = solve("nan", "--x0", os.path.join(TMP, "term-Xhuge.npy"), "--gatol", 1e300, code=6)
        self.assertIn("not finite at the start point", p.stderr)


class Ridge(unittest.TestCase):
    def test_ridge_stationary(self):
        ref = os.path.join(os.path.dirname(__file__), "data", "reference", "rect")
        out = TMP + "/ridge"
        run(2, "solve", "--data", ref, "--x0", ref + "/X.npy", "--lambda-x", "0.1", "--lambda-y", "0.05",
            "--out", out, "--quiet")
        s = summary(out + "/summary.json")
        self.assertTrue(s["converged"], s["reason"])
        # checked independently: eval's regularised gradient at the returned point
        run(3, "eval", "--data", ref, "--x", out + "/X.npy", "--y", out + "/Y.npy", "--lambda-x", "0.1",
            "--lambda-y", "0.05", "--out", out + "-eval", "--quiet")
        e = summary(out + "-eval/eval.json")
        self.assertLessEqual(e["grad_norm"], 1e-9)
        # and by hand: the ridge gradient of Y is 2 lambda_y Y, so Y is not the unregularised one
        run(1, "eval", "--data", ref, "--x", out + "/X.npy", "--y", out + "/Y.npy", "--out", out + "-eval0",
            "--quiet")
        gy = np.load(out + "-eval0/grad_Y.npy")
        Y = np.load(out + "/Y.npy")
        self.assertLessEqual(np.abs(gy + 2 * 0.05 * Y).max(), 1e-9)


if __name__ == "__main__":
    unittest.main(verbosity=2)

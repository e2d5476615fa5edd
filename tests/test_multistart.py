"""solve --starts K: multi-start over MPI sub-communicators.

  * the outcome does not depend on how the ranks are grouped: 4 ranks with --ranks-per-start 1
    and 2 give the same starts.csv rows (start, strategy, iterations, reason, early stop; losses
    up to rounding) and the same best X, Y;
  * racing stops poor starts early once a good point is known, and saves iterations against
    --no-race, with the same best answer;
  * a signal mid-ensemble writes a checkpoint of the finished rounds, and the restart ends with
    the uninterrupted run's result;
  * --starts auto stops at an exact fit, or when the best minimum was reached by 3 starts and the
    16 after its first did no better (checked against that rule recomputed from starts.csv), or
    at --max-starts; a restart from its last checkpoint does not run more;
  * bad configurations are refused with a message.
"""
import csv
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from arutil import ATTNREG, ENV, run, summary  # noqa: E402

TMP = tempfile.mkdtemp(prefix="attnreg-ms-")


def rows(out):
    with open(os.path.join(out, "starts.csv")) as f:
        return list(csv.DictReader(f))


class MultiStart(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = os.path.join(TMP, "p")
        run(2, "generate", "--n", 256, "--d", 6, "--seed", 2, "--out", cls.data, "--quiet")

    def solve(self, np_, out, *extra, check=True, env=None, quiet=True, data=None):
        cmd = ["mpirun", "--oversubscribe", "-n", str(np_), ATTNREG, "solve", "--data", data or self.data, "--out",
               out] + (["--quiet"] if quiet else []) + [str(a) for a in extra]
        p = subprocess.run(cmd, env=env or ENV, capture_output=True, text=True, timeout=1200)
        if check:
            self.assertEqual(p.returncode, 0, p.stderr)
        return p

    def same_rows(self, a, b):
        """The same starts (strategy, start scale); a start that converged in both runs to the same
        point (reason, loss, iterations); and nearly all starts alike.  Another grouping sums the rows
        of an evaluation in another order: a start that wanders near a saddle (uniform attention) for
        a hundred iterations can amplify that rounding into another path, so a few unconverged starts
        may differ; the best point may not."""
        self.assertEqual(len(a), len(b))
        alike = 0
        for x, y in zip(a, b):
            self.assertEqual((x["start"], x["strategy"]), (y["start"], y["strategy"]))
            self.assertLessEqual(abs(float(x["scale"]) - float(y["scale"])), 1e-12 * max(1, abs(float(x["scale"]))))
            same = all(x[k] == y[k] for k in ("iterations", "reason", "stopped_early")) and \
                abs(float(x["rel_loss"]) - float(y["rel_loss"])) <= 1e-8 * max(float(x["rel_loss"]), 1e-20)
            if x["reason"].startswith("CONVERGED") and y["reason"].startswith("CONVERGED") and \
                    min(float(x["rel_loss"]), float(y["rel_loss"])) < 1e-20:
                # the global minimum in both, the same way (which test ends a run at the rounding
                # floor, gttol or steptol, and one last step there, are rounding)
                self.assertLessEqual(abs(int(x["iterations"]) - int(y["iterations"])), 1, (x, y))
                self.assertLess(max(float(x["rel_loss"]), float(y["rel_loss"])), 1e-20, (x, y))
                same = True
            alike += same
        self.assertGreaterEqual(alike, 0.75 * len(a), "only %d of %d starts alike" % (alike, len(a)))

    def test_grouping_does_not_change_the_outcome(self):
        outs = {}
        for R in (1, 2):
            outs[R] = os.path.join(TMP, "r%d" % R)
            self.solve(4, outs[R], "--starts", 16, "--strategy", "portfolio", "--ranks-per-start", R)
        self.same_rows(rows(outs[1]), rows(outs[2]))
        s1, s2 = summary(outs[1] + "/summary.json"), summary(outs[2] + "/summary.json")
        self.assertEqual((s1["groups"], s2["groups"]), (4, 2))
        self.assertEqual(s1["best_start"], s2["best_start"])
        self.assertLessEqual(s1["rel_loss"], 1e-20)  # the planted global minimum was found
        for f in ("X.npy", "Y.npy"):
            a, b = np.load(os.path.join(outs[1], f)), np.load(os.path.join(outs[2], f))
            self.assertLessEqual(np.abs(a - b).max(), 1e-8 * np.abs(a).max())
        # the written X, Y are the best start's: eval agrees with the summary
        run(1, "eval", "--data", self.data, "--x", outs[1] + "/X.npy", "--y", outs[1] + "/Y.npy", "--out",
            os.path.join(TMP, "ev"), "--quiet")
        self.assertLessEqual(summary(os.path.join(TMP, "ev", "eval.json"))["rel_loss"], 1e-20)

    def test_racing_saves_iterations(self):
        # start 0 (generate's X0, near the truth) reaches the global minimum in round 1, so poor
        # stationary points of later rounds are recognised and abandoned
        raced, full = os.path.join(TMP, "race"), os.path.join(TMP, "norace")
        self.solve(2, raced, "--x0", self.data + "/X0.npy", "--starts", 24, "--start-scale", 1)
        self.solve(2, full, "--x0", self.data + "/X0.npy", "--starts", 24, "--start-scale", 1, "--no-race")
        sr, sf = summary(raced + "/summary.json"), summary(full + "/summary.json")
        self.assertGreater(sr["stopped_early"], 0)
        self.assertEqual(sf["stopped_early"], 0)
        self.assertLess(sr["iterations_total"], sf["iterations_total"])
        self.assertEqual(sr["best_start"], sf["best_start"])
        stopped = [r for r in rows(raced) if r["stopped_early"] == "1"]
        self.assertTrue(all(r["reason"] == "STOPPED_EARLY" and float(r["rel_loss"]) > 1e-3 for r in stopped), stopped)

    def test_signal_and_restart(self):
        full = os.path.join(TMP, "ck-full")
        self.solve(2, full, "--starts", 16, "--strategy", "starts")
        ck = os.path.join(TMP, "ms.ckpt")
        out = os.path.join(TMP, "ck-out")
        p = self.solve(2, out, "--starts", 16, "--strategy", "starts", "--checkpoint", ck, check=False,
                       env=dict(ENV, ATTNREG_FAULT="signal:60:0"))
        self.assertEqual(p.returncode, 75, p.stderr)
        self.assertIn("multi-start stopped by a signal", p.stderr)
        self.assertTrue(os.path.exists(ck))
        self.assertFalse(os.path.exists(out))
        self.solve(3, out, "--starts", 16, "--strategy", "starts", "--restart", ck)
        self.same_rows(rows(full), rows(out))
        self.assertEqual(summary(out + "/summary.json")["best_start"], summary(full + "/summary.json")["best_start"])
        p = self.solve(2, os.path.join(TMP, "ck-bad"), "--starts", 16, "--strategy", "norm", "--restart", ck,
                       check=False)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("written with --starts 16 --strategy starts --no-race off --start-seed 1 --start-scale 1; "
                      "this run has --strategy norm", p.stderr)
        # a single solve's checkpoint, and the multi-start format of earlier versions, are refused
        p = self.solve(2, os.path.join(TMP, "ck-bad"), "--restart", ck, check=False)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("a multi-start checkpoint: continue it with the --starts it was written with", p.stderr)
        old = os.path.join(os.path.dirname(__file__), "fuzz", "corpus_checkpoint", "old_arensm.ckpt")
        p = self.solve(2, os.path.join(TMP, "ck-bad"), "--starts", 16, "--restart", old, check=False)
        self.assertEqual(p.returncode, 3, p.stderr)
        self.assertIn("a multi-start checkpoint of an earlier attnreg (format ARENSM 1)", p.stderr)

    def test_memory_budget_picks_the_step(self):
        """Bug: with --starts the memory budget's choice of step was ignored (each start re-chose it
        without a budget and ran the dense Cholesky).  n = 512, d = 24: under --mem-per-rank 0.04 only
        the matrix-free step fits on one rank; every start must run it, and summary.json says so.
        Also a run without --quiet: its configuration line, round lines and final line."""
        data = os.path.join(TMP, "p512")
        run(2, "generate", "--n", 512, "--d", 24, "--seed", 1, "--out", data, "--quiet")
        # the premise: on one rank (a group of --ranks-per-start 1) the plan's auto choice is CG
        # under this budget and the dense step without one
        plan = run(1, "plan", "--n", 512, "--d", 24, "--ranks", 1, "--mem-per-rank", 0.04).stdout
        self.assertIn("matrix-free CG step", plan)
        self.assertIn("dense Cholesky step", run(1, "plan", "--n", 512, "--d", 24, "--ranks", 1).stdout)
        out = os.path.join(TMP, "budget")
        p = self.solve(2, out, "--mem-per-rank", 0.04, "--starts", 2, "--max-iter", 2, "--no-race", quiet=False,
                       data=data)
        h = np.genfromtxt(out + "/history.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
        self.assertTrue((h["cg_iters"][1:] > 0).all(), h["cg_iters"])  # every step of the best start was CG
        s = summary(out + "/summary.json")
        self.assertEqual(s["linear_solver"], "cg")
        self.assertEqual(s["options"]["linear-solver"], "cg")
        self.assertGreater(s["cg_iterations"], 0)
        self.assertGreater(s["hessian_vector_products"], 0)
        for key in ("phases", "peak_rss_mb", "blas", "flops", "gflops", "grid", "tile", "chunk"):
            self.assertIn(key, s)  # the same fields as a single solve's summary.json
        for ph in ("io", "setup", "loss_gradient", "ring", "total"):
            self.assertGreaterEqual(s["phases"][ph]["max"], s["phases"][ph]["avg"])
        self.assertGreater(s["peak_rss_mb"]["max"], 0)
        lines = p.stdout.splitlines()
        self.assertRegex(lines[0], r"^attnreg \S+ solve: 2 starts \(starts, no racing\) in 2 groups of 1 ranks, "
                         r"n=512 d=24 m=24$")
        best = s["best_start"]
        self.assertIn("round 1/1: starts 0-1 done, best start %d: rel_loss %.3e (DIVERGED_MAXITS)"
                      % (best, s["rel_loss"]), p.stdout)
        self.assertIn("best of 2 starts: start %d, loss %.10e" % (best, s["loss"]), lines[-1])

    def test_signal_before_any_start_finished(self):
        """Bug: a signal before any start of the round finished printed `best start -1` and read the
        row before the table (rows[-1]).  The signal (test hook: raised during setup, on every rank)
        stops the job with status 75, the round line says so; the checkpoint it writes holds
        no round, and the restart from it runs the whole ensemble.  Not --quiet: the round line
        is the one that went wrong."""
        ck, out = os.path.join(TMP, "early.ckpt"), os.path.join(TMP, "early")
        p = self.solve(2, out, "--starts", 8, "--checkpoint", ck, check=False, quiet=False,
                       env=dict(ENV, ATTNREG_FAULT="signal-startup:1"))
        self.assertEqual(p.returncode, 75, p.stderr)
        self.assertNotIn("best start -1", p.stdout)
        self.assertIn("round 1/1: starts 0-7 stopped by a signal (the round is redone on --restart)", p.stdout)
        self.assertIn("multi-start stopped by a signal after 0 of 8 starts; checkpoint written to", p.stderr)
        self.assertFalse(os.path.exists(out))
        r = self.solve(2, out, "--starts", 8, "--restart", ck, quiet=False)
        self.assertIn("round 1/1: starts 0-7 done, best start", r.stdout)
        self.assertEqual(len(rows(out)), 8)

    def auto_stop(self, rs, cap):
        """The starts --starts auto should have run: the rule of cmd_multistart.c recomputed from the
        rows of whole rounds (racing sees earlier rounds only, so a prefix of rounds is what a run
        with that many starts would have made)."""
        for k_end in range(8, cap, 8):
            done = rs[:k_end]
            best = min(done, key=lambda r: (float(r["loss"]), int(r["start"])))
            conv = [r for r in done if r["reason"].startswith("CONVERGED") and r["stopped_early"] == "0"]
            if best["reason"].startswith("CONVERGED") and float(best["rel_loss"]) <= 1e-10:
                return k_end, "an exact fit"
            hit = [int(r["start"]) for r in conv
                   if abs(float(r["loss"]) - float(best["loss"])) <= 1e-6 * abs(float(best["loss"])) + 1e-300]
            if len(hit) >= 3 and k_end - hit[0] > 16:
                return k_end, "the best minimum reached by %d starts" % len(hit)
        return cap, "--max-starts %d reached" % cap

    def test_starts_auto(self):
        # an exact fit in round 1 (start 0: generate's X0, near the truth): 8 starts, not 128
        out = os.path.join(TMP, "auto-exact")
        p = self.solve(2, out, "--x0", self.data + "/X0.npy", "--starts", "auto", quiet=False)
        s = summary(out + "/summary.json")
        self.assertEqual((s["starts"], s["max_starts"], len(rows(out))), (8, 128, 8))
        self.assertIn("an exact fit", s["starts_auto_stop"])
        self.assertEqual(s["options"]["starts"], "auto")
        self.assertIn("starts auto: 8 of at most 128 starts, %d iterations" % s["iterations_total"], p.stdout)
        # noise in B: no exact fit; the run stops where the rule says, or at the cap
        noisy = os.path.join(TMP, "noisy")
        run(2, "generate", "--n", 128, "--d", 2, "--seed", 2, "--noise", 0.1, "--x-scale", 0.5, "--out", noisy, "--quiet")
        for cap in (128, 16):
            out = os.path.join(TMP, "auto-noisy-%d" % cap)
            full = os.path.join(TMP, "noisy-full-%d" % cap)
            self.solve(2, out, "--starts", "auto", "--max-starts", cap, "--checkpoint", out + ".ckpt", data=noisy)
            self.solve(2, full, "--starts", cap, data=noisy)
            s, rs = summary(out + "/summary.json"), rows(out)
            k, why = self.auto_stop(rows(full), cap)
            self.assertEqual(s["starts"], k, (s["starts_auto_stop"], why))
            self.assertIn(why, s["starts_auto_stop"])
            self.assertEqual(len(rs), k)
            self.assertEqual([r["iterations"] for r in rs], [r["iterations"] for r in rows(full)[:k]])
            if cap == 128:  # the rule fires here, so the test sees it, not only the cap
                self.assertLess(k, cap)
            # the restart from its last checkpoint stops at once, with the same answer
            again = os.path.join(TMP, "auto-again-%d" % cap)
            self.solve(3, again, "--starts", "auto", "--max-starts", cap, "--restart", out + ".ckpt", data=noisy)
            self.assertEqual(summary(again + "/summary.json")["starts"], k)
            self.assertEqual(summary(again + "/summary.json")["best_start"], s["best_start"])
        # a --loss-target just above the best minimum, which start 0 reaches (round 1 races nothing: its
        # starts run as in the fixed-K run until they meet the target): the rule stops after that round
        first = rows(os.path.join(TMP, "noisy-full-128"))[:8]
        target = 1.001 * min(float(r["rel_loss"]) for r in first)
        self.assertLessEqual(float(first[0]["rel_loss"]), target)
        out = os.path.join(TMP, "auto-target")
        self.solve(2, out, "--starts", "auto", "--loss-target", target, data=noisy)
        s = summary(out + "/summary.json")
        self.assertEqual(s["starts"], 8, s["starts_auto_stop"])
        self.assertIn("the loss target", s["starts_auto_stop"])
        self.assertLessEqual(s["rel_loss"], target)
        p = self.solve(2, os.path.join(TMP, "bad"), "--starts", "many", check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--starts: expected an integer or auto, got 'many'", p.stderr)

    def test_refusals(self):
        p = self.solve(4, os.path.join(TMP, "bad"), "--starts", 4, "--ranks-per-start", 3, check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--ranks-per-start 3: must divide the 4 ranks", p.stderr)
        self.assertFalse(os.path.exists(os.path.join(TMP, "bad")))


if __name__ == "__main__":
    unittest.main(verbosity=2)

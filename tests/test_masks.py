"""Attention masks through the program: packed sequences (--segments, DIR/segments.npy) and causal
masks (--causal) in generate, eval, solve and plan; the layouts; rank-count-independent iterates;
the one-line errors for bad segment files.  NumPy is the oracle of the masked model."""
import os
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import arutil  # noqa: E402
from arutil import run, summary  # noqa: E402

TMP = tempfile.mkdtemp(prefix="attnreg-masks-")


def masked_forward(A1, A2, A3, X, Y, offsets, causal):
    """softmax(A1 X A2^T) A3 Y with each row seeing only its segment (and keys <= itself if causal)."""
    n = A1.shape[0]
    S = A1 @ X @ A2.T
    ok = np.zeros((n, n), dtype=bool)
    for a, b in zip(offsets[:-1], offsets[1:]):
        ok[a:b, a:b] = True
    if causal:
        ok &= np.tril(np.ones((n, n), dtype=bool))
    S = np.where(ok, S, -np.inf)
    F = np.exp(S - S.max(axis=1, keepdims=True))
    F /= F.sum(axis=1, keepdims=True)
    return F @ A3 @ Y


def load_inputs(d):
    if os.path.exists(d + "/A.npy"):
        A = np.load(d + "/A.npy")
        return A, A, A
    return tuple(np.load("%s/A%d.npy" % (d, k)) for k in (1, 2, 3))


class Generate(unittest.TestCase):
    def test_segments_and_causal(self):
        """B is computed per segment (and causally): NumPy's masked model reproduces it; the files do
        not depend on the rank count; segments.npy holds the offsets."""
        specs = [("3", False, [0, 20, 40, 60]), ("7,1,30,22", True, [0, 7, 8, 38, 60]), ("7,1,30,22", False, None)]
        for spec, causal, expect in specs:
            outs = []
            for np_ in (1, 3):
                out = "%s/gen-%s-%d-%d" % (TMP, spec.replace(",", "_"), causal, np_)
                run(np_, "generate", "--n", 60, "--d", 4, "--m", 3, "--seed", 5, "--segments", spec, "--out", out,
                    "--quiet", *(["--causal"] if causal else []))
                outs.append(out)
            off = np.load(outs[0] + "/segments.npy")
            self.assertEqual(off.dtype, np.int64)
            if expect:
                self.assertEqual(off.tolist(), expect)
            for f in ("A1", "A2", "A3", "B"):
                self.assertTrue(np.array_equal(np.load("%s/%s.npy" % (outs[0], f)), np.load("%s/%s.npy" % (outs[1], f))))
            A1, A2, A3 = load_inputs(outs[0])
            B = masked_forward(A1, A2, A3, np.load(outs[0] + "/X_true.npy"), np.load(outs[0] + "/Y_true.npy"), off,
                               causal)
            self.assertLessEqual(np.abs(B - np.load(outs[0] + "/B.npy")).max(), 1e-13 * np.abs(B).max())

    def test_bad_spec(self):
        for spec, text in (("0", "count"), ("61", "count"), ("10,0,50", "length 2"), ("10,20", "add up to 30, not n = 60")):
            p = run(0, "generate", "--n", 60, "--d", 4, "--segments", spec, "--out", TMP + "/bad", check=False)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn(text, p.stderr)
            self.assertEqual(len(p.stderr.strip().splitlines()), 1, p.stderr)
        self.assertFalse(os.path.exists(TMP + "/bad"))


class Solve(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # a calibration set: unequal sequences, one of length 1, causal
        cls.causal = arutil.planted(TMP, "cal", n=600, d=6, m=4, seed=3, segments="150,1,97,200,52,100", causal=True)
        cls.plain = arutil.planted(TMP, "cal-plain", n=600, d=6, m=4, seed=4, segments="150,1,97,200,52,100")

    def solve(self, np_, data, out, *extra):
        run(np_, "solve", "--data", data, "--x0", data + "/X0.npy", "--out", out, "--quiet", *extra)
        return summary(out + "/summary.json")

    def test_rank_count_independent(self):
        """The same iterates (1e-8) on 1-4 ranks, with the automatic layout (groups of ranks by
        sequence, zigzag pieces) and the contiguous one (sequences straddle ranks)."""
        for data, extra in ((self.causal, ["--causal"]), (self.plain, [])):
            ref = None
            for np_, layout in ((1, "auto"), (2, "auto"), (3, "auto"), (4, "auto"), (3, "contiguous"), (4, "contiguous")):
                out = "%s/ri-%s-%d-%s" % (TMP, os.path.basename(data), np_, layout)
                s = self.solve(np_, data, out, "--layout", layout, "--max-iter", 6, *extra)
                X, Y = np.load(out + "/X.npy"), np.load(out + "/Y.npy")
                if ref is None:
                    ref = (X, Y, s)
                    continue
                self.assertEqual(s["iterations"], ref[2]["iterations"], (np_, layout))
                e = max(np.abs(X - ref[0]).max() / np.abs(ref[0]).max(), np.abs(Y - ref[1]).max() / np.abs(ref[1]).max())
                self.assertLessEqual(e, 1e-8, "%s on %d ranks, %s layout: %.3g" % (data, np_, layout, e))

    def test_converges_under_the_mask(self):
        """From X0 the masked problem is solved to rounding, by both steps and both methods; the same
        data solved without its causal mask is not (so the mask took effect)."""
        for extra in ([], ["--linear-solver", "cg"], ["--method", "alternating"]):
            s = self.solve(2, self.causal, TMP + "/conv", "--causal", *extra)
            self.assertTrue(s["converged"], (extra, s["reason"]))
            self.assertLessEqual(s["rel_loss"], 1e-12, extra)
        s = self.solve(2, self.causal, TMP + "/nomask")
        self.assertGreater(s["rel_loss"], 1e-6)

    def test_segments_file_found_in_data_dir(self):
        """--data DIR uses DIR/segments.npy; --segments FILE names it; --segments none ignores it; the
        evaluated loss is the masked model's."""
        X, Y = np.load(self.plain + "/X0.npy"), np.load(self.plain + "/Y_true.npy")
        A1, A2, A3 = load_inputs(self.plain)
        off = np.load(self.plain + "/segments.npy")
        B = np.load(self.plain + "/B.npy")
        losses = {}
        for name, extra in (("auto", []), ("file", ["--segments", self.plain + "/segments.npy"]), ("none", ["--segments", "none"])):
            out = TMP + "/ev-" + name
            run(2, "eval", "--data", self.plain, "--x", self.plain + "/X0.npy", "--y", self.plain + "/Y_true.npy",
                "--out", out, "--quiet", *extra)
            losses[name] = summary(out + "/eval.json")["loss"]
        ref = ((masked_forward(A1, A2, A3, X, Y, off, False) - B) ** 2).sum()
        ref_none = ((masked_forward(A1, A2, A3, X, Y, [0, 600], False) - B) ** 2).sum()
        self.assertAlmostEqual(losses["auto"], ref, delta=1e-11 * ref)
        self.assertAlmostEqual(losses["file"], ref, delta=1e-11 * ref)
        self.assertAlmostEqual(losses["none"], ref_none, delta=1e-11 * ref_none)
        self.assertGreater(abs(ref - ref_none), 1e-3 * ref)

    def test_mask_in_reports_and_checkpoints(self):
        """summary.json records the mask and the masked work; a checkpoint is tied to its mask: a
        restart with other segments or without --causal is refused, with the same one it goes on."""
        ck = TMP + "/ck-mask.bin"
        s = self.solve(2, self.causal, TMP + "/ck-a", "--causal", "--checkpoint", ck, "--checkpoint-every", 1,
                       "--max-iter", 2)
        self.assertEqual((s["segments"], s["causal"]), (6, True))
        w = s["work"]
        self.assertLess(w["pairs"], 600 * 600 / 4)   # causal, six sequences: a small part of n^2
        self.assertAlmostEqual(w["imbalance"], w["area_max"] / w["area_avg"], places=3)
        self.assertGreaterEqual(w["imbalance"], 1.0)
        self.assertTrue(0 <= w["ring_wait_fraction"] <= 1)
        self.assertEqual(s["layout"]["groups"] >= 1, True)
        plain = self.solve(1, self.plain, TMP + "/ck-p", "--segments", "none", "--max-iter", 1)
        self.assertEqual((plain["segments"], plain["causal"]), (1, False))
        other = TMP + "/segs-other.npy"
        np.save(other, np.array([0, 300, 600], dtype=np.int64))
        for extra in (["--segments", "none", "--causal"], ["--segments", other, "--causal"], []):
            p = run(2, "solve", "--data", self.causal, "--restart", ck, "--out", TMP + "/ck-b", "--quiet", *extra,
                    check=False)
            self.assertEqual(p.returncode, 3, (extra, p.stderr[-300:]))
            self.assertIn("written for other input data (the mask (--segments, --causal) checksum differs)", p.stderr)
        run(3, "solve", "--data", self.causal, "--causal", "--restart", ck, "--out", TMP + "/ck-c", "--quiet")
        s = summary(TMP + "/ck-c/summary.json")
        self.assertTrue(s["converged"], s["reason"])

    def test_exponentials_counted(self):
        """eval.json counts the exponentials: one per computed logit in each of the two passes
        (forward, backward; the Hessian's parts come with the backward pass), so the mask's
        skipped boxes cost none: 2 x the box area, far below 2 n^2 under a causal calibration set."""
        for h in ("none", "exact"):
            out = TMP + "/exps-" + h
            run(2, "eval", "--data", self.causal, "--causal", "--x", self.causal + "/X0.npy",
                "--y", self.causal + "/Y_true.npy", "--hessian", h, "--out", out, "--quiet")
            s = summary(out + "/eval.json")
            self.assertEqual(s["exponentials"], 2 * s["work"]["area_avg"] * s["ranks"], h)
            self.assertLess(s["exponentials"], 0.25 * 2 * 600 ** 2)

    def test_multistart_under_the_mask(self):
        """Multi-start honours the mask: the same best start and point on 1 and 2 ranks, and it is
        the masked problem's minimum."""
        outs = []
        for np_ in (1, 2):
            out = "%s/ms-%d" % (TMP, np_)
            run(np_, "solve", "--data", self.causal, "--causal", "--starts", 3, "--out", out, "--quiet")
            outs.append(out)
        s = [summary(o + "/summary.json") for o in outs]
        self.assertEqual(s[0]["best_start"], s[1]["best_start"])
        self.assertLessEqual(np.abs(np.load(outs[0] + "/X.npy") - np.load(outs[1] + "/X.npy")).max(),
                             1e-8 * np.abs(np.load(outs[0] + "/X.npy")).max())


class Plan(unittest.TestCase):
    def test_masked_plan(self):
        """plan --segments/--causal: one causal sequence in zigzag pieces over one ring, about half the
        pairs; 16 packed sequences on 2 ranks in two groups of one, 1/16 of the pairs, no ring traffic."""
        off = TMP + "/seg16.npy"
        np.save(off, np.arange(0, 16385, 1024, dtype=np.int64))
        p = run(0, "plan", "--n", 16384, "--d", 16, "--ranks", 2, "--segments", off).stdout
        self.assertIn("16 segments", p)
        self.assertIn("2 groups", p)
        self.assertIn("(6.2% of n^2)", p)
        self.assertRegex(p, r"ring 0\.000,")
        p = run(0, "plan", "--n", 65536, "--d", 8, "--ranks", 4, "--causal").stdout
        self.assertIn("zigzag", p)
        self.assertIn("(50.0% of n^2)", p)
        self.assertIn("max/avg 1.000", p)


class BadSegments(unittest.TestCase):
    """A bad segments file: one line naming it, exit status 3 (bad data) on every rank, nothing written."""

    @classmethod
    def setUpClass(cls):
        cls.data = arutil.planted(TMP, "small", n=40, d=3, seed=1)

    def check(self, content, text, np_=0, save=None):
        path = TMP + "/bad-seg.npy"
        if save:
            save(path)
        else:
            np.save(path, content)
        out = TMP + "/bad-out"
        p = run(np_, "solve", "--data", self.data, "--segments", path, "--out", out, check=False)
        self.assertEqual(p.returncode, 3, p.stderr)
        self.assertIn(path, p.stderr)
        self.assertIn(text, p.stderr)
        self.assertEqual(len([l for l in p.stderr.splitlines() if "error" in l]), 1, p.stderr)
        self.assertFalse(os.path.exists(out))

    def test_catalogue(self):
        self.check(np.array([0, 10, 10, 40], dtype=np.int64), "increase strictly (o_1 = 10, o_2 = 10)")
        self.check(np.array([0, 30, 20, 40], dtype=np.int64), "increase strictly")
        self.check(np.array([1, 10, 40], dtype=np.int64), "first offset must be 0")
        self.check(np.array([0, 10, 39], dtype=np.int64), "last offset is 39 but the data has n = 40")
        self.check(np.array([0, 10, 50], dtype=np.int64), "last offset is 50")
        self.check(np.array([0.0, 10.0, 40.0]), "need int64 or int32")
        self.check(np.array([[0, 10], [20, 40]], dtype=np.int64), "must be a 1-D array")
        self.check(np.array([40], dtype=np.int64), "at least 2 offsets")
        self.check(np.array([0, 10, 40], dtype=">i8"), "big-endian")
        self.check(None, "not an npy file", save=lambda p: open(p, "w").write("0 10 40\n"))
        self.check(np.array([0, 10, 10, 40], dtype=np.int64), "increase strictly", np_=2)

    def test_int32_and_missing(self):
        np.save(TMP + "/seg32.npy", np.array([0, 13, 40], dtype=np.int32))
        xy = ["--x", self.data + "/X0.npy", "--y", self.data + "/Y_true.npy", "--out", TMP + "/ev32"]
        run(0, "eval", "--data", self.data, *xy, "--segments", TMP + "/seg32.npy", "--quiet")
        p = run(0, "eval", "--data", self.data, *xy, "--segments", TMP + "/nope.npy", check=False)
        self.assertEqual(p.returncode, 4, p.stderr)
        self.assertIn("nope.npy: cannot open", p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)

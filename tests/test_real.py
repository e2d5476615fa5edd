"""The real trained head in tests/data/real/ (PP-OCRv4 SVTR block 0, head 0): attnreg eval at its
stored truth gives zero loss up to rounding on 1-3 ranks, and a perturbed X does not."""
import os
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from arutil import run, summary  # noqa: E402

REAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "real", "ppocr_v4_svtr_b0h0")
MULTI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "real", "ppocr_v4_svtr_multi16_b0h0")
TMP = tempfile.mkdtemp(prefix="attnreg-real-")


class RealHead(unittest.TestCase):
    def test_data_matches_info(self):
        info = summary(os.path.join(REAL, "info.json"))
        A, B, X, Y = (np.load(os.path.join(REAL, f + ".npy")) for f in ("A", "B", "X_true", "Y_true"))
        n, d, m = info["n"], info["d"], info["d_k"]
        self.assertEqual((A.shape, B.shape, X.shape, Y.shape), ((n, d), (n, m), (d, d), (d, m)))
        self.assertEqual(np.linalg.matrix_rank(X), info["d_k"])
        S = A @ X @ A.T
        F = np.exp(S - S.max(axis=1, keepdims=True))
        F /= F.sum(axis=1, keepdims=True)
        self.assertLess(np.abs(F @ A @ Y - B).max(), 1e-14 * np.abs(B).max())

    def test_eval_at_truth(self):
        for np_ in (1, 2, 3):
            out = os.path.join(TMP, "truth-%d" % np_)
            run(np_, "eval", "--data", REAL, "--x", REAL + "/X_true.npy", "--y", REAL + "/Y_true.npy", "--out", out,
                "--quiet")
            e = summary(out + "/eval.json")
            self.assertEqual((e["n"], e["d"], e["m"], e["ranks"]), (208, 120, 15, np_))
            self.assertLessEqual(e["rel_loss"], 1e-20, np_)
        # A 1 % perturbation of X is seen: the eval is not blind to X.
        X = np.load(REAL + "/X_true.npy")
        xp = os.path.join(TMP, "X_perturbed.npy")
        np.save(xp, X * (1 + 0.01 * np.random.default_rng(0).standard_normal(X.shape)))
        out = os.path.join(TMP, "perturbed")
        run(2, "eval", "--data", REAL, "--x", xp, "--y", REAL + "/Y_true.npy", "--out", out, "--quiet")
        self.assertGreater(summary(out + "/eval.json")["rel_loss"], 1e-8)


class CalibrationSet(unittest.TestCase):
    """The same head on 16 text lines packed by rows (segments.npy) and 4 held-out ones: at the truth
    the masked loss is zero on 1-3 ranks and both layouts, and on the held-out lines; the same rows
    read as one sequence (--segments none) are far from it (|B|^2 = 1e3, loss 85)."""

    def test_eval_at_truth(self):
        for np_, layout in ((1, "auto"), (2, "auto"), (3, "auto"), (3, "contiguous")):
            out = os.path.join(TMP, "multi-%d-%s" % (np_, layout))
            run(np_, "eval", "--data", MULTI, "--x", MULTI + "/X_true.npy", "--y", MULTI + "/Y_true.npy",
                "--layout", layout, "--out", out, "--quiet")
            e = summary(out + "/eval.json")
            self.assertEqual((e["n"], e["d"], e["m"]), (2192, 120, 15))
            self.assertLessEqual(e["rel_loss"], 1e-20, (np_, layout))
        held = os.path.join(MULTI, "heldout")
        out = os.path.join(TMP, "multi-heldout")
        run(2, "eval", "--data", held, "--x", held + "/X_true.npy", "--y", held + "/Y_true.npy", "--out", out, "--quiet")
        self.assertLessEqual(summary(out + "/eval.json")["rel_loss"], 1e-20)
        out = os.path.join(TMP, "multi-unmasked")
        run(2, "eval", "--data", MULTI, "--segments", "none", "--x", MULTI + "/X_true.npy", "--y",
            MULTI + "/Y_true.npy", "--out", out, "--quiet")
        e = summary(out + "/eval.json")
        self.assertGreater(e["loss"], 80)
        self.assertLess(e["loss"], 90)


if __name__ == "__main__":
    unittest.main(verbosity=2)

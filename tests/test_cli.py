"""attnreg generate / eval / errors through the command line, checked with numpy."""
import json
import os
import re
import shutil
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from arutil import run, summary, tree_bytes  # noqa: E402

TMP = tempfile.mkdtemp(prefix="attnreg-cli-")
REF = os.path.join(os.path.dirname(__file__), "data", "reference")


def softmax_forward(A1, A2, A3, X, Y):
    S = A1 @ X @ A2.T
    F = np.exp(S - S.max(axis=1, keepdims=True))
    F /= F.sum(axis=1, keepdims=True)
    return F @ A3 @ Y


class Generate(unittest.TestCase):
    def test_bit_identical_across_ranks(self):
        for self_attn in (False, True):
            trees = []
            for np_ in (1, 2, 3, 4):
                out = os.path.join(TMP, "gen%d%s" % (np_, "s" if self_attn else ""))
                args = ["generate", "--n", 37, "--d", 3, "--m", 5, "--seed", 42, "--noise", 0.01, "--out", out, "--quiet"]
                run(np_, *(args + (["--self"] if self_attn else [])))
                trees.append(tree_bytes(out))
            names = {"B.npy", "X_true.npy", "Y_true.npy", "X0.npy"} | ({"A.npy"} if self_attn else {"A1.npy", "A2.npy", "A3.npy"})
            self.assertEqual(set(trees[0]), names)
            for t in trees[1:]:
                self.assertEqual(t, trees[0])

    def test_planted_content(self):
        out = os.path.join(TMP, "content")
        run(3, "generate", "--n", 400, "--d", 6, "--m", 4, "--seed", 5, "--x-scale", 0.5, "--out", out, "--quiet")
        A1, A2, A3, B = (np.load(os.path.join(out, f + ".npy")) for f in ("A1", "A2", "A3", "B"))
        X, Y, X0 = (np.load(os.path.join(out, f + ".npy")) for f in ("X_true", "Y_true", "X0"))
        self.assertEqual(A1.shape, (400, 6))
        self.assertEqual(B.shape, (400, 4))
        self.assertEqual(Y.shape, (6, 4))
        self.assertLess(np.abs(B - softmax_forward(A1, A2, A3, X, Y)).max(), 1e-12)  # noiseless
        self.assertAlmostEqual(A1.std(), 1 / np.sqrt(6), delta=0.03)
        self.assertAlmostEqual(X.std(), 0.5, delta=0.2)
        self.assertAlmostEqual((X0 - X).std(), 0.3 * 0.5, delta=0.07)
        self.assertFalse(np.allclose(A1, A2))


class Eval(unittest.TestCase):
    def test_reference_cases(self):
        for case in sorted(os.listdir(REF)):
            d = os.path.join(REF, case)
            with open(os.path.join(d, "meta.json")) as f:
                meta = json.load(f)
            for np_, extra, grid, nb, tile in [(1, [], "1x1", None, None),
                                               (3, ["--grid", "3x1", "--nb", "4"], "3x1", 4, None),
                                               (4, ["--nb", "3", "--tile", "1"], "2x2", 3, 1)]:
                out = os.path.join(TMP, "eval-%s-%d" % (case, np_))
                run(np_, "eval", "--a1", d + "/A1.npy", "--a2", d + "/A2.npy", "--a3", d + "/A3.npy", "--b",
                    d + "/B.npy", "--x", d + "/X.npy", "--y", d + "/Y.npy", "--hessian", "exact", "--out", out,
                    "--quiet", *extra)
                e = summary(out + "/eval.json")
                self.assertLessEqual(abs(e["loss"] - meta["loss"]), 1e-11 * meta["loss"])
                for f in ("grad_X", "grad_Y", "hessian"):
                    ref = np.load(os.path.join(d, f + ".npy"))
                    got = np.load(os.path.join(out, f + ".npy"))
                    self.assertEqual(got.shape, ref.shape)
                    self.assertLessEqual(np.abs(got - ref).max(), 1e-11 * np.abs(ref).max(), (case, np_, f))
                self.assertEqual(e["ranks"], np_)
                self.assertEqual(e["n"], meta["n"])
                self.assertEqual(e["grid"], grid)  # the options took effect
                if nb:
                    self.assertEqual(e["nb"], nb)
                if tile:
                    self.assertEqual(e["tile"], tile)

    def test_gauss_newton_at_zero_residual(self):
        """At a zero-residual point Gauss-Newton and exact Hessians coincide; elsewhere they differ."""
        out = os.path.join(TMP, "gn-data")
        run(2, "generate", "--n", 30, "--d", 3, "--m", 2, "--seed", 9, "--out", out, "--quiet")
        hs = {}
        for kind in ("exact", "gauss-newton"):
            for at in ("X_true", "X0"):
                o = os.path.join(TMP, "gn-%s-%s" % (kind, at))
                run(2, "eval", "--data", out, "--x", out + "/%s.npy" % at, "--y", out + "/Y_true.npy",
                    "--hessian", kind, "--out", o, "--quiet")
                hs[kind, at] = np.load(o + "/hessian.npy")
        scale = np.abs(hs["exact", "X_true"]).max()
        self.assertLess(np.abs(hs["exact", "X_true"] - hs["gauss-newton", "X_true"]).max(), 1e-12 * scale)
        self.assertGreater(np.abs(hs["exact", "X0"] - hs["gauss-newton", "X0"]).max(), 1e-4 * scale)
        self.assertGreaterEqual(np.linalg.eigvalsh(hs["gauss-newton", "X0"]).min(), -1e-10 * scale)

    def test_self_attention_dir(self):
        out = os.path.join(TMP, "selfdata")
        run(2, "generate", "--n", 20, "--d", 3, "--self", "--seed", 3, "--out", out, "--quiet")
        o = os.path.join(TMP, "self-eval")
        run(3, "eval", "--data", out, "--x", out + "/X_true.npy", "--y", out + "/Y_true.npy", "--out", o, "--quiet")
        self.assertLess(summary(o + "/eval.json")["loss"], 1e-25)


class NpyFormats(unittest.TestCase):
    def test_formats_through_eval_and_solve(self):
        """float32, Fortran order and format versions 2.0 and 3.0, in every input of eval and solve
        on 3 ranks (each reads its own rows of A1 and B), give bit for bit the results of float64,
        C-order, version 1.0 files holding the same values."""
        src = os.path.join(REF, "rect")
        vals = {f: np.load(os.path.join(src, f + ".npy")).astype(np.float32) for f in ("A1", "A2", "A3", "B", "X", "Y")}
        plain, mixed = os.path.join(TMP, "npy-plain"), os.path.join(TMP, "npy-mixed")
        layout = {"A1": (np.float32, "F", (2, 0)), "A2": (np.float32, "C", (3, 0)), "A3": (np.float64, "F", (1, 0)),
                  "B": (np.float32, "F", (3, 0)), "X": (np.float32, "F", (2, 0)), "Y": (np.float64, "F", (3, 0))}
        for d in (plain, mixed):
            os.makedirs(d, exist_ok=True)
        for f, v in vals.items():
            np.save(os.path.join(plain, f + ".npy"), v.astype(np.float64))
            dtype, order, version = layout[f]
            with open(os.path.join(mixed, f + ".npy"), "wb") as fh:
                np.lib.format.write_array(fh, np.asarray(v.astype(dtype), order=order), version=version)
            with open(os.path.join(mixed, f + ".npy"), "rb") as fh:  # the files are what they claim
                self.assertEqual(np.lib.format.read_magic(fh), version)
        results = {}
        for d in (plain, mixed):
            ev, so = d + "-eval", d + "-solve"
            run(3, "eval", "--data", d, "--x", d + "/X.npy", "--y", d + "/Y.npy", "--hessian", "exact", "--out", ev,
                "--quiet")
            run(3, "solve", "--data", d, "--x0", d + "/X.npy", "--y0", d + "/Y.npy", "--max-iter", 4, "--out", so,
                "--quiet")
            results[d] = [summary(ev + "/eval.json")["loss"]] + [
                np.load(os.path.join(ev, f)) for f in ("grad_X.npy", "grad_Y.npy", "hessian.npy")] + [
                np.load(os.path.join(so, f)) for f in ("X.npy", "Y.npy")] + [summary(so + "/summary.json")["loss"]]
        self.assertGreater(results[plain][0], 0)
        for a, b in zip(results[plain], results[mixed]):
            self.assertTrue(np.array_equal(a, b), (a, b))


class Progress(unittest.TestCase):
    """Progress lines (src/sys/progress.c), made to talk at once with ATTNREG_PROGRESS=0,0: on stderr,
    naming the unit (the iteration), its time so far and the phase with its share done and the
    time left of that phase; none under --quiet, none on stdout."""

    LINE = re.compile(r"^attnreg: (iteration \d+|start|eval) \(\d+\.\d s so far\): "
                      r"(evaluation( \d+% done, about \d+ s left of it)?|Cholesky factorisation)$")

    def test_lines(self):
        out = os.path.join(TMP, "progress-data")
        run(2, "generate", "--n", 96, "--d", 3, "--m", 2, "--seed", 3, "--out", out, "--quiet")
        env = {"ATTNREG_PROGRESS": "0,0"}
        p = run(2, "solve", "--data", out, "--x0", out + "/X0.npy", "--linear-solver", "cholesky", "--tile", 16,
                "--max-iter", 2, "--out", os.path.join(TMP, "progress-out"), env=env)
        lines = [l for l in p.stderr.splitlines() if "so far" in l]
        self.assertTrue(lines, p.stderr)
        for l in lines:
            self.assertRegex(l, self.LINE)
        self.assertTrue(any(l.startswith("attnreg: iteration 1 ") and "% done" in l for l in lines), lines)
        self.assertTrue(any("Cholesky factorisation" in l for l in lines), lines)
        self.assertNotIn("so far", p.stdout)
        p = run(2, "eval", "--data", out, "--x", out + "/X0.npy", "--y", out + "/Y_true.npy", "--tile", 16,
                "--out", os.path.join(TMP, "progress-eval"), env=env)
        self.assertTrue([l for l in p.stderr.splitlines() if l.startswith("attnreg: eval (")], p.stderr)
        p = run(2, "solve", "--data", out, "--max-iter", 2, "--quiet", "--out", os.path.join(TMP, "progress-q"), env=env)
        self.assertNotIn("so far", p.stderr + p.stdout)


class Errors(unittest.TestCase):
    """Bad input: one line on stderr naming the problem, documented exit code, OUT untouched."""

    def setUp(self):
        self.out = os.path.join(TMP, "kept")
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, "summary.json"), "w") as f:
            f.write("earlier result\n")

    def expect(self, np_, code, needle, *args):
        before = tree_bytes(self.out)
        p = run(np_, *args, check=False, timeout=60)
        self.assertEqual(p.returncode, code, p.stderr)
        lines = [l for l in p.stderr.splitlines() if l.startswith("attnreg: error:")]
        self.assertEqual(len(lines), 1, p.stderr)
        self.assertIn(needle, lines[0])
        self.assertEqual(tree_bytes(self.out), before)

    def test_cases(self):
        ref = os.path.join(REF, "tiny")
        good = ["--x", ref + "/X.npy", "--y", ref + "/Y.npy", "--out", self.out]
        bad_shape = os.path.join(TMP, "badshape")
        shutil.rmtree(bad_shape, ignore_errors=True)
        shutil.copytree(ref, bad_shape)
        np.save(bad_shape + "/B.npy", np.zeros((4, 2)))
        for np_ in (0, 3):  # 0: one rank, without mpirun (arutil.run)
            self.expect(np_, 3, "no such directory", "eval", "--data", TMP + "/missing", *good)
            self.expect(np_, 2, "--grid 2x2", "eval", "--data", ref, "--grid", "2x2", *good)
            self.expect(np_, 2, "unknown option '--bogus'", "eval", "--data", ref, "--bogus", *good)
            self.expect(np_, 2, "--nb", "solve", "--data", ref, "--nb", "-1", "--out", self.out)
            self.expect(np_, 3, "has 4 rows", "eval", "--data", bad_shape, *good)
            self.expect(np_, 3, "expected 2 x 2", "eval", "--data", ref, "--x", ref + "/hessian.npy", "--y",
                        ref + "/Y.npy", "--out", self.out)
            self.expect(np_, 4, "not a directory", "eval", "--data", ref, "--x", ref + "/X.npy", "--y",
                        ref + "/Y.npy", "--out", ref + "/X.npy")


if __name__ == "__main__":
    unittest.main(verbosity=2)

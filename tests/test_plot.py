"""scripts/plot: a PNG from real attnreg solve runs (checked as a file and as plotted data), the
header-driven CSV reader, bad input."""
import csv
import importlib.machinery
import importlib.util
import os
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from arutil import history, run, summary, tree_bytes  # noqa: E402

PLOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "plot")
TMP = tempfile.mkdtemp(prefix="attnreg-plot-")


def plot(*args, check=True):
    p = subprocess.run([PLOT] + [str(a) for a in args], capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError("plot %s failed (%d):\n%s%s" % (args, p.returncode, p.stdout, p.stderr))
    return p


def load_plot_module():
    loader = importlib.machinery.SourceFileLoader("attnreg_plot", PLOT)
    spec = importlib.util.spec_from_loader("attnreg_plot", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def png_info(path):
    """(width, height, bytes) from the PNG signature and IHDR chunk; fails on anything else."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13, "first chunk is not IHDR"
    w, h = struct.unpack(">II", data[16:24])
    assert data[-12:-4] == b"\x00\x00\x00\x00IEND", "no IEND chunk at the end"
    return w, h, len(data)


def path(*names):
    return os.path.join(TMP, *names)


def setUpModule():
    # Two real runs: a planted problem from its noisy start (Gauss-Newton, chord steps) on 2 ranks,
    # and the same from X = 0 with the exact Hessian on 1 rank (rejected steps on the way).
    run(2, "generate", "--n", 300, "--d", 5, "--seed", 3, "--out", path("data"), "--quiet")
    run(2, "solve", "--data", path("data"), "--x0", path("data", "X0.npy"), "--out", path("near"), "--quiet")
    run(1, "solve", "--data", path("data"), "--hessian", "exact", "--max-iter", 40, "--out", path("zero"), "--quiet")


class Render(unittest.TestCase):
    def test_png_from_real_runs(self):
        out = path("conv.png")
        p = plot(path("near"), path("zero", "history.csv"), "--out", out)
        self.assertIn("2 runs -> ", p.stdout)
        w, h, size = png_info(out)
        self.assertEqual((w, h), (1200, 800))
        self.assertGreater(size, 30000)  # four panels with curves, not an empty canvas
        import matplotlib.image
        img = matplotlib.image.imread(out)[:, :, :3]
        self.assertGreater((img.min(axis=2) < 0.9).mean(), 0.02)  # ink on more than 2 % of the pixels
        colours = {tuple(np.round(c, 1)) for c in img.reshape(-1, 3)[::7]}
        self.assertGreater(len(colours), 8)  # several run colours, not black on white only
        p = plot(path("near"), "--out", path("small.png"), "--size", "640x480", "--label", "near start",
                 "--title", "one run")
        self.assertEqual(png_info(path("small.png"))[:2], (640, 480))
        self.assertFalse([f for f in os.listdir(TMP) if ".tmp-" in f])

    def test_plotted_data_and_labels(self):
        """The curves are the CSV's columns; markers follow accepted/hessian/step; the legend
        names method, Hessian, ranks, start and reason.  A synthetic third run has every kind of
        step whatever the solver does today, and a zero loss (not drawable on a log scale)."""
        os.makedirs(path("synthetic"), exist_ok=True)
        with open(path("synthetic", "history.csv"), "w") as f:
            f.write("iter,loss,rel_loss,grad_norm,mu,rho,step_norm,seconds,accepted,hessian,step\n"
                    "0,1,0.5,2,1e-3,0,0,0.1,1,gauss-newton,start\n"
                    "1,1,0.5,2,2e-3,-1,1,0.2,0,gauss-newton,newton\n"
                    "2,0.1,0.05,0.3,1e-3,0.9,1,0.3,1,exact,newton\n"
                    "3,0.01,0.005,0.01,1e-3,1,0.1,0.4,1,exact,chord\n"
                    "4,0,0,1e-9,1e-3,1,0.01,0.5,1,exact,newton\n")
        mod = load_plot_module()
        a = mod.parse_args([path("near"), path("zero"), path("synthetic"), "--out", path("unused.png")])
        paths = [path(r, "history.csv") for r in ("near", "zero", "synthetic")]
        runs = [mod.read_history(p) for p in paths]
        labels = [mod.default_label(p) for p in paths]
        reasons = [summary(path(r, "summary.json"))["reason"] for r in ("near", "zero")]
        self.assertEqual(labels[0], "near: joint, auto Hessian, 2 ranks, start X0.npy, " + reasons[0])
        self.assertEqual(labels[1], "zero: joint, exact Hessian, 1 rank, start X = 0, " + reasons[1])
        self.assertEqual(labels[2], "synthetic")  # no summary.json beside it
        fig = mod.render(runs, labels, a)
        self.assertEqual([t.get_text() for t in fig.legends[0].get_texts()], labels)
        keys = [t.get_text() for t in fig.legends[1].get_texts()]
        self.assertEqual(keys, ["exact Hessian", "gauss-newton Hessian", "hollow: chord step (reused factor)", "rejected step"])
        h = [history(p) for p in paths]
        for (r, c), (xcol, ycol) in {(0, 0): ("iter", "rel_loss"), (0, 1): ("seconds", "rel_loss"),
                                     (1, 0): ("iter", "grad_norm"), (1, 1): ("seconds", "grad_norm")}.items():
            ax = fig.axes[2 * r + c]
            self.assertEqual(ax.get_yscale(), "log")
            curves = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
            self.assertEqual(len(curves), 3)
            for ln, hh in zip(curves, h):
                y = hh[ycol].astype(float)
                np.testing.assert_array_equal(ln.get_xdata(), hh[xcol].astype(float))
                np.testing.assert_array_equal(ln.get_ydata(), np.where(y > 0, y, np.nan))
            marks = [ln for ln in ax.get_lines() if ln.get_linestyle() in ("None", "", " ")]
            kinds = {"x": 0, "o": 0, "s": 0, "hollow": 0}
            for ln in marks:
                kinds[ln.get_marker()] += 1
                kinds["hollow"] += ln.get_markerfacecolor() == "white"
            acc = [hh["accepted"] == 1 for hh in h]
            self.assertEqual(kinds["x"], sum(int((~a_).sum()) for a_ in acc))
            self.assertEqual(kinds["o"], sum(int((a_ & (hh["hessian"] == "exact")).sum()) for a_, hh in zip(acc, h)))
            self.assertEqual(kinds["s"], sum(int((a_ & (hh["hessian"] == "gauss-newton")).sum()) for a_, hh in zip(acc, h)))
            self.assertEqual(kinds["hollow"], sum(int((a_ & (hh["step"] == "chord")).sum()) for a_, hh in zip(acc, h)))
            self.assertGreaterEqual(kinds["hollow"], 1)

    def test_columns_by_header(self):
        """Columns in another order, an extra column (e.g. CG iterations of a later version)."""
        h = history(path("near", "history.csv"))
        names = list(h)
        order = ["cg_iters"] + names[::-1]
        os.makedirs(path("shuffled"), exist_ok=True)
        with open(path("shuffled", "history.csv"), "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(order)
            for i in range(len(h["iter"])):
                wr.writerow([7] + [repr(h[k][i].item()) if h[k].dtype.kind == "f" else h[k][i] for k in names[::-1]])
        mod = load_plot_module()
        got = mod.read_history(path("shuffled", "history.csv"))
        for k in ("iter", "rel_loss", "grad_norm", "seconds", "accepted"):
            np.testing.assert_array_equal(np.array(got[k]), h[k].astype(float))
        self.assertEqual(got["step"], list(h["step"]))
        plot(path("shuffled"), "--out", path("shuffled.png"))
        self.assertEqual(png_info(path("shuffled.png"))[:2], (1200, 800))


class BadInput(unittest.TestCase):
    def expect(self, code, words, *args, out=None):
        out = out or path("bad.png")
        before = tree_bytes(TMP)
        p = plot(*args, "--out", out, check=False)
        self.assertEqual(p.returncode, code, (args, p.stderr))
        self.assertEqual(len(p.stderr.strip().splitlines()), 1, p.stderr)
        self.assertTrue(p.stderr.startswith("plot: error: "), p.stderr)
        for w in words:
            self.assertIn(w, p.stderr)
        self.assertEqual(tree_bytes(TMP), before)  # no output, no temporary left, nothing changed

    def write(self, name, text):
        with open(path(name), "w") as f:
            f.write(text)
        return path(name)

    def test_errors(self):
        good = path("near", "history.csv")
        self.expect(4, ["missing.csv", "no such file"], path("missing.csv"))
        self.expect(4, ["missing.csv"], good, path("missing.csv"))  # one bad run of two: no plot
        nocol = self.write("nocol.csv", "iter,loss,mu\n0,1.0,0.1\n1,0.5,0.1\n")
        self.expect(3, ["nocol.csv", "rel_loss, grad_norm, seconds"], nocol)
        self.expect(3, ["empty.csv", "empty file"], self.write("empty.csv", ""))
        self.expect(3, ["header.csv", "no iterations"], self.write("header.csv", "iter,rel_loss,grad_norm,seconds\n"))
        self.expect(3, ["text.csv", "line 3, column grad_norm", "'abc'"],
                    self.write("text.csv", "iter,rel_loss,grad_norm,seconds\n0,1,1,0\n1,0.5,abc,0.1\n"))
        self.expect(3, ["short.csv", "line 2"], self.write("short.csv", "iter,rel_loss,grad_norm,seconds\n0,1\n"))
        self.expect(2, ["--label", "2 times for 1 runs"], good, "--label", "a", "--label", "b")
        self.expect(2, ["--size 12x"], good, "--size", "12x")
        self.expect(2, ["unknown image format", "'xyz'"], good, out=path("plot.xyz"))
        self.expect(4, ["no directory"], good, out=path("no-dir", "p.png"))
        self.expect(4, ["is a directory"], good, out=path("near"))
        # An existing image is left exactly as it was by a failing run.
        self.write("keep.png", "old image")
        self.expect(3, ["nocol.csv"], nocol, out=path("keep.png"))


if __name__ == "__main__":
    unittest.main(verbosity=2)

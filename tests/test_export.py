"""scripts/export-attention: random torch attention modules exported as attnreg problems, checked
against the module's own per-head output and against attnreg eval; --compare; bad input."""
import contextlib
import importlib.machinery
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from arutil import run, summary, tree_bytes  # noqa: E402

EXPORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "export-attention")
TMP = tempfile.mkdtemp(prefix="attnreg-export-")


def load_script(name, file):
    loader = importlib.machinery.SourceFileLoader(name, file)
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    loader.exec_module(mod)
    return mod


MOD = load_script("export_attention", EXPORT)


def export(*args, check=True):
    p = subprocess.run([EXPORT] + [str(a) for a in args], capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError("export-attention %s failed (%d):\n%s%s" % (args, p.returncode, p.stdout, p.stderr))
    return p


def path(*names):
    return os.path.join(TMP, *names)


def save_module(name, module):
    torch.save(module.state_dict(), path(name))
    return path(name)


def save_input(name, rng, shape):
    np.save(path(name), rng.standard_normal(shape))
    return path(name)


def per_head_output(mha, xq, xkv, head):
    """The module's own attention weights of one head (F.multi_head_attention_forward with
    need_weights and average_attn_weights=False) times the head's values, in float64."""
    m = mha.double()
    E, H = m.embed_dim, m.num_heads
    q = torch.from_numpy(xq)[:, None, :]
    kv = torch.from_numpy(xkv)[:, None, :]
    with torch.no_grad():
        _, att = F.multi_head_attention_forward(
            q, kv, kv, E, H, m.in_proj_weight, m.in_proj_bias, m.bias_k, m.bias_v, m.add_zero_attn, 0.0,
            m.out_proj.weight, m.out_proj.bias, training=False, need_weights=True, average_attn_weights=False)
        dk = E // H
        s = slice(head * dk, (head + 1) * dk)
        v = kv[:, 0] @ m.in_proj_weight[2 * E:][s].T
        if m.in_proj_bias is not None:
            v = v + m.in_proj_bias[2 * E:][s]
    return (att[0, head] @ v).numpy(), att[0, head].numpy()


def load_problem(out):
    if os.path.exists(os.path.join(out, "A.npy")):
        A = np.load(os.path.join(out, "A.npy"))
        return A, A, A
    return tuple(np.load(os.path.join(out, f + ".npy")) for f in ("A1", "A2", "A3"))


class Export(unittest.TestCase):
    def check_case(self, name, E, H, head, bias, cross, L=23, batch=None, ranks=1, zero_bias=False):
        torch.manual_seed(len(name) * 1000 + E * 10 + head)
        mha = torch.nn.MultiheadAttention(E, H, bias=bias)
        if bias and not zero_bias:  # torch starts biases at zero; make them matter
            with torch.no_grad():
                mha.in_proj_bias.normal_()
        self.assertEqual(bool(bias and not zero_bias), bool(bias and mha.in_proj_bias.abs().max() > 0))
        sd = save_module(name + ".pt", mha)
        rng = np.random.default_rng(E * 100 + H)
        shape = (L, E) if batch is None else (3, L, E)
        xq_all = np.load(save_input(name + "-x.npy", rng, shape))
        xkv_all = np.load(save_input(name + "-kv.npy", rng, shape)) if cross else xq_all
        xq = xq_all if batch is None else xq_all[batch]
        xkv = xkv_all if batch is None else xkv_all[batch]
        out = path(name)
        args = ["--state-dict", sd, "--heads", H, "--head", head, "--input", path(name + "-x.npy"), "--out", out]
        if cross:
            args += ["--kv-input", path(name + "-kv.npy")]
        if batch is not None:
            args += ["--batch-index", batch]
        export(*args)
        names = {"B.npy", "X_true.npy", "Y_true.npy", "info.json"} | (
            {"A1.npy", "A2.npy", "A3.npy"} if cross else {"A.npy"})
        self.assertEqual(set(os.listdir(out)), names)
        A1, A2, A3 = load_problem(out)
        B, X, Y = (np.load(os.path.join(out, f)) for f in ("B.npy", "X_true.npy", "Y_true.npy"))
        d = E + (bias and not zero_bias)  # all-zero biases need no column of ones
        self.assertEqual((A1.shape, A2.shape, B.shape, X.shape, Y.shape), ((L, d), (L, d), (L, E // H), (d, d), (d, E // H)))
        if d > E:
            self.assertTrue(np.all(A1[:, -1] == 1) and np.all(A2[:, -1] == 1))
        np.testing.assert_array_equal(A1[:, :E], xq)
        np.testing.assert_array_equal(A2[:, :E], xkv)
        np.testing.assert_array_equal(A3, A2)
        ref, _ = per_head_output(mha, xq, xkv, head)
        self.assertLessEqual(np.abs(B - ref).max(), 1e-12 * max(1.0, np.abs(ref).max()), name)
        info = summary(os.path.join(out, "info.json"))
        self.assertEqual((info["n"], info["d"], info["m"], info["head"], info["heads"]), (L, d, E // H, head, H))
        self.assertEqual(info["self_attention"], not cross)
        self.assertAlmostEqual(info["scale"], 1 / np.sqrt(E // H), places=15)
        ev = path(name + "-eval")
        run(ranks, "eval", "--data", out, "--x", out + "/X_true.npy", "--y", out + "/Y_true.npy", "--out", ev, "--quiet")
        self.assertLessEqual(summary(ev + "/eval.json")["rel_loss"], 1e-24, name)
        return mha, out

    def test_self_attention_bias(self):
        self.check_case("self-bias", E=8, H=2, head=1, bias=True, cross=False, ranks=2)

    def test_self_attention_no_bias(self):
        self.check_case("self-nobias", E=6, H=3, head=2, bias=False, cross=False)

    def test_cross_attention_bias_batched(self):
        self.check_case("cross-bias", E=8, H=4, head=3, bias=True, cross=True, batch=2, ranks=2)

    def test_cross_attention_no_bias(self):
        self.check_case("cross-nobias", E=4, H=1, head=0, bias=False, cross=True, L=30)

    def test_zero_bias_not_folded(self):
        self.check_case("zero-bias", E=6, H=2, head=0, bias=True, zero_bias=True, cross=False)
        self.assertEqual(summary(path("zero-bias", "info.json"))["bias_folded"], "no: the head's biases are all zero")
        # Only another head's biases nonzero: this head still needs no column.
        torch.manual_seed(4)
        mha = torch.nn.MultiheadAttention(6, 2)
        with torch.no_grad():
            mha.in_proj_bias[3:6].normal_()  # head 1 of the query bias
        sd = save_module("half-bias.pt", mha)
        for h, d in ((0, 6), (1, 7)):
            out = path("half-bias-%d" % h)
            export("--state-dict", sd, "--heads", 2, "--head", h, "--input", path("zero-bias-x.npy"), "--out", out)
            self.assertEqual(np.load(out + "/X_true.npy").shape, (d, d))
            x = np.load(path("zero-bias-x.npy"))
            ref, _ = per_head_output(mha, x, x, h)
            self.assertLessEqual(np.abs(np.load(out + "/B.npy") - ref).max(), 1e-12 * np.abs(ref).max())

    def test_heads_recompose_module_output(self):
        """All heads, through the module's real output projection, give the module's forward."""
        torch.manual_seed(7)
        mha = torch.nn.MultiheadAttention(6, 2)
        with torch.no_grad():
            mha.in_proj_bias.normal_()
            mha.out_proj.bias.normal_()
        sd = save_module("recompose.pt", mha)
        x = np.load(save_input("recompose-x.npy", np.random.default_rng(3), (17, 6)))
        heads = []
        for h in range(2):
            export("--state-dict", sd, "--heads", 2, "--head", h, "--input", path("recompose-x.npy"),
                   "--out", path("recompose-%d" % h))
            heads.append(np.load(path("recompose-%d" % h, "B.npy")))
        m = mha.double().eval()
        with torch.no_grad():
            full = m(*(torch.from_numpy(x)[:, None, :],) * 3, need_weights=False)[0][:, 0].numpy()
        got = np.hstack(heads) @ m.out_proj.weight.detach().numpy().T + m.out_proj.bias.detach().numpy()
        self.assertLessEqual(np.abs(got - full).max(), 1e-12 * np.abs(full).max())

    def test_transformer_layers(self):
        torch.manual_seed(11)
        layer = torch.nn.TransformerEncoderLayer(8, 2, 16)
        sd = save_module("enc-layer.pt", layer)
        save_input("enc-x.npy", np.random.default_rng(5), (19, 8))
        x = np.load(path("enc-x.npy"))
        ref, _ = per_head_output(layer.self_attn, x, x, 1)
        for extra in ([], ["--prefix", "self_attn."]):  # found by itself, or named
            out = path("enc-layer%d" % len(extra))
            export("--state-dict", sd, "--heads", 2, "--head", 1, "--input", path("enc-x.npy"), "--out", out, *extra)
            self.assertLessEqual(np.abs(np.load(out + "/B.npy") - ref).max(), 1e-12 * np.abs(ref).max())
            info = summary(out + "/info.json")
            self.assertEqual((info["prefix"], info["d"]), ("self_attn.", 8))  # fresh layer: zero biases
        enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(8, 2, 16), 2, enable_nested_tensor=False)
        sd = save_module("encoder.pt", enc)
        p = export("--state-dict", sd, "--heads", 2, "--head", 0, "--input", path("enc-x.npy"),
                   "--out", path("encoder-none"), check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("'layers.0.self_attn.', 'layers.1.self_attn.'", p.stderr)
        self.assertIn("--prefix", p.stderr)
        self.assertFalse(os.path.exists(path("encoder-none")))
        export("--state-dict", sd, "--heads", 2, "--head", 0, "--input", path("enc-x.npy"),
               "--prefix", "layers.1.self_attn.", "--out", path("encoder-1"))
        ref, _ = per_head_output(enc.layers[1].self_attn, x, x, 0)
        self.assertLessEqual(np.abs(np.load(path("encoder-1", "B.npy")) - ref).max(), 1e-12 * np.abs(ref).max())


class Compare(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.manual_seed(21)
        mha = torch.nn.MultiheadAttention(4, 2)
        with torch.no_grad():
            mha.in_proj_bias.normal_()
        cls.sd = save_module("cmp.pt", mha)
        rng = np.random.default_rng(8)
        save_input("cmp-x.npy", rng, (200, 4))
        save_input("cmp-h.npy", rng, (2, 50, 4))  # held-out sequences
        cls.base = ["--state-dict", cls.sd, "--heads", 2, "--head", 1, "--input", path("cmp-x.npy")]
        cls.data = path("cmp")
        export(*cls.base, "--out", cls.data)

    def compare(self, result, *extra):
        p = export(*self.base, "--compare", result, "--heldout-input", path("cmp-h.npy"), "--heldout-batch-index", 1,
                   "--json", *extra)
        return json.loads(p.stdout)

    def fit_dir(self, name, X, Y):
        os.makedirs(path(name), exist_ok=True)
        np.save(path(name, "X.npy"), X)
        np.save(path(name, "Y.npy"), Y)
        return path(name)

    def test_truth_and_perturbed(self):
        X, Y = np.load(self.data + "/X_true.npy"), np.load(self.data + "/Y_true.npy")
        r = self.compare(self.fit_dir("cmp-truth", X, Y))
        for key in ("input", "heldout"):
            self.assertLess(r[key]["attention_rel_error"], 1e-13)
            self.assertLess(r[key]["output_rel_error"], 1e-13)
        self.assertEqual((r["input"]["n"], r["heldout"]["n"], r["heldout"]["batch_index"]), (200, 50, 1))
        # A perturbed fit: on the training input its output error is sqrt(attnreg's relative loss).
        Xp = X + 0.05 * np.random.default_rng(2).standard_normal(X.shape)
        fit = self.fit_dir("cmp-perturbed", Xp, Y)
        r = self.compare(fit)
        run(1, "eval", "--data", self.data, "--x", fit + "/X.npy", "--y", fit + "/Y.npy", "--out", fit + "/ev", "--quiet")
        rel = summary(fit + "/ev/eval.json")["rel_loss"]
        self.assertAlmostEqual(r["input"]["output_rel_error"], np.sqrt(rel), delta=1e-9 * np.sqrt(rel))
        for key in ("input", "heldout"):
            self.assertGreater(r[key]["attention_rel_error"], 1e-3)
        txt = export(*self.base, "--compare", fit, "--heldout-input", path("cmp-h.npy"), "--heldout-batch-index", 0).stdout
        self.assertRegex(txt, r"heldout +.*cmp-h.npy\[0\] +n=50 +attention rel. error")
        # --heldout-batch-index alone: another sequence of the batched --input.
        p = export("--state-dict", self.sd, "--heads", 2, "--head", 1, "--input", path("cmp-h.npy"), "--batch-index", 0,
                   "--compare", fit, "--heldout-batch-index", 1, "--json")
        r2 = json.loads(p.stdout)
        self.assertEqual((r2["input"]["batch_index"], r2["heldout"]["batch_index"]), (0, 1))
        self.assertEqual(r2["heldout"]["file"], path("cmp-h.npy"))
        self.assertEqual(r2["heldout"]["output_rel_error"], r["heldout"]["output_rel_error"])

    def test_solved_fit_generalises(self):
        """A fit by attnreg solve from a perturbed truth reproduces the head on held-out data:
        the bias column is appended to the held-out input exactly as to the training input."""
        X = np.load(self.data + "/X_true.npy")
        x0 = path("cmp-x0.npy")
        np.save(x0, X + 0.01 * np.random.default_rng(4).standard_normal(X.shape))
        run(2, "solve", "--data", self.data, "--x0", x0, "--out", path("cmp-solved"), "--quiet")
        self.assertLess(summary(path("cmp-solved", "summary.json"))["rel_loss"], 1e-20)
        r = self.compare(path("cmp-solved"))
        for key in ("input", "heldout"):
            self.assertLess(r[key]["attention_rel_error"], 1e-7, key)
            self.assertLess(r[key]["output_rel_error"], 1e-7, key)

    def test_compare_errors(self):
        bad = self.fit_dir("cmp-bad", np.zeros((4, 4)), np.zeros((4, 2)))  # d = 5 with the bias column
        p = export(*self.base, "--compare", bad, check=False)
        self.assertEqual(p.returncode, 3)
        self.assertEqual(len(p.stderr.splitlines()), 1)
        self.assertIn("X.npy has shape (4, 4), but this head needs (5, 5)", p.stderr)
        p = export(*self.base, "--compare", path("no-such-result"), check=False)
        self.assertEqual(p.returncode, 4)
        self.assertIn("no X.npy", p.stderr)


class BadInput(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.manual_seed(3)
        rng = np.random.default_rng(0)
        cls.sd = save_module("bad.pt", torch.nn.MultiheadAttention(4, 2))
        cls.kdim = save_module("bad-kdim.pt", torch.nn.MultiheadAttention(4, 2, kdim=3, vdim=3))
        cls.biaskv = save_module("bad-biaskv.pt", torch.nn.MultiheadAttention(4, 2, add_bias_kv=True))
        sd = torch.nn.MultiheadAttention(4, 2, kdim=3, vdim=3).state_dict()
        del sd["v_proj_weight"]
        torch.save(sd, path("bad-missing.pt"))
        torch.save({"weights": [1, 2, 3]}, path("bad-notsd.pt"))
        with open(path("bad-garbage.pt"), "wb") as f:
            f.write(b"not a pickle at all")
        save_input("bad-x.npy", rng, (10, 4))
        save_input("bad-x3.npy", rng, (2, 10, 4))
        save_input("bad-x5.npy", rng, (10, 5))
        save_input("bad-kv11.npy", rng, (11, 4))
        save_input("bad-x1d.npy", rng, (10,))
        x = rng.standard_normal((10, 4))
        x[3, 2] = np.nan
        np.save(path("bad-nan.npy"), x)
        os.makedirs(path("bad-full"))
        with open(path("bad-full", "keep.txt"), "w") as f:
            f.write("precious")
        with open(path("bad-file"), "w") as f:
            f.write("a file")

    def expect(self, code, words, *args, out=None, via_program=False):
        """One bad command: its exit code, a one-line message with words in it, nothing written.
        Most cases call the script's main() in this process (importing torch once instead of
        per case); the via_program ones check the same through the real program."""
        out = out or path("bad-out")
        before = tree_bytes(TMP)
        argv = [str(v) for v in args] + ["--out", out]
        if via_program:
            p = export(*argv, check=False)
            rc, err = p.returncode, p.stderr
        else:
            buf = io.StringIO()
            with contextlib.redirect_stderr(buf):
                try:
                    rc = MOD.main(argv)
                except SystemExit as e:  # argparse
                    rc = e.code
            err = buf.getvalue()
        self.assertEqual(rc, code, (args, err))
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertTrue(err.startswith("export-attention: error: "), err)
        for w in words:
            self.assertIn(w, err)
        self.assertEqual(tree_bytes(TMP), before)  # nothing written, nothing left behind
        self.assertFalse([f for f in os.listdir(os.path.dirname(out)) if ".tmp-" in f or ".old-" in f])

    def test_errors(self):
        sd, x = self.sd, path("bad-x.npy")
        ok = ["--heads", 2, "--head", 0]
        self.expect(4, ["--state-dict", "no-such.pt", "no such file"], "--state-dict", "no-such.pt", *ok, "--input", x,
                    via_program=True)
        self.expect(3, ["bad-garbage.pt", "not a state_dict"], "--state-dict", path("bad-garbage.pt"), *ok, "--input", x)
        self.expect(3, ["bad-notsd.pt", "not a state_dict"], "--state-dict", path("bad-notsd.pt"), *ok, "--input", x)
        self.expect(3, ["bad-kdim.pt", "kdim = 3 differs from embed_dim = 4"], "--state-dict", self.kdim, *ok, "--input", x)
        self.expect(3, ["bad-biaskv.pt", "add_bias_kv"], "--state-dict", self.biaskv, *ok, "--input", x)
        self.expect(3, ["bad-missing.pt", "missing key v_proj_weight"], "--state-dict", path("bad-missing.pt"), *ok, "--input", x)
        self.expect(2, ["--heads 3", "not divisible"], "--state-dict", sd, "--heads", 3, "--head", 0, "--input", x)
        self.expect(2, ["--head 2", "out of range", "0..1"], "--state-dict", sd, "--heads", 2, "--head", 2, "--input", x,
                    via_program=True)
        self.expect(2, ["--head -1", "out of range"], "--state-dict", sd, "--heads", 2, "--head", -1, "--input", x)
        self.expect(2, ["--prefix 'enc.'", "''"], "--state-dict", sd, *ok, "--input", x, "--prefix", "enc.")
        self.expect(4, ["--input", "no-such.npy"], "--state-dict", sd, *ok, "--input", "no-such.npy")
        self.expect(3, ["--input", "bad-x5.npy", "last dimension 5", "embed dim 4"], "--state-dict", sd, *ok, "--input",
                    path("bad-x5.npy"), via_program=True)
        self.expect(3, ["--input", "bad-x1d.npy", "(L, E)"], "--state-dict", sd, *ok, "--input", path("bad-x1d.npy"))
        self.expect(3, ["--input", "bad-nan.npy", "non-finite", "position 3, column 2"], "--state-dict", sd, *ok, "--input", path("bad-nan.npy"))
        self.expect(3, ["--state-dict", "bad-x.npy", "not a state_dict"], "--state-dict", x, *ok, "--input", x)
        self.expect(2, ["--input", "batch of 2", "--batch-index"], "--state-dict", sd, *ok, "--input", path("bad-x3.npy"))
        self.expect(2, ["--batch-index 2", "out of range"], "--state-dict", sd, *ok, "--input", path("bad-x3.npy"), "--batch-index", 2)
        self.expect(2, ["--batch-index 0", "single sequences"], "--state-dict", sd, *ok, "--input", x, "--batch-index", 0)
        self.expect(3, ["--kv-input", "bad-kv11.npy", "length 11", "(10)"], "--state-dict", sd, *ok, "--input", x, "--kv-input", path("bad-kv11.npy"))
        self.expect(2, ["--heads"], "--state-dict", sd, "--heads", "two", "--head", 0, "--input", x, via_program=True)
        self.expect(4, ["--out", "not empty", "--force"], "--state-dict", sd, *ok, "--input", x, out=path("bad-full"),
                    via_program=True)
        self.expect(4, ["--out", "not a directory"], "--state-dict", sd, *ok, "--input", x, out=path("bad-file"))

    def test_force_and_empty_out(self):
        x = path("bad-x.npy")
        os.makedirs(path("bad-empty"))
        export("--state-dict", self.sd, "--heads", 2, "--head", 0, "--input", x, "--out", path("bad-empty"))
        self.assertIn("B.npy", os.listdir(path("bad-empty")))
        os.makedirs(path("bad-replace"))
        with open(path("bad-replace", "old.txt"), "w") as f:
            f.write("old")
        export("--state-dict", self.sd, "--heads", 2, "--head", 1, "--input", x, "--out", path("bad-replace"), "--force")
        self.assertEqual(set(os.listdir(path("bad-replace"))), {"A.npy", "B.npy", "X_true.npy", "Y_true.npy", "info.json"})
        self.assertEqual(summary(path("bad-replace", "info.json"))["head"], 1)
        self.assertFalse([f for f in os.listdir(TMP) if ".tmp-" in f or ".old-" in f])


if __name__ == "__main__":
    unittest.main(verbosity=2)

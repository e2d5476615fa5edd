"""scripts/export-attention: random torch attention modules exported as attnreg problems, checked
against the module's own per-head output and against attnreg eval; calibration sets (packed,
padded with --lengths, causal) checked against a NumPy oracle of the masked model; --compare;
--to-state-dict and the round trip module -> export -> solve -> state dict -> module; bad input."""
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
from arutil import ATTNREG, masked_model, run, summary, tree_bytes  # noqa: E402

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


def script(*args, check=True):
    """The script's main() in this process (torch imported once instead of per run), returning what
    export() returns for the program."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = MOD.main([str(a) for a in args])
        except SystemExit as e:  # argparse
            rc = e.code
    p = subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())
    if check and rc != 0:
        raise AssertionError("export-attention %s failed (%d):\n%s%s" % (args, rc, p.stdout, p.stderr))
    return p


def path(*names):
    return os.path.join(TMP, *names)


def save_module(name, module):
    torch.save(module.state_dict(), path(name))
    return path(name)


def save_input(name, rng, shape):
    np.save(path(name), rng.standard_normal(shape))
    return path(name)


def causal_mask(L):
    return torch.triu(torch.ones(L, L, dtype=torch.bool), diagonal=1)


def pad_mask(lengths, L):
    return torch.from_numpy(np.arange(L)[None, :] >= np.asarray(lengths)[:, None])


def per_head_batched(mha, x, lengths, head, causal=False, kv=None):
    """One head of the module on a right-padded batch x (batch, L, E) in one batched call of
    F.multi_head_attention_forward (key_padding_mask hides the padding, attn_mask the future when
    causal): the head's attention maps (the valid block of every sequence) and its output before
    the output projection (the valid rows of every sequence, stacked), in float64."""
    m = mha.double()
    E, H = m.embed_dim, m.num_heads
    q = torch.from_numpy(x).transpose(0, 1)
    k = q if kv is None else torch.from_numpy(kv).transpose(0, 1)
    L = x.shape[1]
    with torch.no_grad():
        _, att = F.multi_head_attention_forward(
            q, k, k, E, H, m.in_proj_weight, m.in_proj_bias, m.bias_k, m.bias_v, m.add_zero_attn, 0.0,
            m.out_proj.weight, m.out_proj.bias, training=False, key_padding_mask=pad_mask(lengths, L),
            need_weights=True, attn_mask=causal_mask(L) if causal else None, average_attn_weights=False)
        dk = E // H
        s = slice(head * dk, (head + 1) * dk)
        v = k.transpose(0, 1) @ m.in_proj_weight[2 * E:][s].T
        if m.in_proj_bias is not None:
            v = v + m.in_proj_bias[2 * E:][s]
        o = att[:, head] @ v
    return (np.vstack([o[b, :n].numpy() for b, n in enumerate(lengths)]),
            [att[b, head, :n, :n].numpy() for b, n in enumerate(lengths)])


def per_head_output(mha, xq, xkv, head):
    """The module's own attention weights of one head times the head's values, for one sequence."""
    out, maps = per_head_batched(mha, xq[None], [xq.shape[0]], head, kv=xkv[None])
    return out, maps[0]


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


class Expect:
    def expect(self, code, words, *args, out=None, via_program=False):
        """One bad command: its exit code, a one-line message with words in it, nothing written.
        Most cases call the script's main() in this process (importing torch once instead of
        per case); the via_program ones check the same through the real program."""
        out = out or path("bad-out")
        before = tree_bytes(TMP)
        argv = [str(v) for v in args] + ["--out", out]
        p = (export if via_program else script)(*argv, check=False)
        rc, err = p.returncode, p.stderr
        self.assertEqual(rc, code, (args, err))
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertTrue(err.startswith("export-attention: error: "), err)
        for w in words:
            self.assertIn(w, err)
        self.assertEqual(tree_bytes(TMP), before)  # nothing written, nothing left behind
        self.assertFalse([f for f in os.listdir(os.path.dirname(out)) if ".tmp-" in f or ".old-" in f])


class BadInput(Expect, unittest.TestCase):
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


def random_mha(seed, E, H, bias=True):
    """A float64 MultiheadAttention in eval mode with random weights (and random biases: torch
    starts them at zero)."""
    torch.manual_seed(seed)
    m = torch.nn.MultiheadAttention(E, H, bias=bias).double().eval()
    if bias:
        with torch.no_grad():
            m.in_proj_bias.normal_()
            m.out_proj.bias.normal_()
    return m


def random_decoder_layer(seed, E=8, H=2):
    """GPT-style: a TransformerDecoderLayer (batch-first, no dropout) whose self-attention is causal."""
    torch.manual_seed(seed)
    layer = torch.nn.TransformerDecoderLayer(E, H, 2 * E, dropout=0.0, batch_first=True).double().eval()
    with torch.no_grad():
        layer.self_attn.in_proj_bias.normal_()
    return layer


def padded(rng, lengths, L, E, pad=np.nan):
    """A right-padded batch (len(lengths), L, E): sequence b is rows 0..lengths[b]-1, the rest pad."""
    x = np.full((len(lengths), L, E), pad)
    for b, n in enumerate(lengths):
        x[b, :n] = rng.standard_normal((n, E))
    return x


def save_batch(name, x, lengths=None):
    np.save(path(name + ".npy"), x)
    if lengths is not None:
        np.save(path(name + "-len.npy"), np.asarray(lengths, dtype=np.int64))
    return path(name + ".npy"), path(name + "-len.npy")


def mha_forward(m, x, lengths, causal=False):
    """A MultiheadAttention's output (after out_proj) on a right-padded batch, one batched call:
    the valid rows of every sequence, stacked."""
    xb = torch.from_numpy(x).transpose(0, 1)
    with torch.no_grad():
        out = m(xb, xb, xb, key_padding_mask=pad_mask(lengths, x.shape[1]), need_weights=False,
                attn_mask=causal_mask(x.shape[1]) if causal else None)[0].transpose(0, 1).numpy()
    return np.vstack([out[b, :n] for b, n in enumerate(lengths)])


def decoder_forward(layer, x, lengths, memory):
    """The whole decoder layer (causal self-attention, cross-attention on memory, feed-forward)."""
    with torch.no_grad():
        out = layer(torch.from_numpy(x), torch.from_numpy(memory), tgt_mask=causal_mask(x.shape[1]),
                    tgt_key_padding_mask=pad_mask(lengths, x.shape[1])).numpy()
    return np.vstack([out[b, :n] for b, n in enumerate(lengths)])


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def oracle_rel_loss(out, segments=None, causal=False, X=None, Y=None):
    """attnreg's relative loss at (X, Y) (default the truth) of an export, by the plain oracle."""
    A1, A2, A3 = load_problem(out)
    B = np.load(os.path.join(out, "B.npy"))
    X = np.load(os.path.join(out, "X_true.npy")) if X is None else X
    Y = np.load(os.path.join(out, "Y_true.npy")) if Y is None else Y
    _, O = masked_model(A1, A2, A3, X, Y, segments, causal)
    return float(((O - B) ** 2).sum() / (B ** 2).sum())


def fit_dir(name, X, Y, **options):
    """A RESULT directory: X.npy, Y.npy and, with options, a summary.json as solve writes it."""
    os.makedirs(path(name), exist_ok=True)
    np.save(path(name, "X.npy"), X)
    np.save(path(name, "Y.npy"), Y)
    if options:
        with open(path(name, "summary.json"), "w") as f:
            json.dump({"options": options}, f)
    return path(name)


def perturbed(X, frac, seed):
    N = np.random.default_rng(seed).standard_normal(X.shape)
    return X + frac * np.linalg.norm(X) / np.linalg.norm(N) * N


def scrambled(sd, prefix, E, H, head, seed):
    """sd with head h's query, key and value rows (and biases) replaced by noise: only a correct
    way back restores the module's output."""
    out = {k: v.clone() for k, v in sd.items()}
    g = torch.Generator().manual_seed(seed)
    dk = E // H
    for j in range(3):
        rows = slice(j * E + head * dk, j * E + (head + 1) * dk)
        w = out[prefix + "in_proj_weight"]
        w[rows] = torch.randn(dk, E, generator=g, dtype=torch.float64).to(w.dtype)
        if prefix + "in_proj_bias" in out:
            b = out[prefix + "in_proj_bias"]
            b[rows] = torch.randn(dk, generator=g, dtype=torch.float64).to(b.dtype)
    return out


def head_rows(sd, prefix, E, H, head):
    """{key: boolean mask of the entries that belong to head h's q/k/v weights and biases}."""
    dk = E // H
    masks = {}
    for name in ("in_proj_weight", "in_proj_bias"):
        if prefix + name in sd:
            m = torch.zeros_like(sd[prefix + name], dtype=torch.bool)
            for j in range(3):
                m[j * E + head * dk:j * E + (head + 1) * dk] = True
            masks[prefix + name] = m
    return masks


def check_others_untouched(test, new, template, prefix, E, H, head):
    """Every key of the template is in new with the same dtype and shape, and every entry outside
    head h's rows is bitwise the template's."""
    test.assertEqual(set(new), set(template))
    masks = head_rows(template, prefix, E, H, head)
    for k, v in template.items():
        test.assertEqual((new[k].dtype, new[k].shape), (v.dtype, v.shape), k)
        keep = ~masks[k] if k in masks else torch.ones_like(v, dtype=torch.bool)
        test.assertTrue(torch.equal(new[k][keep], v[keep]), k)


def to_state_dict(result, heads, head, out, *extra, via=script):
    p = via("--to-state-dict", result, "--heads", heads, "--head", head, "--out", out, "--json", *extra)
    return json.loads(p.stdout)


class Calibration(unittest.TestCase):
    """Calibration sets: a padded batch with --lengths, a full batch, an already packed input with
    --segments, causal decoder self-attention; B against the module's own batched, masked forward,
    the loss at the truth against the NumPy oracle of the masked model."""

    def test_padded_batch(self):
        m = random_mha(31, 8, 2)
        sd = save_module("cal.pt", m)
        lengths = [30, 11, 23, 5]
        x = padded(np.random.default_rng(1), lengths, 30, 8)  # NaN padding: dropped, never read
        xf, lf = save_batch("cal-x", x, lengths)
        out = path("cal")
        p = export("--state-dict", sd, "--heads", 2, "--head", 1, "--input", xf, "--lengths", lf, "--out", out)
        self.assertIn("4 sequences (segments.npy)", p.stdout)
        self.assertEqual(set(os.listdir(out)), {"A.npy", "B.npy", "X_true.npy", "Y_true.npy", "segments.npy", "info.json"})
        seg = np.load(out + "/segments.npy")
        self.assertEqual(seg.dtype, np.int64)
        np.testing.assert_array_equal(seg, [0, 30, 41, 64, 69])
        A, _, _ = load_problem(out)
        np.testing.assert_array_equal(A[:, :8], np.vstack([x[b, :n] for b, n in enumerate(lengths)]))
        self.assertTrue(np.all(A[:, 8] == 1))
        # B = the module's head on the padded batch in one call, padding masked by key_padding_mask.
        ref, _ = per_head_batched(m, np.nan_to_num(x, nan=3.0), lengths, 1)
        B = np.load(out + "/B.npy")
        self.assertLessEqual(np.abs(B - ref).max(), 1e-12 * np.abs(ref).max())
        info = summary(out + "/info.json")
        self.assertEqual((info["n"], info["sequences"], info["lengths"], info["causal"], info["segments"]),
                         (69, 4, lengths, False, "segments.npy"))
        self.assertEqual(info["lengths_sha256"], MOD.sha256(lf))
        truth = oracle_rel_loss(out, seg)
        self.assertLessEqual(truth, 1e-24)
        self.assertLessEqual(info["rel_loss_at_truth"], 1e-24)
        # The segments matter: one long sequence (rows attending across sequences) is far off.
        self.assertGreater(oracle_rel_loss(out, None), 1e-3)

        # --batch-index with --lengths: one sequence, its valid rows only, no segments.npy.
        one = path("cal-one")
        script("--state-dict", sd, "--heads", 2, "--head", 1, "--input", xf, "--lengths", lf, "--batch-index", 2,
               "--out", one)
        self.assertNotIn("segments.npy", os.listdir(one))
        np.testing.assert_allclose(np.load(one + "/B.npy"), B[41:64], rtol=0, atol=1e-14 * np.abs(B).max())
        self.assertEqual((summary(one + "/info.json")["batch_index"], summary(one + "/info.json")["n"]), (2, 23))

        # The same set already packed, with --segments: the same problem.
        np.save(path("cal-packed.npy"), A[:, :8])
        packed = path("cal-packed")
        script("--state-dict", sd, "--heads", 2, "--head", 1, "--input", path("cal-packed.npy"),
               "--segments", out + "/segments.npy", "--out", packed)
        for f in ("A.npy", "B.npy", "segments.npy"):
            np.testing.assert_array_equal(np.load(packed + "/" + f), np.load(out + "/" + f), f)

        # A full batch without --lengths: every sequence packed, L rows each.
        xf3, _ = save_batch("cal-full", x[:, :5])
        full = path("cal-full")
        script("--state-dict", sd, "--heads", 2, "--head", 1, "--input", xf3, "--out", full)
        np.testing.assert_array_equal(np.load(full + "/segments.npy"), [0, 5, 10, 15, 20])
        self.assertLessEqual(oracle_rel_loss(full, np.load(full + "/segments.npy")), 1e-24)

    def test_cross_attention_padded(self):
        m = random_mha(32, 6, 3)
        sd = save_module("cal-cross.pt", m)
        rng = np.random.default_rng(2)
        lengths = [9, 14, 3]
        x, kv = padded(rng, lengths, 14, 6, pad=0.0), padded(rng, lengths, 14, 6, pad=0.0)
        xf, lf = save_batch("cal-cross-x", x, lengths)
        kf, _ = save_batch("cal-cross-kv", kv)
        out = path("cal-cross")
        script("--state-dict", sd, "--heads", 3, "--head", 0, "--input", xf, "--kv-input", kf, "--lengths", lf, "--out", out)
        A1, A2, A3 = load_problem(out)
        np.testing.assert_array_equal(A2[:, :6], np.vstack([kv[b, :n] for b, n in enumerate(lengths)]))
        ref, _ = per_head_batched(m, x, lengths, 0, kv=kv)
        self.assertLessEqual(np.abs(np.load(out + "/B.npy") - ref).max(), 1e-12 * np.abs(ref).max())
        self.assertLessEqual(oracle_rel_loss(out, np.load(out + "/segments.npy")), 1e-24)

    def test_causal_decoder_layer(self):
        layer = random_decoder_layer(33)
        sd = save_module("cal-dec.pt", layer)
        lengths = [25, 9, 17]
        x = padded(np.random.default_rng(3), lengths, 25, 8)
        xf, lf = save_batch("cal-dec-x", x, lengths)
        out = path("cal-dec")
        p = export("--state-dict", sd, "--heads", 2, "--head", 0, "--prefix", "self_attn.", "--input", xf,
                   "--lengths", lf, "--causal", "--out", out)
        self.assertIn("causal (solve with --causal)", p.stdout)
        info = summary(out + "/info.json")
        self.assertEqual((info["causal"], info["sequences"], info["d"]), (True, 3, 9))
        ref, _ = per_head_batched(layer.self_attn, np.nan_to_num(x, nan=3.0), lengths, 0, causal=True)
        B = np.load(out + "/B.npy")
        self.assertLessEqual(np.abs(B - ref).max(), 1e-12 * np.abs(ref).max())
        seg = np.load(out + "/segments.npy")
        self.assertLessEqual(oracle_rel_loss(out, seg, causal=True), 1e-24)
        self.assertLessEqual(info["rel_loss_at_truth"], 1e-24)
        for segments, causal in ((seg, False), (None, True), (None, False)):  # each mask matters
            self.assertGreater(oracle_rel_loss(out, segments, causal), 1e-3, (segments, causal))
        # One causal sequence: no segments.npy, but the mask is recorded.
        one = path("cal-dec-one")
        script("--state-dict", sd, "--heads", 2, "--head", 0, "--prefix", "self_attn.", "--input", xf,
               "--lengths", lf, "--batch-index", 0, "--causal", "--out", one)
        self.assertNotIn("segments.npy", os.listdir(one))
        self.assertTrue(summary(one + "/info.json")["causal"])
        self.assertLessEqual(oracle_rel_loss(one, None, causal=True), 1e-24)
        self.assertGreater(oracle_rel_loss(one, None, causal=False), 1e-3)


class WayBack(unittest.TestCase):
    """--to-state-dict from known X, Y (no solve): the truth moved along the flat direction, a full
    rank X, the bias column or none, float32 templates, a causal decoder layer."""

    @classmethod
    def setUpClass(cls):
        cls.m = random_mha(41, 8, 2)
        cls.sd = save_module("wb.pt", cls.m)
        rng = np.random.default_rng(4)
        save_input("wb-x.npy", rng, (40, 8))
        cls.held_len = [17, 30, 6]
        cls.held = padded(rng, cls.held_len, 30, 8, pad=0.5)
        cls.data = path("wb")
        script("--state-dict", cls.sd, "--heads", 2, "--head", 1, "--input", path("wb-x.npy"), "--out", cls.data)
        cls.X, cls.Y = np.load(cls.data + "/X_true.npy"), np.load(cls.data + "/Y_true.npy")

    def gauge(self, seed):
        """X_true + w e_d^T: the same head (a constant added to every row of the logits)."""
        w = 3 * np.random.default_rng(seed).standard_normal(self.X.shape[0])
        return self.X + np.outer(w, np.eye(self.X.shape[0])[-1])

    def test_standalone(self):
        Xg = self.gauge(1)
        res = fit_dir("wb-gauge", Xg, self.Y)
        self.assertLessEqual(oracle_rel_loss(self.data, X=Xg), 1e-24)  # the same head
        r = to_state_dict(res, 2, 1, path("wb-alone.pt"))
        self.assertLessEqual(r["truncation_sigma_ratio"], 1e-14)
        self.assertGreater(r["flat_part_dropped"], 0.1)
        new = torch.load(path("wb-alone.pt"))
        self.assertEqual(set(new), {"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"})
        fresh = torch.nn.MultiheadAttention(8, 2, dtype=torch.float64).eval()
        fresh.load_state_dict(new)
        # W~_Q^T W~_K / sqrt(d_k) is X with its last column (the key bias's, flat) set to 0.
        dk, E = 4, 8
        wq = np.hstack([new["in_proj_weight"][4:8].numpy(), new["in_proj_bias"][4:8].numpy()[:, None]])
        wk = np.hstack([new["in_proj_weight"][12:16].numpy(), new["in_proj_bias"][12:16].numpy()[:, None]])
        self.assertTrue(np.all(wk[:, E] == 0))
        Xc = self.X.copy()
        Xc[:, E] = 0
        self.assertLessEqual(np.abs(wq.T @ wk / np.sqrt(dk) - Xc).max(), 1e-12 * np.abs(Xc).max())
        got = mha_forward(fresh, self.held, self.held_len)
        ref, _ = per_head_batched(self.m, self.held, self.held_len, 1)
        self.assertLessEqual(rel(got[:, 4:], ref), 1e-12)
        self.assertTrue(np.all(got[:, :4] == 0))  # the other head: zero weights, zero output
        self.assertRegex(script("--to-state-dict", res, "--heads", 2, "--head", 1, "--out", path("wb-alone.pt"),
                                "--force").stdout,
                         r"rank-4 truncation sigma_5/sigma_1 = .*key bias set to 0")

    def test_into_template(self):
        template = scrambled(self.m.state_dict(), "", 8, 2, 1, seed=5)
        torch.save(template, path("wb-scrambled.pt"))
        res = fit_dir("wb-gauge2", self.gauge(2), self.Y)
        to_state_dict(res, 2, 1, path("wb-new.pt"), "--state-dict", path("wb-scrambled.pt"))
        new = torch.load(path("wb-new.pt"))
        check_others_untouched(self, new, template, "", 8, 2, 1)
        fresh = torch.nn.MultiheadAttention(8, 2).double().eval()
        fresh.load_state_dict(new)
        ref = mha_forward(self.m, self.held, self.held_len)
        self.assertLessEqual(rel(mha_forward(fresh, self.held, self.held_len), ref), 1e-12)
        broken = torch.nn.MultiheadAttention(8, 2).double().eval()
        broken.load_state_dict(template)
        self.assertGreater(rel(mha_forward(broken, self.held, self.held_len), ref), 1e-2)  # the test can fail
        # The same template with separate q/k/v_proj_weight (the layout export accepts too): the same rows.
        split = {k: v for k, v in template.items() if k != "in_proj_weight"}
        for j, n in enumerate("qkv"):
            split[n + "_proj_weight"] = template["in_proj_weight"][8 * j:8 * (j + 1)].clone()
        torch.save(split, path("wb-split.pt"))
        to_state_dict(res, 2, 1, path("wb-split-new.pt"), "--state-dict", path("wb-split.pt"))
        got = torch.load(path("wb-split-new.pt"))
        self.assertEqual(set(got), set(split))
        for j, n in enumerate("qkv"):
            self.assertTrue(torch.equal(got[n + "_proj_weight"], new["in_proj_weight"][8 * j:8 * (j + 1)]), n)
        self.assertTrue(torch.equal(got["in_proj_bias"], new["in_proj_bias"]))

    def test_full_rank_fit_truncated(self):
        Xn = self.X + 1e-3 * np.random.default_rng(6).standard_normal(self.X.shape)
        res = fit_dir("wb-noisy", Xn, self.Y)
        r = to_state_dict(res, 2, 1, path("wb-noisy.pt"))
        Xc = Xn.copy()
        Xc[:, 8] = 0
        U, s, Vt = np.linalg.svd(Xc)
        self.assertAlmostEqual(r["truncation_sigma_ratio"], s[4] / s[0], delta=1e-12)
        self.assertGreater(r["truncation_sigma_ratio"], 1e-5)
        new = torch.load(path("wb-noisy.pt"))
        wq = np.hstack([new["in_proj_weight"][4:8].numpy(), new["in_proj_bias"][4:8].numpy()[:, None]])
        wk = np.hstack([new["in_proj_weight"][12:16].numpy(), new["in_proj_bias"][12:16].numpy()[:, None]])
        best = (U[:, :4] * s[:4]) @ Vt[:4]  # Eckart-Young: the best rank-4 approximation
        self.assertLessEqual(np.abs(wq.T @ wk / 2 - best).max(), 1e-12 * np.abs(best).max())
        txt = script("--to-state-dict", res, "--heads", 2, "--head", 1, "--out", path("wb-noisy.pt"), "--force").stdout
        self.assertIn("X is not rank 4", txt)

    def test_flat_direction_of_the_inputs(self):
        """Inputs with their own flat direction (here a constant feature: x[:, 0] = 1, so A e_1 = 1):
        a fit X_true + w e_1^T is the same head on them, but rank d_k + 1; --flat e_1 maps it back
        to the head, plain truncation does not."""
        m = random_mha(44, 8, 2, bias=False)
        sd = save_module("wb-flat.pt", m)
        rng = np.random.default_rng(12)
        x = rng.standard_normal((30, 8))
        x[:, 0] = 1
        np.save(path("wb-flat-x.npy"), x)
        data = path("wb-flat")
        script("--state-dict", sd, "--heads", 2, "--head", 0, "--input", path("wb-flat-x.npy"), "--out", data)
        X, Y = np.load(data + "/X_true.npy"), np.load(data + "/Y_true.npy")
        Xg = X + np.outer(3 * rng.standard_normal(8), np.eye(8)[0])
        self.assertLessEqual(oracle_rel_loss(data, X=Xg), 1e-24)
        res = fit_dir("wb-flat-fit", Xg, Y)
        np.save(path("wb-flat-u.npy"), np.eye(8)[0])
        held_len = [20, 9]
        held = padded(rng, held_len, 20, 8, pad=0.0)
        held[:, :, 0] = 1
        ref = mha_forward(m, held, held_len)
        for flat, ok in ((None, False), (path("wb-flat-u.npy"), True)):
            r = to_state_dict(res, 2, 0, path("wb-flat-new.pt"), "--state-dict", sd, "--force",
                              *(["--flat", flat] if flat else []))
            fresh = torch.nn.MultiheadAttention(8, 2, bias=False).double().eval()
            fresh.load_state_dict(torch.load(path("wb-flat-new.pt")))
            err = rel(mha_forward(fresh, held, held_len), ref)
            if ok:
                self.assertLessEqual(r["truncation_sigma_ratio"], 1e-14)
                self.assertGreater(r["flat_part_dropped"], 0.1)
                self.assertLessEqual(err, 1e-12)
            else:
                self.assertGreater(r["truncation_sigma_ratio"], 1e-3)
                self.assertGreater(err, 1e-3)

    def test_no_bias_float32_single_head(self):
        torch.manual_seed(42)
        m = torch.nn.MultiheadAttention(6, 1, bias=False).eval()  # float32, H = 1: d_k = E, no truncation
        sd = save_module("wb32.pt", m)
        x = np.random.default_rng(7).standard_normal((20, 6))
        np.save(path("wb32-x.npy"), x)
        data = path("wb32")
        script("--state-dict", sd, "--heads", 1, "--head", 0, "--input", path("wb32-x.npy"), "--out", data)
        res = fit_dir("wb32-fit", np.load(data + "/X_true.npy"), np.load(data + "/Y_true.npy"))
        r = to_state_dict(res, 1, 0, path("wb32-new.pt"), "--state-dict", sd)
        self.assertEqual((r["d"], r["d_k"], r["truncation_sigma_ratio"], r["bias_folded"]), (6, 6, 0.0, False))
        new = torch.load(path("wb32-new.pt"))
        check_others_untouched(self, new, m.state_dict(), "", 6, 1, 0)
        self.assertEqual(new["in_proj_weight"].dtype, torch.float32)
        fresh = torch.nn.MultiheadAttention(6, 1, bias=False).eval()
        fresh.load_state_dict(new)
        held = padded(np.random.default_rng(8), [12, 7], 12, 6, pad=0.0).astype(np.float32)
        with torch.no_grad():
            def fwd(mod):
                xb = torch.from_numpy(held).transpose(0, 1)
                return mod(xb, xb, xb, key_padding_mask=pad_mask([12, 7], 12), need_weights=False)[0].numpy()
            err = rel(fwd(fresh), fwd(m))
        self.assertLessEqual(err, 1e-5)  # float32 weights: rounding, not the way back

    def test_causal_decoder_from_truth(self):
        """A causal packed set's export, back through the decoder layer's state dict, from the truth
        moved along the flat direction: the whole layer's output is the original's."""
        layer = random_decoder_layer(43)
        sd = save_module("wb-dec.pt", layer)
        lengths = [19, 6, 12]
        rng = np.random.default_rng(9)
        xf, lf = save_batch("wb-dec-x", padded(rng, lengths, 19, 8), lengths)
        data = path("wb-dec")
        script("--state-dict", sd, "--heads", 2, "--head", 1, "--prefix", "self_attn.", "--input", xf,
               "--lengths", lf, "--causal", "--out", data)
        X, Y = np.load(data + "/X_true.npy"), np.load(data + "/Y_true.npy")
        res = fit_dir("wb-dec-fit", X + np.outer(rng.standard_normal(9), np.eye(9)[-1]), Y)
        template = scrambled(layer.state_dict(), "self_attn.", 8, 2, 1, seed=10)
        torch.save(template, path("wb-dec-scrambled.pt"))
        to_state_dict(res, 2, 1, path("wb-dec-new.pt"), "--state-dict", path("wb-dec-scrambled.pt"),
                      "--prefix", "self_attn.")
        new = torch.load(path("wb-dec-new.pt"))
        check_others_untouched(self, new, template, "self_attn.", 8, 2, 1)
        fresh = random_decoder_layer(99)
        fresh.load_state_dict(new)
        hl = [21, 4]
        held, memory = padded(rng, hl, 21, 8, pad=0.0), rng.standard_normal((2, 7, 8))
        ref = decoder_forward(layer, held, hl, memory)
        self.assertLessEqual(rel(decoder_forward(fresh, held, hl, memory), ref), 1e-12)
        broken = random_decoder_layer(99)
        broken.load_state_dict(template)
        self.assertGreater(rel(decoder_forward(broken, held, hl, memory), ref), 1e-3)


class RoundTrip(unittest.TestCase):
    """module (random weights) -> export -> attnreg solve from X_true + 10 % noise -> --to-state-dict
    into the module's state dict with head h scrambled -> a fresh module -> its output on held-out
    inputs is the original's (relative error <= 1e-6)."""

    def roundtrip(self, name, module, fresh, forward, heads, head, train, held, prefix="", causal=False):
        """train, held: (x, lengths or None) padded batches; lengths None for one (L, E) sequence.
        forward(module, x, lengths): the module's output on the valid rows."""
        E = module.self_attn.embed_dim if prefix else module.embed_dim
        sd = save_module(name + ".pt", module)
        xf, lf = save_batch(name + "-x", *train) if train[1] is not None else (save_batch(name + "-x", train[0])[0], None)
        data = path(name)
        args = ["--state-dict", sd, "--heads", heads, "--head", head, "--input", xf] + (["--lengths", lf] if lf else []) + \
            (["--prefix", prefix] if prefix else []) + (["--causal"] if causal else [])
        export(*args, "--out", data)
        seg = np.load(data + "/segments.npy") if os.path.exists(data + "/segments.npy") else None
        self.assertLessEqual(oracle_rel_loss(data, seg, causal), 1e-24)  # the exported data is the masked model's
        mask = ["--causal"] if causal else []
        run(2, "eval", "--data", data, "--x", data + "/X_true.npy", "--y", data + "/Y_true.npy", "--out",
            data + "-ev", "--quiet", *mask)
        self.assertLessEqual(summary(data + "-ev/eval.json")["rel_loss"], 1e-24)
        X = np.load(data + "/X_true.npy")
        np.save(path(name + "-x0.npy"), perturbed(X, 0.1, seed=len(name)))
        res = path(name + "-fit")
        run(2, "solve", "--data", data, "--x0", path(name + "-x0.npy"), "--max-iter", 500, "--out", res, "--quiet", *mask)
        s = summary(res + "/summary.json")
        self.assertLessEqual(s["rel_loss"], 1e-20, s["reason"])
        # Held-out errors of the fit itself (--compare), then through the state dict.
        hx, hl = held
        hf, hlf = save_batch(name + "-held", hx, hl)
        cmp = json.loads(export(*args, "--compare", res, "--heldout-input", hf, "--heldout-lengths", hlf,
                                "--json").stdout)["heldout"]
        self.assertEqual(cmp["sequences"], len(hl))
        self.assertLessEqual(cmp["output_rel_error_max"], 1e-6)
        template = scrambled(module.state_dict(), prefix, E, heads, head, seed=len(name) + 1)
        torch.save(template, path(name + "-scrambled.pt"))
        r = to_state_dict(res, heads, head, path(name + "-new.pt"), "--state-dict", path(name + "-scrambled.pt"),
                          *(["--prefix", prefix] if prefix else []), via=export)
        self.assertLessEqual(r["truncation_sigma_ratio"], 1e-8)
        new = torch.load(path(name + "-new.pt"))
        check_others_untouched(self, new, template, prefix, E, heads, head)
        f = fresh()
        f.load_state_dict(new)
        ref = forward(module, hx, hl)
        err = rel(forward(f, hx, hl), ref)
        print("\n  %s: %d iterations, rel. loss %.1e, sigma ratio %.1e, held-out errors: attention %.1e, head output "
              "%.1e (max over sequences), module output through the state dict %.1e"
              % (name, s["iterations"], s["rel_loss"], r["truncation_sigma_ratio"], cmp["attention_rel_error"],
                 cmp["output_rel_error_max"], err), file=sys.stderr)
        self.assertLessEqual(err, 1e-6)
        broken = fresh()
        broken.load_state_dict(template)
        self.assertGreater(rel(forward(broken, hx, hl), ref), 1e-3)  # the scrambled head is wrong

    def single(self, name, bias):
        rng = np.random.default_rng(11)
        m = random_mha(51 + bias, 8, 2, bias=bias)
        held = (padded(rng, [40, 13, 29], 40, 8, pad=0.0), [40, 13, 29])
        self.roundtrip(name, m, lambda: random_mha(98, 8, 2, bias=bias), mha_forward, 2, 1,
                       (rng.standard_normal((64, 8)), None), held)

    def test_single_sequence_bias(self):
        self.single("rt-bias", True)

    def test_single_sequence_no_bias(self):
        self.single("rt-nobias", False)

    def test_packed_padded_set(self):
        rng = np.random.default_rng(12)
        lengths = [40, 13, 27, 6, 1]
        m = random_mha(53, 8, 2)
        train = (padded(rng, lengths, 40, 8), lengths)
        held = (padded(rng, [35, 8, 20], 35, 8, pad=0.0), [35, 8, 20])
        self.roundtrip("rt-packed", m, lambda: random_mha(97, 8, 2), mha_forward, 2, 0, train, held)

    def test_causal_decoder_layer(self):
        rng = np.random.default_rng(13)
        layer = random_decoder_layer(54)
        lengths = [32, 20, 9, 1]
        memory = rng.standard_normal((3, 5, 8))
        train = (padded(rng, lengths, 32, 8), lengths)
        held = (padded(rng, [30, 17, 2], 30, 8, pad=0.0), [30, 17, 2])
        self.roundtrip("rt-causal", layer, lambda: random_decoder_layer(96),
                       lambda mod, x, n: decoder_forward(mod, x, n, memory), 2, 1, train, held,
                       prefix="self_attn.", causal=True)


class CompareSets(unittest.TestCase):
    """--compare on sets of several sequences: per sequence, overall, max and mean, masked as the
    export; and refused when the solve's data says other masks or sequences."""

    @classmethod
    def setUpClass(cls):
        cls.m = random_mha(61, 6, 2)
        cls.sd = save_module("cs.pt", cls.m)
        rng = np.random.default_rng(14)
        cls.lengths, cls.held_len = [24, 10, 17], [30, 12]
        cls.xf, cls.lf = save_batch("cs-x", padded(rng, cls.lengths, 24, 6), cls.lengths)
        cls.hf, cls.hlf = save_batch("cs-h", padded(rng, cls.held_len, 30, 6), cls.held_len)
        cls.base = ["--state-dict", cls.sd, "--heads", 2, "--head", 0, "--input", cls.xf, "--lengths", cls.lf]
        cls.held = ["--heldout-input", cls.hf, "--heldout-lengths", cls.hlf]
        cls.data, cls.cdata = path("cs"), path("cs-causal")
        script(*cls.base, "--out", cls.data)
        script(*cls.base, "--causal", "--out", cls.cdata)

    def compare(self, result, *extra, check=True):
        p = script(*self.base, "--compare", result, *self.held, "--json", *extra, check=check)
        return json.loads(p.stdout) if check else p

    def test_truth_and_perturbed(self):
        X, Y = np.load(self.data + "/X_true.npy"), np.load(self.data + "/Y_true.npy")
        r = self.compare(fit_dir("cs-truth", X, Y))
        self.assertEqual((r["input"]["sequences"], r["input"]["n"], r["heldout"]["sequences"], r["heldout"]["n"]),
                         (3, 51, 2, 42))
        self.assertEqual([s["n"] for s in r["heldout"]["per_sequence"]], self.held_len)
        for key in ("input", "heldout"):
            for k in ("attention_rel_error", "output_rel_error"):
                self.assertLess(r[key][k + "_max"], 1e-13, (key, k))
        Xp = perturbed(X, 0.05, seed=3)
        r = self.compare(fit_dir("cs-perturbed", Xp, Y))
        seg = np.load(self.data + "/segments.npy")
        # Against the oracle: the output error on the training set is sqrt(attnreg's relative loss),
        # the attention error that of the whole block-diagonal n x n map.
        self.assertAlmostEqual(r["input"]["output_rel_error"], np.sqrt(oracle_rel_loss(self.data, seg, X=Xp)),
                               delta=1e-9 * r["input"]["output_rel_error"])
        A = load_problem(self.data)[0]
        P, _ = masked_model(A, A, A, X, Y, seg)
        Pp, _ = masked_model(A, A, A, Xp, Y, seg)
        self.assertAlmostEqual(r["input"]["attention_rel_error"], rel(Pp, P), delta=1e-9 * rel(Pp, P))
        for b in range(3):
            s = slice(seg[b], seg[b + 1])
            self.assertAlmostEqual(r["input"]["per_sequence"][b]["attention_rel_error"], rel(Pp[s, s], P[s, s]),
                                   delta=1e-9 * rel(Pp[s, s], P[s, s]))
        for key in ("input", "heldout"):
            for k in ("attention_rel_error", "output_rel_error"):
                per = [s[k] for s in r[key]["per_sequence"]]
                self.assertEqual(r[key][k + "_max"], max(per))
                self.assertAlmostEqual(r[key][k + "_mean"], np.mean(per), delta=1e-15)
                self.assertGreater(min(per), 1e-4)
        # The causal comparison of the same fit differs (the mask is applied).
        c = json.loads(script("--state-dict", self.sd, "--heads", 2, "--head", 0, "--input", self.xf, "--lengths",
                              self.lf, "--causal", "--compare", fit_dir("cs-perturbed", Xp, Y), *self.held,
                              "--json").stdout)
        cseg_loss = oracle_rel_loss(self.cdata, seg, causal=True, X=Xp)
        self.assertAlmostEqual(c["input"]["output_rel_error"], np.sqrt(cseg_loss), delta=1e-9 * np.sqrt(cseg_loss))
        self.assertNotAlmostEqual(c["input"]["output_rel_error"], r["input"]["output_rel_error"], delta=1e-6)
        txt = script(*self.base, "--compare", path("cs-perturbed"), *self.held).stdout
        self.assertRegex(txt, r"input +.*cs-x.npy \(3 sequences\) +n=51 +attention rel. error")
        self.assertRegex(txt, r"max over the 2 sequences +attention rel. error [0-9.e-]+ +output rel. error")
        self.assertRegex(txt, r"\n +sequence 1 +n=12 +attention rel. error")

    def test_solve_data_must_match(self):
        """RESULT/summary.json names the solve's data: its mask and sequences are checked."""
        X, Y = np.load(self.cdata + "/X_true.npy"), np.load(self.cdata + "/Y_true.npy")
        res = fit_dir("cs-solved-causal", X, Y, data=self.cdata)
        p = self.compare(res, check=False)  # forgot --causal
        self.assertEqual(p.returncode, 2)
        self.assertIn("exported with --causal (info.json): give --causal", p.stderr)
        r = self.compare(res, "--causal")
        self.assertLess(r["heldout"]["output_rel_error_max"], 1e-13)
        res2 = fit_dir("cs-solved", X, Y, data=self.data)
        p = self.compare(res2, "--causal", check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("exported without --causal (info.json): drop --causal", p.stderr)
        # A solve whose own summary says it ignored the export's mask (once solve records --causal).
        p = self.compare(fit_dir("cs-solved-nomask", X, Y, data=self.cdata, causal=False), "--causal", check=False)
        self.assertEqual(p.returncode, 3)
        self.assertIn("solved without --causal (summary.json)", p.stderr)
        # The training sequences must be the solve's.
        np.save(path("cs-len2.npy"), np.array([24, 10, 16]))
        p = script("--state-dict", self.sd, "--heads", 2, "--head", 0, "--input", self.xf, "--lengths",
                   path("cs-len2.npy"), "--compare", res2, check=False)
        self.assertEqual(p.returncode, 3)
        self.assertIn("holds 3 sequences (lengths 24, 10, 17), but --input", p.stderr)
        p = script("--state-dict", self.sd, "--heads", 2, "--head", 1, "--input", self.xf, "--lengths", self.lf,
                   "--compare", res2, check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("head 0 of 2 (info.json), not --head 1", p.stderr)
        for q in (p,):
            self.assertEqual(len(q.stderr.splitlines()), 1)


class BadSets(Expect, unittest.TestCase):
    """Bad calibration-set inputs and bad --to-state-dict inputs: one line naming the file or
    option, the script's exit codes, nothing written."""

    @classmethod
    def setUpClass(cls):
        torch.manual_seed(5)
        rng = np.random.default_rng(15)
        cls.sd = save_module("bs.pt", torch.nn.MultiheadAttention(4, 2))
        m = random_mha(71, 4, 2)
        cls.sdb = save_module("bs-bias.pt", m)
        cls.nobias = save_module("bs-nobias.pt", torch.nn.MultiheadAttention(4, 2, bias=False))
        save_input("bs-x3.npy", rng, (2, 10, 4))
        save_input("bs-x.npy", rng, (10, 4))
        for name, v in (("bs-lf", np.array([3.0, 4.0])), ("bs-l22", np.array([[3, 4], [1, 2]])),
                        ("bs-l0", np.array([3, 0])), ("bs-l11", np.array([11, 2])), ("bs-l3", np.array([1, 2, 3])),
                        ("bs-s-dec", np.array([0, 6, 4, 10])), ("bs-s-end", np.array([0, 4, 9])),
                        ("bs-s-f", np.array([0.0, 4.0, 10.0])), ("bs-s-0", np.array([1, 4, 10]))):
            np.save(path(name + ".npy"), v)
        # A fit of head 1 of bs-bias.pt with the bias column (d = 5), and wrong shapes.
        cls.fit = fit_dir("bs-fit", np.eye(5), np.ones((5, 2)))
        cls.fit_x = fit_dir("bs-fit-x", np.eye(6), np.ones((6, 2)))
        cls.fit_y = fit_dir("bs-fit-y", np.eye(5), np.ones((5, 3)))
        cls.fit_xy = fit_dir("bs-fit-xy", np.eye(4), np.ones((5, 2)))
        with open(path("bs-existing.pt"), "w") as f:
            f.write("keep")
        os.makedirs(path("bs-dir"))

    def test_set_errors(self):
        e = self.expect
        sd, x3, x2 = self.sd, path("bs-x3.npy"), path("bs-x.npy")
        ok = ["--state-dict", sd, "--heads", 2, "--head", 0]
        e(3, ["--lengths", "bs-lf.npy", "dtype float64", "integers"], *ok, "--input", x3, "--lengths", path("bs-lf.npy"))
        e(3, ["--lengths", "bs-l22.npy", "shape (2, 2), expected (2,)"], *ok, "--input", x3, "--lengths",
          path("bs-l22.npy"), via_program=True)
        e(3, ["--lengths", "bs-l3.npy", "shape (3,), expected (2,)"], *ok, "--input", x3, "--lengths", path("bs-l3.npy"))
        e(3, ["--lengths", "bs-l0.npy", "lengths[1] = 0", "1..10"], *ok, "--input", x3, "--lengths", path("bs-l0.npy"))
        e(3, ["--lengths", "bs-l11.npy", "lengths[0] = 11", "padded length"], *ok, "--input", x3, "--lengths",
          path("bs-l11.npy"))
        e(4, ["--lengths", "no-such.npy", "no such file"], *ok, "--input", x3, "--lengths", "no-such.npy")
        e(2, ["--lengths", "goes with a padded (batch, L, E) input", "--segments"], *ok, "--input", x2,
          "--lengths", path("bs-l0.npy"))
        e(2, ["--segments", "goes with a packed (n, E) input", "--lengths"], *ok, "--input", x3, "--segments",
          path("bs-s-end.npy"))
        e(3, ["--segments", "bs-s-dec.npy", "not increasing at 2"], *ok, "--input", x2, "--segments",
          path("bs-s-dec.npy"), via_program=True)
        e(3, ["--segments", "bs-s-end.npy", "last offset 9", "n = 10"], *ok, "--input", x2, "--segments",
          path("bs-s-end.npy"))
        e(3, ["--segments", "bs-s-f.npy", "dtype float64"], *ok, "--input", x2, "--segments", path("bs-s-f.npy"))
        e(3, ["--segments", "bs-s-0.npy", "first offset 1"], *ok, "--input", x2, "--segments", path("bs-s-0.npy"))
        e(2, ["--lengths and --segments"], *ok, "--input", x3, "--lengths", path("bs-l0.npy"), "--segments",
          path("bs-s-0.npy"))
        p = script(*ok, "--input", x3, "--compare", self.fit, "--heldout-lengths", path("bs-l0.npy"), check=False)
        self.assertEqual((p.returncode, p.stderr.count("\n")), (2, 1))
        self.assertIn("--heldout-lengths: needs --heldout-input", p.stderr)
        e(2, ["--batch-index 2", "out of range", "2 sequences"], *ok, "--input", x3, "--batch-index", 2)
        e(2, ["--heldout-input", "goes with --compare"], *ok, "--input", x3, "--heldout-input", x3,
          "--heldout-lengths", path("bs-l0.npy"))

    def test_to_state_dict_errors(self):
        e = self.expect
        out = path("bs-new.pt")
        tsd = ["--heads", 2, "--head", 1]
        e(3, ["--to-state-dict", "bs-fit-x", "X.npy is 6 x 6", "E = 4"], "--to-state-dict", self.fit_x, *tsd,
          "--state-dict", self.sdb, out=out, via_program=True)
        e(3, ["--to-state-dict", "bs-fit-y", "Y.npy has 3 columns", "d_k = 4 / 2 = 2"], "--to-state-dict",
          self.fit_y, *tsd, "--state-dict", self.sdb, out=out)
        e(3, ["--to-state-dict", "bs-fit-xy", "X.npy has shape (4, 4), Y.npy (5, 2)"], "--to-state-dict",
          self.fit_xy, *tsd, out=out)
        e(3, ["bs-nobias.pt", "no in_proj_bias", "bias=False"], "--to-state-dict", self.fit, *tsd, "--state-dict",
          self.nobias, out=out)
        e(3, ["--heads 3", "X.npy is 5 x 5", "E = 6"], "--to-state-dict", self.fit, "--heads", 3, "--head", 0, out=out)
        e(4, ["--to-state-dict", "no-such", "no X.npy"], "--to-state-dict", path("no-such"), *tsd, out=out)
        e(4, ["--out", "bs-existing.pt", "exists", "--force"], "--to-state-dict", self.fit, *tsd, out=path("bs-existing.pt"),
          via_program=True)
        e(4, ["--out", "is a directory"], "--to-state-dict", self.fit, *tsd, out=path("bs-dir"))
        e(2, ["--input", "reads no inputs"], "--to-state-dict", self.fit, *tsd, "--input", path("bs-x.npy"), out=out)
        e(2, ["--head 2", "out of range"], "--to-state-dict", self.fit, "--heads", 2, "--head", 2, out=out)
        np.save(path("bs-u.npy"), np.ones(4))
        e(3, ["--flat", "bs-u.npy", "shape (4,)", "d = 5"], "--to-state-dict", self.fit, *tsd, "--flat", path("bs-u.npy"),
          out=out)
        e(2, ["--flat goes with --to-state-dict"], *["--state-dict", self.sd, "--heads", 2, "--head", 0], "--input",
          path("bs-x.npy"), "--flat", path("bs-u.npy"))
        e(2, ["--compare", "--to-state-dict"], "--to-state-dict", self.fit, "--compare", self.fit, *tsd, out=out)
        self.assertFalse(os.path.exists(out))
        script("--to-state-dict", self.fit, *tsd, "--state-dict", self.sdb, "--out", out)  # the good one works
        torch.load(out)
        script("--to-state-dict", self.fit, *tsd, "--out", path("bs-existing.pt"), "--force")
        self.assertIn("in_proj_weight", torch.load(path("bs-existing.pt")))


if __name__ == "__main__":
    unittest.main(verbosity=2)

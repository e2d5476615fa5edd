#!/usr/bin/python3
"""Masked reference cases for the tests (tests/data/mask/, or argv[1]), from PyTorch autograd.

Each case is a packed set of sequences (segments.npy: int64 offsets 0 = o_0 < ... < o_K = n,
lengths unequal, some of length 1), with or without a causal mask (meta.json "causal").  The
model is attnreg's, masked: S = A1 X A2^T with -inf where row j may not see key l (another
segment, or l > j when causal), F = softmax_rows(S), L = ||F A3 Y - B||_F^2.  Written, in float64:
A1, A2, A3, B, X, Y, segments.npy, meta.json (loss, causal), grad_X, grad_Y, hessian (exact,
z = [vec_row X; vec_row Y]), hessian_gn (2 J^T J), and the pieces of the matrix-free step's
preconditioner (G1 = A1^T A1, Nbar = (1/n) sum_j 2 M_j M_j^T, PtP = P^T P; docs/math.md §7) and
the least-squares Y at X (ls_Y: (P^T P) Y = P^T B).  The unmasked formulas of the reference
cases are recomputed with an all-pass mask first and must agree to 1e-12 with the shared
reference case "tiny" (pins the conventions).
    /usr/bin/python3 scripts/make-mask-reference.py [OUTDIR]
"""
import json
import os
import sys

import numpy as np
import torch

torch.set_default_dtype(torch.float64)

CASES = [  # name, lengths, causal, d, m, x scale, seed
    ("seg", [5, 1, 9, 8], False, 3, 2, 1.0, 11),
    ("seg_causal", [5, 1, 9, 8], True, 3, 2, 1.0, 12),
    ("causal", [19], True, 3, 3, 1.5, 13),
    ("mixed", [1, 1, 7, 3, 12, 7], True, 4, 3, 1.0, 14),
]


def allowed(offsets, causal):
    n = offsets[-1]
    ok = np.zeros((n, n), dtype=bool)
    for s in range(len(offsets) - 1):
        a, b = offsets[s], offsets[s + 1]
        ok[a:b, a:b] = True
    if causal:
        ok &= np.tril(np.ones((n, n), dtype=bool))
    return torch.from_numpy(ok)


def model(A1, A2, A3, ok):
    def probs(X):
        return torch.softmax((A1 @ X @ A2.T).masked_fill(~ok, float("-inf")), dim=1)

    def residual(z, B, dd, xs, ys):
        X, Y = z[:dd].reshape(xs), z[dd:].reshape(ys)
        return (probs(X) @ A3 @ Y - B).reshape(-1)

    return probs, residual


def write_case(out, name, lengths, causal, d, m, xs, seed):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    A1, A2, A3 = (torch.from_numpy(rng.standard_normal((n, d)) / np.sqrt(d)) for _ in range(3))
    Xt = torch.from_numpy(xs * rng.standard_normal((d, d)))
    Yt = torch.from_numpy(rng.standard_normal((d, m)))
    ok = allowed(offsets, causal)
    probs, residual = model(A1, A2, A3, ok)
    B = probs(Xt) @ A3 @ Yt + torch.from_numpy(0.1 * rng.standard_normal((n, m)))
    X = Xt + torch.from_numpy(0.3 * xs * rng.standard_normal((d, d)))
    Y = Yt + torch.from_numpy(0.3 * rng.standard_normal((d, m)))
    dd = d * d
    z = torch.cat([X.reshape(-1), Y.reshape(-1)]).requires_grad_(True)
    f = lambda z: (residual(z, B, dd, X.shape, Y.shape) ** 2).sum()
    loss = f(z)
    (g,) = torch.autograd.grad(loss, z)
    H = torch.autograd.functional.hessian(f, z.detach())
    J = torch.autograd.functional.jacobian(lambda z: residual(z, B, dd, X.shape, Y.shape), z.detach())
    G = 2 * J.T @ J
    # the preconditioner's pieces and the least-squares Y at X
    F = probs(X)
    V = A3 @ Y
    P = F @ A3
    PY = P @ Y
    Nbar = torch.zeros(d, d)
    for j in range(n):
        Mj = A2.T @ (F[j][:, None] * V) - torch.outer(A2.T @ F[j], PY[j])
        Nbar += 2 * Mj @ Mj.T
    Nbar /= n
    lsY = torch.linalg.solve(P.T @ P, P.T @ B)
    cd = os.path.join(out, name)
    os.makedirs(cd, exist_ok=True)
    arrays = {"A1": A1, "A2": A2, "A3": A3, "B": B, "X": X, "Y": Y, "grad_X": g[:dd].reshape(d, d),
              "grad_Y": g[dd:].reshape(d, m), "hessian": H, "hessian_gn": G, "G1": A1.T @ A1, "Nbar": Nbar,
              "PtP": P.T @ P, "ls_Y": lsY}
    for k, v in arrays.items():
        np.save(os.path.join(cd, k + ".npy"), v.detach().numpy())
    np.save(os.path.join(cd, "segments.npy"), offsets)
    with open(os.path.join(cd, "meta.json"), "w") as fh:
        json.dump({"loss": float(loss), "causal": causal, "lengths": lengths, "n": n, "d": d, "m": m,
                   "unmasked_pairs": int(ok.sum()), "seed": seed}, fh, indent=1)
    print("%-10s n=%-3d d=%d m=%d K=%d causal=%d loss %.6g, |H - GN|/|H| %.3f" % (
        name, n, d, m, len(lengths), causal, float(loss), float((H - G).abs().max() / H.abs().max())))


def check_conventions():
    ref = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "reference", "tiny")
    A1, A2, A3, B, X, Y = (torch.from_numpy(np.load(os.path.join(ref, f + ".npy")))
                           for f in ("A1", "A2", "A3", "B", "X", "Y"))
    n, dd = A1.shape[0], X.numel()
    _, residual = model(A1, A2, A3, allowed(np.array([0, n]), False))
    z = torch.cat([X.reshape(-1), Y.reshape(-1)])
    H = torch.autograd.functional.hessian(lambda z: (residual(z, B, dd, X.shape, Y.shape) ** 2).sum(), z).numpy()
    Href = np.load(os.path.join(ref, "hessian.npy"))
    err = np.abs(H - Href).max() / np.abs(Href).max()
    assert err <= 1e-12, "the all-pass mask does not reproduce the reference Hessian (%.3g)" % err


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                                             "tests", "data", "mask")
    check_conventions()
    for c in CASES:
        write_case(out, *c)


if __name__ == "__main__":
    main()

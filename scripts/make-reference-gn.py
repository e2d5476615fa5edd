#!/usr/bin/python3
"""Add the Gauss-Newton Hessian, computed by PyTorch autograd, to each reference case in
tests/data/reference/ (or argv[1]): hessian_gn.npy = 2 J^T J, J the Jacobian of the residual
vec_row(softmax(A1 X A2^T) A3 Y - B) with respect to z = [vec_row(X); vec_row(Y)], in float64.

The case's own exact Hessian (hessian.npy, from the shared reference data) is recomputed the same
way first and must agree to 1e-12: that pins the conventions (z ordering, loss without a 1/2).
Run with Debian 12's /usr/bin/python3 (numpy, torch 1.13):
    /usr/bin/python3 scripts/make-reference-gn.py [REFDIR]
"""
import os
import sys

import numpy as np
import torch


def main():
    ref = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data",
                                                             "reference")
    torch.set_default_dtype(torch.float64)
    for case in sorted(os.listdir(ref)):
        d = os.path.join(ref, case)
        A1, A2, A3, B, X, Y = (torch.from_numpy(np.load(os.path.join(d, f + ".npy")))
                               for f in ("A1", "A2", "A3", "B", "X", "Y"))
        dd = X.numel()

        def residual(z):
            Xz, Yz = z[:dd].reshape(X.shape), z[dd:].reshape(Y.shape)
            return (torch.softmax(A1 @ Xz @ A2.T, dim=1) @ A3 @ Yz - B).reshape(-1)

        z = torch.cat([X.reshape(-1), Y.reshape(-1)])
        H = torch.autograd.functional.hessian(lambda z: (residual(z) ** 2).sum(), z).numpy()
        Href = np.load(os.path.join(d, "hessian.npy"))
        err = np.abs(H - Href).max() / np.abs(Href).max()
        assert err <= 1e-12, "%s: exact Hessian differs from hessian.npy by %.3g" % (case, err)
        J = torch.autograd.functional.jacobian(residual, z)
        G = (2 * J.T @ J).numpy()
        np.save(os.path.join(d, "hessian_gn.npy"), G)
        print("%-9s D=%-3d exact Hessian agrees to %.1e; |H - GN| / |H| = %.3f" % (
            case, z.numel(), err, np.abs(H - G).max() / np.abs(H).max()))


if __name__ == "__main__":
    main()

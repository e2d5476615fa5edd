"""attnreg plan: its memory estimate against the peak RSS that solve measures (within 25%),
its flop count against the model, and solve's refusal of a run that cannot fit."""
import os
import re
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from arutil import run, summary  # noqa: E402

TMP = tempfile.mkdtemp(prefix="attnreg-plan-")


def plan(n, d, m, ranks, *extra):
    out = run(1, "plan", "--n", n, "--d", d, "--m", m, "--ranks", ranks, *extra).stdout
    total = float(re.search(r"^  total +([0-9.]+)", out, re.M).group(1))
    flops = float(re.search(r"trial loss [0-9.]+, (?:Cholesky \+ solve [0-9.]+, )?total ([0-9.]+)", out).group(1))
    return total, flops, out


class Plan(unittest.TestCase):
    @unittest.skipIf(os.environ.get("ATTNREG_SANITIZED"), "AddressSanitizer inflates RSS; checked in the release build")
    def test_memory_estimate_matches_peak_rss(self):
        for n, d, m, ranks in ((4096, 32, 32, 1), (8192, 16, 8, 2), (16384, 8, 8, 2), (3000, 24, 12, 3)):
            with self.subTest(n=n, d=d, m=m, ranks=ranks):
                data = os.path.join(TMP, "p%d-%d-%d" % (n, d, m))
                if not os.path.exists(data):
                    run(2, "generate", "--n", n, "--d", d, "--m", m, "--out", data, "--quiet")
                out = os.path.join(data, "r%d" % ranks)
                run(ranks, "solve", "--data", data, "--x0", data + "/X0.npy", "--max-iter", 2, "--hessian", "exact",
                    "--out", out, "--quiet")  # the plan counts what the exact Hessian needs
                measured = summary(out + "/summary.json")["peak_rss_mb"]["max"]
                estimate, _, _ = plan(n, d, m, ranks)
                self.assertLessEqual(abs(estimate - measured), 0.25 * measured, (estimate, measured))

    def test_flops_model(self):
        _, flops, out = plan(4096, 32, 32, 4)
        n, d, m, D = 4096.0, 32.0, 32.0, 2048.0
        model = 2 * n * n * (3 * d + m) + 3 * n * n * d * d + n * d ** 4 / 2 + 2 * n * d ** 3 * m + 4 * n * n * d + \
            D ** 3 / 3 + 2 * D * D + 2 * n * n * d  # 4 ranks: the backward pass recomputes the logits
        self.assertAlmostEqual(flops, model * 1e-9, delta=1e-3 * flops)
        self.assertIn("grid 2x2", out)
        self.assertIn("fits", out)

    def test_solve_refuses_what_cannot_fit(self):
        data = os.path.join(TMP, "p4096-32-32")
        if not os.path.exists(data):
            run(2, "generate", "--n", 4096, "--d", 32, "--out", data, "--quiet")
        _, _, out = plan(4096, 32, 32, 2, "--mem-per-rank", "0.1", "--linear-solver", "cholesky")
        self.assertIn("DOES NOT FIT", out)
        # auto takes the matrix-free step when only it fits
        _, _, out = plan(4096, 32, 32, 2, "--mem-per-rank", "0.1")
        self.assertIn("matrix-free CG step", out)
        p = run(2, "solve", "--data", data, "--mem-per-rank", "0.1", "--linear-solver", "cholesky", "--out",
                TMP + "/refused", check=False)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertRegex(p.stderr, r"needs an estimated \d+ MB per rank .* budget is 102 MB")
        self.assertFalse(os.path.exists(TMP + "/refused"))


if __name__ == "__main__":
    unittest.main(verbosity=2)

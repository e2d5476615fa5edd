"""Memory per rank falls with the rank count: every term that grows with n is O(n / ranks).

Two checks that fail if some rank allocates an array whose size grows with n but not with n/P:
  * the plan (which follows the allocations one by one): the memory added by doubling n, at P
    ranks and at 2P ranks, must halve;
  * measured: the peak RSS that `eval --hessian exact` adds when n doubles, at 1 and at 2 ranks,
    must (nearly) halve too.  d = 32 makes the per-row arrays large (about 13.6 KB a row), so a
    replicated n-row table of the old kind (A2, A3 and their n*d^2 tables on every rank) would
    show as tens of MB."""
import os
import re
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from arutil import run, summary  # noqa: E402

TMP = tempfile.mkdtemp(prefix="attnreg-mem-")


def plan_total(n, d, m, ranks):
    out = run(1, "plan", "--n", n, "--d", d, "--m", m, "--ranks", ranks, "--mem-per-rank", 1000).stdout
    return float(re.search(r"^  total +([0-9.]+)", out, re.M).group(1))


class PlanScaling(unittest.TestCase):
    def test_n_dependent_memory_halves_with_twice_the_ranks(self):
        for n, d, m, ranks in ((1 << 22, 16, 16, 4), (10 ** 7, 32, 32, 256), (10 ** 6, 64, 64, 64),
                               (1 << 20, 8, 4, 2), ((1 << 21) + 12345, 12, 5, 3)):
            with self.subTest(n=n, d=d, m=m, ranks=ranks):
                grow_p = plan_total(n, d, m, ranks) - plan_total(n // 2, d, m, ranks)
                grow_2p = plan_total(n, d, m, 2 * ranks) - plan_total(n // 2, d, m, 2 * ranks)
                self.assertGreater(grow_p, 0)
                self.assertLessEqual(grow_2p, 0.52 * grow_p, (grow_p, grow_2p))

    def test_issue_targets_fit_in_2_gb(self):
        for n, d, ranks in ((10 ** 7, 32, 4096), (10 ** 6, 64, 1024)):
            with self.subTest(n=n, d=d, ranks=ranks):
                self.assertLessEqual(plan_total(n, d, d, ranks), 2048.0)


@unittest.skipIf(os.environ.get("ATTNREG_SANITIZED"), "AddressSanitizer inflates RSS; checked in the release build")
class MeasuredScaling(unittest.TestCase):
    def test_rss_growth_with_n_halves_with_twice_the_ranks(self):
        d = 32
        rss = {}
        for n in (4096, 8192):
            data = os.path.join(TMP, "n%d" % n)
            rng = np.random.default_rng(n)
            os.makedirs(data)
            for name in ("A1", "A2", "A3"):
                np.save(os.path.join(data, name + ".npy"), rng.standard_normal((n, d)) / np.sqrt(d))
            np.save(os.path.join(data, "B.npy"), rng.standard_normal((n, d)))
            np.save(os.path.join(data, "X.npy"), 0.5 * rng.standard_normal((d, d)))
            np.save(os.path.join(data, "Y.npy"), rng.standard_normal((d, d)))
            for ranks in (1, 2):
                out = os.path.join(data, "e%d" % ranks)
                # fixed tiles and chunks: by default one rank fuses the passes at n = 4096 (one chunk of
                # 4096 keys, its tables 55 MB) and not at 8192 (chunks of 1024), which would hide the growth
                run(ranks, "eval", "--data", data, "--x", data + "/X.npy", "--y", data + "/Y.npy", "--hessian",
                    "exact", "--tile", 128, "--chunk", 1024, "--out", out, "--quiet", timeout=1800)
                rss[n, ranks] = summary(out + "/eval.json")["peak_rss_mb"]["max"]
        grow1 = rss[8192, 1] - rss[4096, 1]
        grow2 = rss[8192, 2] - rss[4096, 2]
        # the per-row arrays alone add 4096 rows x 13.6 KB = 56 MB at 1 rank, 28 MB at 2
        self.assertGreater(grow1, 30, rss)
        self.assertLessEqual(grow2, 0.7 * grow1, rss)
        print("peak RSS per rank (MB):", rss, "growth at 1 rank %.1f, at 2 ranks %.1f" % (grow1, grow2))


if __name__ == "__main__":
    unittest.main(verbosity=2)

"""attnreg plan: its memory estimate against the peak RSS that solve measures (within 25%, the
README's claim), from a tiny problem (nothing but the runtime's own memory: the baseline the plan
assumes) to large ones; its flops against the flops eval counts in the GEMMs it runs (within 25%
too); and solve's refusal of a run that cannot fit, with the budget from --mem-per-rank or from
SLURM's allocation."""
import os
import re
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from arutil import run, summary  # noqa: E402

TMP = tempfile.mkdtemp(prefix="attnreg-plan-")
TINY = os.path.join(os.path.dirname(__file__), "data", "reference", "tiny")
SANITIZED = os.environ.get("ATTNREG_SANITIZED")


def plan(n, d, m, ranks, *extra):
    """(memory total MB, {phase: GFLOP}, output) of attnreg plan."""
    out = run(1, "plan", "--n", n, "--d", d, "--m", m, "--ranks", ranks, *extra).stdout
    total = float(re.search(r"^  total +([0-9.]+)", out, re.M).group(1))
    line = re.search(r"^  loss \+ gradient .*$", out, re.M).group(0)
    flops = {k.strip(): float(v) for k, v in re.findall(r"([a-zA-Z+ ]+?) ([0-9.]+)(?:,|$)", line)}
    return total, flops, out


class Plan(unittest.TestCase):
    def check_memory(self, data, n, d, m, ranks):
        out = os.path.join(TMP, "mem-%d-%d-%d-r%d" % (n, d, m, ranks))
        run(ranks, "solve", "--data", data, "--x0", data + "/X.npy" if n < 100 else data + "/X0.npy", "--max-iter", 1,
            "--hessian", "exact", "--out", out, "--quiet")  # the plan counts what the exact Hessian needs
        measured = summary(out + "/summary.json")["peak_rss_mb"]["max"]
        estimate, _, _ = plan(n, d, m, ranks)
        self.assertLessEqual(abs(estimate - measured), 0.25 * measured, (estimate, measured))
        return measured

    @unittest.skipIf(SANITIZED, "AddressSanitizer inflates RSS; checked in the release build")
    def test_runtime_baseline(self):
        """A 5 x 2 problem needs almost nothing: its peak RSS is the runtime's (MPI, BLAS, the
        program), measured here, and the plan's estimate must match it like any other."""
        for ranks in (1, 3):
            with self.subTest(ranks=ranks):
                measured = self.check_memory(TINY, 5, 2, 2, ranks)
                print("measured runtime baseline on %d ranks: %.1f MB per rank" % (ranks, measured))

    @unittest.skipIf(SANITIZED, "AddressSanitizer inflates RSS; checked in the release build")
    def test_memory_estimate_matches_peak_rss(self):
        for n, d, m, ranks in ((4096, 32, 32, 1), (8192, 16, 8, 2), (16384, 8, 8, 2), (3000, 24, 12, 3)):
            with self.subTest(n=n, d=d, m=m, ranks=ranks):
                data = os.path.join(TMP, "p%d-%d-%d" % (n, d, m))
                if not os.path.exists(data):
                    run(2, "generate", "--n", n, "--d", d, "--m", m, "--out", data, "--quiet")
                self.check_memory(data, n, d, m, ranks)

    def test_flops_match_counted(self):
        """The plan's flops per evaluation against those eval counts (every GEMM it calls, summed
        over the ranks): loss + gradient alone, and with each kind of Hessian."""
        plans = {}
        for n, d, m, ranks, kinds in ((1024, 16, 8, 1, ("none", "exact", "gauss-newton")),
                                      (600, 8, 16, 1, ("none", "exact", "gauss-newton")),
                                      (1024, 16, 8, 3, ("exact",))):
            data = os.path.join(TMP, "f%d-%d-%d" % (n, d, m))
            if not os.path.exists(data):
                run(2, "generate", "--n", n, "--d", d, "--m", m, "--out", data, "--quiet")
            for kind in kinds:
                with self.subTest(n=n, d=d, m=m, ranks=ranks, hessian=kind):
                    out = os.path.join(data, "eval-%s-%d" % (kind, ranks))
                    run(ranks, "eval", "--data", data, "--x", data + "/X0.npy", "--y", data + "/Y_true.npy",
                        *(["--hessian", kind] if kind != "none" else []), "--out", out, "--quiet")
                    counted = summary(out + "/eval.json")["flops"] * 1e-9
                    hk = "gauss-newton" if kind == "gauss-newton" else "exact"
                    if (n, d, m, hk) not in plans:  # whole-job flops: the same for every rank count
                        plans[n, d, m, hk] = plan(n, d, m, ranks, "--hessian", hk)[1]
                    f = plans[n, d, m, hk]
                    planned = f["loss + gradient"] + (f["Hessian"] if kind != "none" else 0)
                    self.assertLessEqual(abs(planned - counted), 0.25 * counted, (planned, counted))

    def test_flops_of_a_plan(self):
        _, flops, out = plan(4096, 32, 32, 4)
        self.assertEqual(set(flops), {"loss + gradient", "Hessian", "trial loss", "Cholesky + solve", "total"})
        parts = sum(v for k, v in flops.items() if k != "total")
        self.assertAlmostEqual(flops["total"], parts, delta=0.002)
        self.assertIn("grid 2x2", out)
        self.assertIn("fits", out)

    def test_solve_refuses_what_cannot_fit(self):
        """The budget: --mem-per-rank, else SLURM's allocation per CPU (times the CPUs per task)
        or per node (shared by the ranks on it).  A run that passes the check fails next, on a
        missing --x0 (status 4); one that does not is refused (status 2) before it loads anything."""
        data = os.path.join(TMP, "zeros")
        os.makedirs(data, exist_ok=True)
        for name in ("A1", "A2", "A3", "B"):
            np.save(os.path.join(data, name + ".npy"), np.zeros((4096, 32)))
        estimate, _, out = plan(4096, 32, 32, 2, "--mem-per-rank", "0.1", "--linear-solver", "cholesky")
        self.assertIn("DOES NOT FIT", out)
        # --linear-solver auto takes the matrix-free step when only it fits
        _, _, out = plan(4096, 32, 32, 2, "--mem-per-rank", "0.1")
        self.assertIn("matrix-free CG step", out)
        self.assertGreater(estimate, 100)
        slurm = {"SLURM_MEM_PER_CPU": "", "SLURM_MEM_PER_NODE": "", "SLURM_CPUS_PER_TASK": ""}
        cases = [  # extra options, environment, status, message
            (["--mem-per-rank", "0.1"], {}, 2, r"budget is 102 MB \(--mem-per-rank\)"),
            ([], {"SLURM_MEM_PER_CPU": "60"}, 2, r"budget is 60 MB \(SLURM_MEM_PER_CPU\)"),
            ([], {"SLURM_MEM_PER_CPU": "30", "SLURM_CPUS_PER_TASK": "2"}, 2, r"budget is 60 MB \(SLURM_MEM_PER_CPU\)"),
            ([], {"SLURM_MEM_PER_NODE": "120"}, 2, r"budget is 60 MB \(SLURM_MEM_PER_NODE / 2 ranks on the node\)"),
            ([], {"SLURM_MEM_PER_CPU": "%d" % (2 * estimate)}, 4, r"missing\.npy: cannot open"),
            (["--mem-per-rank", "100"], {"SLURM_MEM_PER_CPU": "60"}, 4, r"missing\.npy: cannot open"),
        ]
        for extra, env, code, msg in cases:
            with self.subTest(options=extra, env=env):
                refused = os.path.join(TMP, "refused")
                p = run(2, "solve", "--data", data, "--x0", data + "/missing.npy", "--out", refused,
                        "--linear-solver", "cholesky", *extra,
                        env=dict(slurm, **env), check=False)
                self.assertEqual(p.returncode, code, p.stderr)
                self.assertRegex(p.stderr, msg)
                if code == 2:
                    self.assertRegex(p.stderr, r"needs an estimated \d+ MB per rank")
                self.assertFalse(os.path.exists(refused))


if __name__ == "__main__":
    unittest.main(verbosity=2)

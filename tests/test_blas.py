"""attnreg blas and the OpenBLAS core shown by solve/eval/plan, scripts/env.sh's choice of
OPENBLAS_CORETYPE, and the re-execution with the fitting core (src/sys/reexec.h).  Oracles independent
of attnreg: the CPU's flags from /proc/cpuinfo, the core OpenBLAS itself reports
(openblas_get_corename through ctypes) and the environment of the rank processes (/proc)."""
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from arutil import ATTNREG, ENV, rank_pids, run, summary  # noqa: E402

TMP = tempfile.mkdtemp(prefix="attnreg-blas-")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The vector instructions of some OpenBLAS cores' kernels (the test's own table).
CORE_LEVEL = {"prescott": 1, "core2": 1, "penryn": 1, "nehalem": 1, "atom": 1, "opteron": 1, "barcelona": 1,
              "sandybridge": 2, "bulldozer": 2, "piledriver": 2, "haswell": 3, "zen": 3,
              "skylakex": 4, "cooperlake": 4, "sapphirerapids": 4}
FIT = {4: "SkylakeX", 3: "Haswell"}


def cpu_level():
    """1 SSE, 2 AVX, 3 AVX2 + FMA, 4 AVX-512 (F, DQ, BW, VL, CD), from the kernel's CPU flags."""
    with open("/proc/cpuinfo") as f:
        flags = next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    if {"avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512cd"} <= flags:
        return 4
    return 3 if {"avx2", "fma"} <= flags else 2 if "avx" in flags else 1


def openblas_default_core():
    """The core OpenBLAS picks with OPENBLAS_CORETYPE unset, asked in a fresh process."""
    code = ("import ctypes; b = ctypes.CDLL('libopenblas.so.0'); b.openblas_get_corename.restype = ctypes.c_char_p;"
            "print(b.openblas_get_corename().decode())")
    env = {k: v for k, v in ENV.items() if k != "OPENBLAS_CORETYPE"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def blas(*args, coretype=None, fault=None):
    """attnreg blas ARGS (not an MPI command: no mpirun) with OPENBLAS_CORETYPE=coretype (None: unset)."""
    env = {k: v for k, v in ENV.items() if k not in ("OPENBLAS_CORETYPE", "ATTNREG_FAULT")}
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    if fault:
        env["ATTNREG_FAULT"] = fault
    return subprocess.run([ATTNREG, "blas"] + list(args), env=env, capture_output=True, text=True, timeout=120)


def errors(p):
    return [line for line in p.stderr.splitlines() if line.startswith("attnreg: error:")]


LEVEL = cpu_level()


def default_is_older():
    """OpenBLAS's own core has older kernels than the CPU's AVX2 or AVX-512: attnreg re-executes."""
    return CORE_LEVEL.get(openblas_default_core().lower(), 9) < LEVEL and LEVEL >= 3


def expected_core():
    """The core an MPI command runs with OPENBLAS_CORETYPE unset: the fitting one after a re-exec."""
    return FIT[LEVEL] if default_is_older() else openblas_default_core()


class SelfCheck(unittest.TestCase):
    def test_passes_on_every_core_this_cpu_runs(self):
        cores = [None, "Prescott"] + [c for c, lv in (("Sandybridge", 2), ("Haswell", 3), ("SkylakeX", 4)) if lv <= LEVEL]
        for core in cores:
            with self.subTest(core=core):
                p = blas("--check", coretype=core)
                self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                self.assertIn("blas check passed: OpenBLAS core %s" % (core or openblas_default_core()), p.stdout)

    def test_a_wrong_result_fails(self):
        for site, what in (("blas-check", "DGEMM"), ("blas-check-cholesky", "Cholesky")):
            with self.subTest(site=site):
                p = blas("--check", fault=site + ":1")
                self.assertEqual(p.returncode, 5, p.stderr)
                self.assertEqual(len(errors(p)), 1, p.stderr)
                self.assertIn("BLAS self-check failed", p.stderr)
                self.assertIn(what, p.stderr)

    def test_a_core_the_library_does_not_run_fails(self):
        p = blas("--check", coretype="NoSuchCore")
        self.assertNotEqual(p.returncode, 0, p.stdout)
        if p.returncode > 0:  # (the library's fallback core may also die of SIGILL)
            self.assertIn("OPENBLAS_CORETYPE=NoSuchCore, but OpenBLAS runs its", p.stderr)

    def test_usage_errors(self):
        for args in (["--size", "8"], ["--all-cores"], ["--bogus"]):
            p = blas(*args)
            self.assertEqual(p.returncode, 2, (args, p.stderr))
            self.assertEqual(len(errors(p)), 1, p.stderr)


class Suggest(unittest.TestCase):
    @unittest.skipIf(LEVEL < 3, "no AVX2 on this CPU: no core to suggest")
    def test_generic_core_gets_the_fitting_one(self):
        p = blas("--suggest", coretype="Prescott")
        self.assertEqual((p.returncode, p.stdout), (0, FIT[LEVEL] + "\n"), p.stderr)
        self.assertIn("passed the self-check", p.stderr)

    def test_fitting_core_gets_nothing(self):
        core = FIT.get(LEVEL, "Prescott")
        p = blas("--suggest", coretype=core)
        self.assertEqual((p.returncode, p.stdout, p.stderr), (0, "", ""))

    @unittest.skipIf(LEVEL < 3, "no AVX2 on this CPU: no core to suggest")
    def test_nothing_when_the_check_of_the_candidate_fails(self):
        p = blas("--suggest", coretype="Prescott", fault="blas-check:1")
        self.assertEqual((p.returncode, p.stdout), (0, ""), p.stderr)
        self.assertIn("OPENBLAS_CORETYPE=%s failed the self-check" % FIT[LEVEL], p.stderr)
        self.assertIn("keeping Prescott", p.stderr)

    def test_dgemm_rates(self):
        p = blas("--dgemm", "--size", "256")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertRegex(p.stdout, r"^dgemm n=256 core=\w+ threads=1 gflops=[0-9.]+\n$")
        p = blas("--dgemm", "--all-cores", "--size", "256", coretype="Prescott")
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = p.stdout.splitlines()
        self.assertRegex(lines[-1], r"^best core=\w+ gflops=[0-9.]+$")
        measured = {line.split("core=")[1].split()[0] for line in lines[:-1] if " core=" in line}
        self.assertIn(openblas_default_core(), measured)  # the child with OPENBLAS_CORETYPE unset
        if LEVEL >= 3:
            self.assertIn(FIT[LEVEL], measured)


class ShownByTheCommands(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = os.path.join(TMP, "data")
        run(1, "generate", "--n", 64, "--d", 3, "--seed", 3, "--out", cls.data, "--quiet")

    def solve(self, coretype, ranks=2):
        out = os.path.join(TMP, "solve-%s-%d" % (coretype, ranks))
        env = dict(ENV, OPENBLAS_CORETYPE=coretype)
        cmd = ["mpirun", "--oversubscribe", "-n", str(ranks), ATTNREG, "solve", "--data", self.data, "--x0",
               self.data + "/X0.npy", "--max-iter", "2", "--out", out]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        self.assertEqual(p.returncode, 0, p.stderr)
        return p, summary(out + "/summary.json")

    def test_generic_core_warns_once_and_is_recorded(self):
        p, s = self.solve("Prescott")
        self.assertIn("  blas = OpenBLAS core Prescott, 1 thread\n", p.stdout)
        self.assertEqual((s["blas"]["core"], s["blas"]["threads"], s["blas"]["coretype_env"]), ("Prescott", 1, "Prescott"))
        warnings = [line for line in p.stderr.splitlines() if line.startswith("attnreg: warning:")]
        if LEVEL >= 3:
            self.assertEqual(len(warnings), 1, p.stderr)  # rank 0 only
            self.assertIn("OPENBLAS_CORETYPE=%s" % FIT[LEVEL], warnings[0])
            self.assertEqual(s["blas"]["fit"], FIT[LEVEL])
        else:
            self.assertEqual(warnings, [])

    def test_fitting_core_is_quiet(self):
        core = FIT.get(LEVEL, "Prescott")
        p, s = self.solve(core)
        self.assertNotIn("warning", p.stderr)
        self.assertEqual((s["blas"]["core"], s["blas"]["fit"]), (core, None))

    def test_eval_and_plan(self):
        out = os.path.join(TMP, "eval")
        p = run(1, "eval", "--data", self.data, "--x", self.data + "/X0.npy", "--y", self.data + "/Y_true.npy",
                "--out", out)
        core = expected_core() if not os.environ.get("OPENBLAS_CORETYPE") else None
        with open(out + "/eval.json") as f:
            e = json.load(f)
        self.assertEqual(e["blas"]["threads"], 1)
        if core:
            self.assertEqual(e["blas"]["core"], core)
        self.assertIn("attnreg eval: blas = OpenBLAS core %s, 1 thread" % e["blas"]["core"], p.stdout)
        p = run(1, "plan", "--n", 1000, "--d", 8, "--ranks", 2)
        self.assertRegex(p.stdout, r"this process: blas = OpenBLAS core \w+, 1 thread")


class MpiLaunch(unittest.TestCase):
    """On one node attnreg sets OMPI_MCA_pml=ob1 before MPI_Init unless the user chose (src/sys/launch.h;
    tests/test_launch.c tests the decision on tables of variables): the header and summary.json say
    which, under mpirun and as a singleton, and the user's choice or ATTNREG_NO_MPI_TUNE=1 wins."""

    @classmethod
    def setUpClass(cls):
        cls.data = os.path.join(TMP, "launch-data")
        run(1, "generate", "--n", 48, "--d", 3, "--seed", 4, "--out", cls.data, "--quiet")

    def solve(self, ranks, name, **env):
        out = os.path.join(TMP, "launch-" + name)
        p = run(ranks, "solve", "--data", self.data, "--max-iter", 2, "--out", out, env=env)
        return p, summary(out + "/summary.json")["mpi"]

    def test_one_node(self):
        p, m = self.solve(2, "mpirun")
        self.assertEqual(m["pml"], "ob1")
        self.assertTrue(m["launch"].startswith("pml ob1, one node (mpirun)"), m)
        self.assertIn("  mpi = pml ob1, one node (mpirun) (ATTNREG_NO_MPI_TUNE=1 keeps", p.stdout)
        p, m = self.solve(0, "singleton")
        self.assertEqual(m["pml"], "ob1")
        self.assertIn("singleton", m["launch"])

    def test_the_users_choice_wins(self):
        for name, env, why in (("off", {"ATTNREG_NO_MPI_TUNE": "1"}, "ATTNREG_NO_MPI_TUNE is set"),
                               ("user-pml", {"OMPI_MCA_pml": "ob1"}, "OMPI_MCA_pml or OMPI_MCA_mtl is set")):
            with self.subTest(name=name):
                p, m = self.solve(2, name, **env)
                self.assertIsNone(m["pml"])
                self.assertEqual(m["launch"], "Open MPI's own choice (%s)" % why)
                self.assertIn("  mpi = Open MPI's own choice (%s)" % why, p.stdout)


def bare_env(**extra):
    """ENV without OPENBLAS_CORETYPE and the re-exec variables (a launch no script prepared), plus extra."""
    drop = ("OPENBLAS_CORETYPE", "ATTNREG_FAULT", "ATTNREG_REEXEC", "ATTNREG_NO_REEXEC", "ATTNREG_REEXEC_TEST_CORE")
    env = {k: v for k, v in ENV.items() if k not in drop}
    env.update(extra)
    return env


class ReExec(unittest.TestCase):
    """MPI commands re-execute themselves with the fitting core when OPENBLAS_CORETYPE is unset.
    The test hook ATTNREG_REEXEC_TEST_CORE forces the decision on a CPU whose core already fits: the
    target is a core this CPU runs that OpenBLAS does not choose by itself, so the core the
    command reports (OpenBLAS's own openblas_get_corename) is the target only if it re-executed."""

    @classmethod
    def setUpClass(cls):
        cls.data = os.path.join(TMP, "rx-data")
        run(1, "generate", "--n", 48, "--d", 3, "--seed", 5, "--out", cls.data, "--quiet")
        cls.default = openblas_default_core()
        need = {"Haswell": 3, "Sandybridge": 2, "Prescott": 1}
        cls.target = next(c for c, lv in need.items() if lv <= LEVEL and c.lower() != cls.default.lower())
        cls.n = 0

    def eval(self, ranks=0, **env):
        """attnreg eval (ranks 0: a singleton, without mpirun); (process, its eval.json's blas object)."""
        ReExec.n += 1
        out = os.path.join(TMP, "rx-eval-%d" % ReExec.n)
        launch = ["mpirun", "--oversubscribe", "-n", str(ranks)] if ranks else []
        cmd = launch + [ATTNREG, "eval", "--data", self.data, "--x", self.data + "/X0.npy", "--y",
                        self.data + "/Y_true.npy", "--out", out]
        p = subprocess.run(cmd, env=bare_env(**env), capture_output=True, text=True, timeout=300)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        with open(out + "/eval.json") as f:
            return p, json.load(f)["blas"]

    def lines(self, p, kind):
        return [line for line in p.stderr.splitlines() if line.startswith("attnreg: %s:" % kind)]

    def assert_reexecuted(self, p, b):
        self.assertEqual((b["core"], b["coretype_env"], b["reexec"]), (self.target, self.target, "from " + self.default))
        self.assertIn("blas = OpenBLAS core %s, 1 thread (re-executed from %s)\n" % (self.target, self.default), p.stdout)
        self.assertEqual(len(self.lines(p, "note")), 1, p.stderr)  # rank 0 only
        self.assertEqual(self.lines(p, "warning"), [], p.stderr)

    def assert_kept(self, p, b, fit, warning):
        self.assertEqual((b["core"], b["coretype_env"], b["reexec"], b["fit"]), (self.default, None, None, fit))
        self.assertNotIn("re-executed from", p.stdout)
        self.assertEqual(self.lines(p, "note"), [], p.stderr)
        w = self.lines(p, "warning")
        self.assertEqual(len(w), 1, p.stderr)
        self.assertIn(warning, w[0])

    def test_forced_singleton(self):
        self.assert_reexecuted(*self.eval(ATTNREG_REEXEC_TEST_CORE=self.target))

    def test_forced_under_mpirun(self):
        self.assert_reexecuted(*self.eval(2, ATTNREG_REEXEC_TEST_CORE=self.target))

    def test_every_rank_reexecutes(self):
        """The rank processes' own environment (/proc/PID/environ is the one execv passed), read
        while a 2-rank solve runs; then each rank gets SIGTERM."""
        cmd = ["mpirun", "--oversubscribe", "-n", "2", ATTNREG, "solve", "--data", self.data, "--x0",
               self.data + "/X0.npy", "--gttol", "0", "--steptol", "0", "--max-iter", "100000",
               "--out", os.path.join(TMP, "rx-solve")]
        p = subprocess.Popen(cmd, env=bare_env(ATTNREG_REEXEC_TEST_CORE=self.target), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        seen = []
        for line in p.stdout:
            parts = line.split()
            if parts and parts[0].isdigit() and int(parts[0]) >= 1:
                for pid in rank_pids(p.pid):
                    with open("/proc/%d/environ" % pid, "rb") as f:
                        env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
                    seen.append((env.get(b"OPENBLAS_CORETYPE"), env.get(b"ATTNREG_REEXEC")))
                    os.kill(pid, signal.SIGTERM)
                break
        p.communicate(timeout=600)
        want = (self.target.encode(), b"from-" + self.default.encode())
        self.assertEqual(seen, [want, want])

    def test_not_when_turned_off(self):
        p, b = self.eval(ATTNREG_REEXEC_TEST_CORE=self.target, ATTNREG_NO_REEXEC="1")
        self.assert_kept(p, b, self.target, "set OPENBLAS_CORETYPE=%s" % self.target)

    def test_not_again_when_the_marker_is_set(self):
        p, b = self.eval(ATTNREG_REEXEC_TEST_CORE=self.target, ATTNREG_REEXEC="from-Elsewhere")
        self.assert_kept(p, b, self.target, "set OPENBLAS_CORETYPE=%s" % self.target)

    def test_not_when_openblas_coretype_is_set(self):
        p, b = self.eval(ATTNREG_REEXEC_TEST_CORE=self.target, OPENBLAS_CORETYPE=self.default)
        self.assertEqual((b["core"], b["coretype_env"], b["reexec"]), (self.default, self.default, None))

    def test_failed_check_keeps_the_core_and_warns(self):
        t = self.target
        wrong = "OPENBLAS_CORETYPE=%s failed the self-check (BLAS self-check failed on OpenBLAS core %s" % (t, t)
        for env, why in (({"ATTNREG_REEXEC_TEST_CORE": "NoSuchCore"},  # (its fallback core may die of SIGILL)
                          "OPENBLAS_CORETYPE=NoSuchCore failed the self-check ("),
                         ({"ATTNREG_REEXEC_TEST_CORE": t, "ATTNREG_FAULT": "blas-check:1"}, wrong)):
            with self.subTest(env=env):
                p, b = self.eval(**env)
                self.assert_kept(p, b, env["ATTNREG_REEXEC_TEST_CORE"], "not re-executed, as " + why)

    def test_unforced(self):
        """Without the hook: a re-exec exactly when OpenBLAS's own core is older than the CPU."""
        p, b = self.eval()
        self.assertEqual(b["core"], expected_core())
        self.assertEqual(b["reexec"], "from " + openblas_default_core() if default_is_older() else None)
        self.assertEqual(self.lines(p, "warning"), [], p.stderr)


class EnvSh(unittest.TestCase):
    """scripts/env.sh: chooses the fitting core when unset and the default is older, never overrides."""

    def source(self, coretype=None, fault=None):
        env = {k: v for k, v in ENV.items() if k not in ("OPENBLAS_CORETYPE", "ATTNREG_FAULT")}
        env["ATTNREG"] = ATTNREG
        if coretype:
            env["OPENBLAS_CORETYPE"] = coretype
        if fault:
            env["ATTNREG_FAULT"] = fault
        p = subprocess.run(["bash", "-c", 'set -euo pipefail; . scripts/env.sh; echo "core=${OPENBLAS_CORETYPE:-}"'],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        return p.stdout.strip().split("core=")[1], p.stderr

    def test_unset(self):
        default = openblas_default_core()
        older = CORE_LEVEL.get(default.lower(), 9) < LEVEL and LEVEL >= 3
        core, err = self.source()
        self.assertEqual(core, FIT[LEVEL] if older else "", err)

    def test_never_overrides(self):
        core, err = self.source("Prescott")
        self.assertEqual((core, err), ("Prescott", ""))

    def test_check_failure_keeps_the_default(self):
        default = openblas_default_core()
        if not (CORE_LEVEL.get(default.lower(), 9) < LEVEL and LEVEL >= 3):
            self.skipTest("OpenBLAS's own choice (%s) fits this CPU: env.sh checks no other core" % default)
        core, err = self.source(fault="blas-check:1")
        self.assertEqual(core, "")
        self.assertIn("failed the self-check", err)


if __name__ == "__main__":
    unittest.main()

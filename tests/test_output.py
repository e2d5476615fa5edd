"""Atomic outputs (src/io/output.c): "a failed or interrupted run leaves an existing OUT exactly as it
was", checked with an OUT that already holds an earlier result and a user's own files, for every
way a run can end after set-up: a non-finite start, a signal with and without --checkpoint, and
faults injected into the commit itself (ATTNREG_FAULT, src/sys/fault.h): a failed rename, a failed
file creation, a rank killed on entry, rank 0 killed just before and just after the swap.  Also the
fallback commit (file by file, with roll-back) and what a successful commit keeps."""
import os
import shutil
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from arutil import run, state, summary  # noqa: E402

TMP = tempfile.mkdtemp(prefix="attnreg-out-")
TINY = os.path.join(os.path.dirname(__file__), "data", "reference", "tiny")
RESULTS = {"X.npy", "Y.npy", "history.csv", "summary.json"}
# the tiny problem never converges with these tolerances: only a signal or --max-iter ends it
ENDLESS = ["--gttol", "0", "--steptol", "0", "--floor-iters", "0"]


def fill_old(out):
    """OUT as an earlier run and its user left it: results, notes, a subdirectory, a symlink."""
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(out, "sub"))
    for name in RESULTS:
        with open(os.path.join(out, name), "w") as f:
            f.write("earlier %s\n" % name)
    for name in ("notes.txt", ".hidden", "sub/keep.txt"):
        with open(os.path.join(out, name), "w") as f:
            f.write("the user's %s\n" % name)
    os.symlink("notes.txt", os.path.join(out, "link"))
    os.chmod(os.path.join(out, "notes.txt"), 0o640)
    os.chmod(out, 0o751)
    return state(out)


def without_dir_times(st):
    return {k: v[:3] + (None if v[4] == "dir" else v[3], v[4]) for k, v in st.items()}


def solve(np_, out, *extra, fault=None, cwd=None):
    return run(np_, "solve", "--data", TINY, "--x0", TINY + "/X.npy", "--out", out, "--quiet", *extra,
               check=False, fault=fault, cwd=cwd, timeout=180)


class Failures(unittest.TestCase):
    """Each failure: the documented exit status, OUT exactly as before (entries, contents, modes,
    inodes, times), and, unless a process was killed, no staging directory left next to it."""

    def setUp(self):
        self.parent = tempfile.mkdtemp(dir=TMP)
        self.out = os.path.join(self.parent, "out")
        self.before = fill_old(self.out)

    def expect_unchanged(self, p, code, msg=None, litter_ok=False, dir_times=True):
        self.assertEqual(p.returncode, code, p.stderr[-800:])
        if msg:
            self.assertIn(msg, p.stderr)
        if dir_times:
            self.assertEqual(state(self.out), self.before)
        else:
            self.assertEqual(state(self.out, dir_times=False), without_dir_times(self.before))
        if not litter_ok:
            self.assertEqual(os.listdir(self.parent), ["out"])

    def test_nan_start(self):
        np.save(os.path.join(TMP, "Xhuge.npy"), np.full((2, 2), 1e307))
        p = solve(2, self.out, "--x0", os.path.join(TMP, "Xhuge.npy"))
        self.expect_unchanged(p, 6, "not finite")

    def test_signal_without_checkpoint(self):
        p = solve(2, self.out, *ENDLESS, fault="signal:2")
        self.expect_unchanged(p, 75, "no --checkpoint given, progress not saved")

    def test_signal_with_checkpoint(self):
        ck = os.path.join(TMP, "ck-%s.bin" % os.path.basename(self.parent))
        p = solve(3, self.out, *ENDLESS, "--checkpoint", ck, fault="signal:3:2")  # rank 2 only
        self.expect_unchanged(p, 75, "checkpoint written to")
        self.assertTrue(os.path.exists(ck))

    def test_failed_swap(self):
        p = solve(2, self.out, fault="out-rename:1")
        self.expect_unchanged(p, 4, "Input/output error")

    def test_failed_create(self):
        p = solve(2, self.out, fault="out-open:1")  # summary.json, after X.npy and Y.npy were written
        self.expect_unchanged(p, 4, "Input/output error")

    def test_rank_killed_entering_commit(self):
        p = solve(3, self.out, fault="out-kill:1:1")  # rank 1 dies; rank 0 waits for it, then is killed
        self.assertNotEqual(p.returncode, 0)
        self.expect_unchanged(p, p.returncode, litter_ok=True)

    def test_rank0_killed_before_swap(self):
        p = solve(2, self.out, fault="out-kill:2:0")
        self.assertNotEqual(p.returncode, 0)
        self.expect_unchanged(p, p.returncode, litter_ok=True)

    def test_fallback_rolls_back(self):
        """The file-by-file commit (filesystems without RENAME_EXCHANGE): 4 files moved aside, then
        4 renamed into place; a failure at any of them puts every earlier file back."""
        for k in (1, 2, 5, 8):
            with self.subTest(failing_rename=k):
                self.before = fill_old(self.out)
                p = solve(2, self.out, fault="out-noexchange:1,out-rename:%d" % k)
                # the fallback works inside OUT: its entries come back, its own time does not
                self.expect_unchanged(p, 4, "Input/output error", dir_times=False)

    def test_eval_and_generate(self):
        p = run(2, "eval", "--data", TINY, "--x", TINY + "/X.npy", "--y", TINY + "/Y.npy", "--hessian", "exact",
                "--out", self.out, "--quiet", check=False, fault="out-rename:1")
        self.expect_unchanged(p, 4, "Input/output error")
        p = run(2, "generate", "--n", 10, "--d", 2, "--out", self.out, "--quiet", check=False,
                fault="out-kill:2:0")
        self.expect_unchanged(p, p.returncode, litter_ok=True)
        self.assertNotEqual(p.returncode, 0)

    def test_new_nested_out(self):
        """A failed run into an OUT that did not exist leaves nothing, not even the parents it made."""
        out = os.path.join(self.parent, "a", "b", "out")
        p = solve(2, out, fault="out-rename:1")
        self.assertEqual(p.returncode, 4, p.stderr)
        self.assertEqual(os.listdir(self.parent), ["out"])


class Success(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fresh = os.path.join(TMP, "fresh", "new", "out")  # parents created as needed
        p = solve(2, cls.fresh)
        assert p.returncode == 0, p.stderr
        cls.X = np.load(cls.fresh + "/X.npy")

    def check_replaced(self, out, before):
        """The results are this run's, every other entry of OUT is as it was, OUT keeps its mode."""
        after = state(out)
        self.assertEqual(set(after), set(before))
        self.assertEqual(np.abs(np.load(out + "/X.npy") - self.X).max(), 0.0)
        self.assertEqual(summary(out + "/summary.json")["n"], 5)
        for k, v in before.items():
            if k == ".":
                self.assertEqual(after[k][0], v[0])  # mode
            elif k not in RESULTS:
                self.assertEqual((after[k][0], after[k][2], after[k][3], after[k][4]), (v[0], v[2], v[3], v[4]), k)
                if v[4] != "dir" and not k.endswith("link"):
                    self.assertEqual(after[k][1], v[1], k)  # the user's files themselves (same inode)
        self.assertEqual(sorted(f for f in os.listdir(os.path.dirname(out)) if f.startswith(".")), [])

    def test_fresh(self):
        self.assertEqual(set(os.listdir(self.fresh)), RESULTS)

    def test_swap_keeps_other_files(self):
        out = os.path.join(TMP, "swap", "out")
        before = fill_old(out)
        p = solve(2, out)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.check_replaced(out, before)
        self.assertNotEqual(os.stat(out).st_ino, before["."][1])  # a new directory took OUT's place

    def test_killed_after_swap(self):
        """Rank 0 killed right after the swap: OUT is the complete new result (the old tree is left
        next to it under a hidden name, for nobody else to remove)."""
        out = os.path.join(TMP, "killed-after", "out")
        before = fill_old(out)
        p = solve(2, out, fault="out-kill:3:0")
        self.assertNotEqual(p.returncode, 0, p.stderr)
        after = state(out)
        self.assertEqual(set(after), set(before))
        self.assertEqual(np.abs(np.load(out + "/X.npy") - self.X).max(), 0.0)

    def test_fallback(self):
        out = os.path.join(TMP, "fallback", "out")
        before = fill_old(out)
        p = solve(2, out, fault="out-noexchange:1")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.check_replaced(out, before)
        self.assertEqual(os.stat(out).st_ino, before["."][1])  # written into OUT itself

    def test_staged_inside(self):
        """OUT is a mount point or its parent is not writable: staged inside OUT, committed in place."""
        out = os.path.join(TMP, "inside", "out")
        before = fill_old(out)
        p = solve(2, out, fault="out-inside:1")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.check_replaced(out, before)
        self.assertEqual(os.stat(out).st_ino, before["."][1])
        before = state(out)
        p = solve(2, out, fault="out-inside:1,out-rename:6")
        self.assertEqual(p.returncode, 4, p.stderr)
        self.assertEqual(state(out, dir_times=False), without_dir_times(before))

    def test_out_is_working_directory(self):
        """Run from inside OUT: OUT is kept (exchanging it would leave the shell in a deleted
        directory), so the file-by-file commit is used."""
        out = os.path.join(TMP, "cwd", "out")
        before = fill_old(out)
        p = solve(2, ".", cwd=out)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.check_replaced(out, before)
        self.assertEqual(os.stat(out).st_ino, before["."][1])

    def test_symlinked_out(self):
        real = os.path.join(TMP, "symlinked", "real")
        before = fill_old(real)
        link = os.path.join(TMP, "symlinked", "link")
        os.symlink("real", link)
        p = solve(2, link)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(os.path.islink(link))
        self.check_replaced(real, before)


if __name__ == "__main__":
    unittest.main(verbosity=2)

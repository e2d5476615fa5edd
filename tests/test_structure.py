"""The source files' dependencies have no circle: from the object files of attnreg_core and of the
attnreg program (nm: which file defines a symbol another one uses), the graph of src/*.c must have
no cycle (none allowed: the ring trip is trip.c's, which eval.c and hessvec.c both use, and eval.c
releases the Hessian-vector arrays through the pointer hessvec.c leaves it).  Usage:
test_structure.py BUILD_DIR"""
import glob
import os
import subprocess
import sys
import unittest

BUILD = sys.argv.pop(1) if len(sys.argv) > 1 else "build"


def graph():
    objs = glob.glob(os.path.join(BUILD, "CMakeFiles", "attnreg*.dir", "src", "**", "*.c.o"), recursive=True)
    defs, uses = {}, {}
    for o in objs:
        name = os.path.basename(o)[:-2]
        for line in subprocess.run(["nm", o], capture_output=True, text=True, check=True).stdout.splitlines():
            p = line.split()
            if len(p) == 3 and p[1] in "TDBR":
                defs[p[2]] = name
            elif len(p) == 2 and p[0] == "U":
                uses.setdefault(name, set()).add(p[1])
    g = {f: {defs[u] for u in us if u in defs and defs[u] != f} for f, us in uses.items()}
    return objs, g


def cycles(g):
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v), on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            c = set()
            while True:
                w = stack.pop()
                on.discard(w)
                c.add(w)
                if w == v:
                    break
            if len(c) > 1:
                out.append(c)

    for v in list(g):
        if v not in index:
            visit(v)
    return out


class Structure(unittest.TestCase):
    def test_no_dependency_circle(self):
        objs, g = graph()
        self.assertGreater(len(objs), 30, "object files not found below %s" % BUILD)
        self.assertIn("cmd_solve.c", g.get("main.c", set()))  # the graph is read (a known edge)
        bad = [sorted(c) for c in cycles(g)]
        self.assertEqual(bad, [], "files that depend on each other: %s" % bad)


if __name__ == "__main__":
    unittest.main(verbosity=2)

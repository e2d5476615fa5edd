"""The source files' dependencies have no circle, and the folders are layers: from the object files of attnreg_core and of the
attnreg program (nm: which file defines a symbol another one uses), the graph of src/*.c must have
no cycle (none allowed: the ring trip is trip.c's, which eval.c and hessvec.c both use, and eval.c
releases the Hessian-vector arrays through the pointer hessvec.c leaves it).  A file of src/F/ uses
files of its own folder and of the folders before F in LAYERS only, and the README's layout
section names every folder and every file of src/.  Usage:
test_structure.py BUILD_DIR"""
import glob
import os
import subprocess
import sys
import unittest

BUILD = sys.argv.pop(1) if len(sys.argv) > 1 else "build"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ["sys", "io", "problem", "eval", "dmat", "solver", "app"]


def folder(obj):
    return os.path.basename(os.path.dirname(obj))


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

    def test_folders_are_layers(self):
        objs, g = graph()
        where = {os.path.basename(o)[:-2]: folder(o) for o in objs}
        self.assertEqual(sorted(set(where.values())), sorted(LAYERS))
        up = sorted("%s/%s -> %s/%s" % (where[f], f, where[t], t) for f, ts in g.items() for t in ts
                    if LAYERS.index(where[t]) > LAYERS.index(where[f]))
        self.assertEqual(up, [], "files that use a later layer (%s)" % " < ".join(LAYERS))

    def test_readme_layout_names_every_file(self):
        with open(os.path.join(ROOT, "README.md")) as f:
            text = f.read()
        section = text[text.index("## Layout"):]
        section = section[:section.index("\n## ") if "\n## " in section else len(section)]
        src = os.path.join(ROOT, "src")
        self.assertEqual(sorted(d for d in os.listdir(src)), sorted(LAYERS))
        for d in LAYERS:
            self.assertIn("  %s/ " % d, section, "README layout: no src/%s/" % d)
            for f in os.listdir(os.path.join(src, d)):
                stem = f[:-2]
                named = f in section or (f.startswith("cmd_") and "cmd_*.c" in section) or \
                    (f.endswith(".h") and (stem + ".c" in section or stem + ".h" in section))
                self.assertTrue(named, "README layout does not name src/%s/%s" % (d, f))


if __name__ == "__main__":
    unittest.main(verbosity=2)

"""Table of scripts/bench-roofline: one line per run (label|d|eval.json|bench_softmax result|bench_gemm
result) in the file argv[1]; per phase, the time against the bound of the counted work."""
import json, sys
def kv(line): return {k: v for k, v in (w.split("=", 1) for w in line.split()[1:])}
runs = []
for line in open(sys.argv[1]):
    label, d, path, sm, gm = line.rstrip("\n").split("|")
    e, s, g = json.load(open(path)), kv(sm), kv(gm)
    R, n, chunk = e["ranks"], e["n"], e["chunk"]
    ring = R > 1 or n > chunk
    rate = float(s["ring"] if ring else s["rows_lse"])
    dg = float(g["mix"])
    exps, flops = e["exponentials"] / R, e["flops"] / R
    te, tf = exps / rate, flops / dg
    runs.append((label, int(d), e, rate, dg, te, tf, s))
    ph = e["phases"]
    print(f"== {label}: n={n} d={d} m={e['m']} ranks={R} tile={e['tile']} chunk={chunk} isa={s['isa']}")
    print(f"   exp rate   {rate/1e6:8.1f} Melem/s/core ({'online+exp_shifted, ring' if ring else 'rows_lse'}; "
          f"rows_lse {float(s['rows_lse'])/1e6:.1f}, online {float(s['online'])/1e6:.1f}, "
          f"exp_shifted {float(s['exp_shifted'])/1e6:.1f}, libm {float(s['libm'])/1e6:.1f})")
    print(f"   DGEMM rate {dg/1e9:8.2f} GFLOP/s/core (evaluator shapes; 2048^3: {float(g['peak'])/1e9:.2f})")
    print(f"   per rank   {exps:.4g} exponentials -> {te:.3f} s,  {flops:.4g} flops -> {tf:.3f} s,  bound {te+tf:.3f} s")
    print(f"   {'phase':14s} {'time':>9s} {'bound':>9s} {'time/bound':>10s}")
    for p in ("loss_gradient", "hessian", "reduction", "ring", "total"):
        t = ph[p]["max"]
        if p in ("loss_gradient", "total"):
            print(f"   {p:14s} {t:9.3f} {te+tf:9.3f} {t/(te+tf):10.2f}")
        else:
            print(f"   {p:14s} {t:9.3f} {'-':>9s} {'-':>10s}")
labels = sorted({r[0] for r in runs}, key=lambda l: l != "this tree")
if len(labels) > 1:
    print("== before/after, same run (best of the reps)")
    print(f"   {'d':>3s} {'ring exp rate':>22s} {'speed-up':>8s} {'eval total s':>20s} {'speed-up':>8s}")
    for d in sorted({r[1] for r in runs}):
        best = {}
        for l in labels:
            rs = [r for r in runs if r[0] == l and r[1] == d]
            best[l] = (max(r[3] for r in rs), min(r[2]["phases"]["total"]["max"] for r in rs))
        a, b = best[labels[0]], best[labels[1]]
        print(f"   {d:3d} {b[0]/1e6:9.1f} -> {a[0]/1e6:9.1f} M/s {a[0]/b[0]:7.2f}x {b[1]:8.3f} -> {a[1]:8.3f} s {b[1]/a[1]:7.2f}x")

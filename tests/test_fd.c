/* Finite-difference and independent-reference checks of ar_eval_compute on random in-memory problems:
 *   - loss == a plain-C stable forward pass (all n rows on every rank) to 1e-12 relative;
 *   - gradient == central differences of the loss (1e-6, max-norm relative);
 *   - exact Hessian == central differences of the gradient (1e-6), exactly symmetric;
 *   - Gauss-Newton Hessian == 2 J^T J, J the finite-difference Jacobian of the plain-C residual (1e-6);
 *   - ridge terms add lambda_x||X||^2 + lambda_y||Y||^2, 2 lambda z and 2 lambda I (1e-12);
 *   - large logits (|S| ~ 1e3, and ~50 where the X gradient is not ~0) stay finite and correct;
 * for row tiles 1, 2, auto, every process-grid factorisation and block sizes 1, 2, 5.
 * Rank 0 prints each loss with %.17g so runs at different rank counts can be compared by eye. */
#include <float.h>
#include <string.h>

#include "attnreg.h"
#include "testutil.h"

/* 1: the Hessian must be bitwise symmetric; 0: only to 4 ulps of max |H| (always checked). */
#ifndef TF_EXACT_SYMMETRY
#define TF_EXACT_SYMMETRY 1
#endif

static int rank, size;
/* largest errors seen (this rank), reported at the end */
static double e_loss, e_grad, e_hess, e_gn, e_ridge, e_sym;

#define UPD(e, v) ((e) = ((v) > (e) || (v) != (v)) ? (v) : (e))

typedef struct {
  const char *name;
  int64_t n;
  int d, m;
  double *A1, *A2, *A3, *B; /* full arrays, identical on every rank */
} full_t;

/* |a - b| <= tol |b|; false for NaN */
static int close_rel(double a, double b, double tol) { return fabs(a - b) <= tol * fabs(b); }

static int all_finite(const double *a, long n)
{
  for (long i = 0; i < n; i++)
    if (!isfinite(a[i])) return 0;
  return 1;
}

/* Plain-C reference: residual C = softmax(A1 X A2^T) A3 Y - B (n x m, may be NULL) and the loss.
 * *smax (may be NULL) receives max |S|. */
static double ref_forward(const full_t *p, const double *X, const double *Y, double *C, double *smax)
{
  const int64_t n = p->n;
  const int d = p->d, m = p->m;
  double *t = malloc(sizeof(double) * d), *s = malloc(sizeof(double) * n), *pr = malloc(sizeof(double) * d);
  double loss = 0, sm = 0;
  for (int64_t j = 0; j < n; j++) {
    for (int q = 0; q < d; q++) {
      t[q] = 0;
      for (int k = 0; k < d; k++) t[q] += p->A1[j * d + k] * X[k * d + q];
    }
    double mx = -INFINITY;
    for (int64_t l = 0; l < n; l++) {
      s[l] = 0;
      for (int q = 0; q < d; q++) s[l] += t[q] * p->A2[l * d + q];
      if (s[l] > mx) mx = s[l];
      if (fabs(s[l]) > sm) sm = fabs(s[l]);
    }
    double z = 0;
    for (int64_t l = 0; l < n; l++) z += (s[l] = exp(s[l] - mx));
    for (int64_t l = 0; l < n; l++) s[l] /= z;
    for (int k = 0; k < d; k++) {
      pr[k] = 0;
      for (int64_t l = 0; l < n; l++) pr[k] += s[l] * p->A3[l * d + k];
    }
    for (int i = 0; i < m; i++) {
      double c = -p->B[j * m + i];
      for (int k = 0; k < d; k++) c += pr[k] * Y[k * m + i];
      if (C) C[j * m + i] = c;
      loss += c * c;
    }
  }
  free(t), free(s), free(pr);
  if (smax) *smax = sm;
  return loss;
}

/* Library evaluation at z = [vec X; vec Y]; Hfull (D x D) gathered if hk != NONE. */
static double lib_eval(ar_eval ev, const double *z, int d, ar_hessian_kind hk, ar_dmat H, double *grad,
                       double *Hfull)
{
  ar_eval_out out = {.grad = grad, .hess = hk == AR_HESS_NONE ? NULL : H};
  TU_OK(ar_eval_compute(ev, z, z + d * d, hk, &out));
  if (hk != AR_HESS_NONE) TU_OK(ar_dmat_gather(H, Hfull));
  return out.loss;
}

/* The global outputs must be bitwise identical on every rank. */
static void check_replicated(const char *what, const double *a, int n)
{
  double *mn = malloc(sizeof(double) * n), *mx = malloc(sizeof(double) * n);
  MPI_Allreduce(a, mn, n, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(a, mx, n, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  int bad = 0;
  for (int i = 0; i < n; i++) bad += !(mn[i] == mx[i] && mn[i] == a[i]);
  TU_CHECK(bad == 0, "%s: %d entries differ between ranks", what, bad);
  free(mn), free(mx);
}

static double sym_err(const double *H, int D)
{
  double e = 0;
  for (int i = 0; i < D; i++)
    for (int j = 0; j < i; j++) {
      double v = fabs(H[i * D + j] - H[j * D + i]);
      if (v != v) return INFINITY;
      if (v > e) e = v;
    }
  return e;
}

/* One problem. ascale: std of A entries; xscale: std of X entries; hx_abs > 0: absolute FD step for
 * the X entries (large logits), else 1e-5 * max(1, |z_k|).  saturated: softmax is ~one-hot, so
 * grad_X ~ 0 and is compared in absolute terms scaled by max |grad| (the whole-vector max-norm). */
static void run_problem(const char *name, int64_t n, int d, int m, uint64_t seed, double ascale, double xscale,
                        double hx_abs, int saturated, double smin)
{
  full_t p = {name, n, d, m, NULL, NULL, NULL, NULL};
  const int D = d * d + d * m, NM = (int)n * m;
  p.A1 = malloc(sizeof(double) * n * d), p.A2 = malloc(sizeof(double) * n * d);
  p.A3 = malloc(sizeof(double) * n * d), p.B = malloc(sizeof(double) * n * m);
  for (int64_t i = 0; i < n * d; i++) {
    p.A1[i] = ascale * ar_normal(seed, 1, i);
    p.A2[i] = ascale * ar_normal(seed, 2, i);
    p.A3[i] = ascale * ar_normal(seed, 3, i);
  }
  for (int64_t i = 0; i < n * m; i++) p.B[i] = ar_normal(seed, 4, i);
  double *z = malloc(sizeof(double) * D), *zp = malloc(sizeof(double) * D), *h = malloc(sizeof(double) * D);
  for (int i = 0; i < d * d; i++) z[i] = xscale * ar_normal(seed, 5, i);
  for (int i = 0; i < d * m; i++) z[d * d + i] = ar_normal(seed, 6, i);
  for (int k = 0; k < D; k++) h[k] = (k < d * d && hx_abs > 0) ? hx_abs : 1e-5 * fmax(1.0, fabs(z[k]));

  int64_t r0, r1;
  ar_partition(n, size, rank, &r0, &r1);
  ar_problem prob;
  TU_OK(ar_problem_create(MPI_COMM_WORLD, n, d, m, NULL, p.A1 + r0 * d, p.A2 + r0 * d, p.A3 + r0 * d, p.B + r0 * m, &prob));
  {
    int64_t nn;
    int dd, mm;
    ar_problem_sizes(prob, &nn, &dd, &mm);
    TU_CHECK(nn == n && dd == d && mm == m, "%s: sizes %lld %d %d", name, (long long)nn, dd, mm);
    double bn = 0;
    for (int64_t i = 0; i < n * m; i++) bn += p.B[i] * p.B[i];
    TU_CHECK(close_rel(ar_problem_bnorm2(prob), bn, 1e-12), "%s: ||B||^2 %.17g vs %.17g", name,
             ar_problem_bnorm2(prob), bn);
  }

  /* independent reference loss */
  double smax;
  const double Lref = ref_forward(&p, z, z + d * d, NULL, &smax);
  TU_CHECK(isfinite(Lref) && smax >= smin, "%s: reference loss %g, max |logit| %g (want >= %g)", name, Lref, smax,
           smin);

  /* finite differences with one fixed evaluator: tile 2, default grid, nb 2 */
  ar_eval_options eo;
  ar_eval_options_default(&eo);
  eo.tile = 2;
  ar_eval ev0;
  ar_grid g0;
  ar_dmat H0;
  TU_OK(ar_eval_create(prob, &eo, &ev0));
  TU_OK(ar_grid_create(MPI_COMM_WORLD, 0, 0, &g0));
  TU_OK(ar_dmat_create(g0, D, 2, &H0));
  double *gfd = calloc(D, sizeof(double)), *Hfd = calloc((size_t)D * D, sizeof(double));
  double *gp = calloc(D, sizeof(double)), *gm = calloc(D, sizeof(double));
  double *J = calloc((size_t)NM * D, sizeof(double)), *Cp = calloc(NM, sizeof(double)),
         *Cm = calloc(NM, sizeof(double)), *GNfd = calloc((size_t)D * D, sizeof(double));
  for (int k = 0; k < D; k++) {
    memcpy(zp, z, sizeof(double) * D);
    zp[k] = z[k] + h[k];
    const double hk = zp[k] - z[k]; /* the step actually taken (exactly representable) */
    double lp = lib_eval(ev0, zp, d, AR_HESS_NONE, NULL, gp, NULL);
    ref_forward(&p, zp, zp + d * d, Cp, NULL);
    zp[k] = z[k] - hk;
    double lm = lib_eval(ev0, zp, d, AR_HESS_NONE, NULL, gm, NULL);
    ref_forward(&p, zp, zp + d * d, Cm, NULL);
    const double h2 = zp[k] == z[k] - hk ? 2 * hk : NAN;
    gfd[k] = (lp - lm) / h2;
    for (int i = 0; i < D; i++) Hfd[i * D + k] = (gp[i] - gm[i]) / h2;
    for (int r = 0; r < NM; r++) J[(size_t)r * D + k] = (Cp[r] - Cm[r]) / h2;
  }
  for (int a = 0; a < D; a++)
    for (int b = 0; b < D; b++) {
      double s = 0;
      for (int r = 0; r < NM; r++) s += J[(size_t)r * D + a] * J[(size_t)r * D + b];
      GNfd[a * D + b] = 2 * s;
    }
  double gmax = 0, gxmax = 0;
  for (int k = 0; k < D; k++) {
    gmax = fmax(gmax, fabs(gfd[k]));
    if (k < d * d) gxmax = fmax(gxmax, fabs(gfd[k]));
  }
  if (!saturated)
    TU_CHECK(gxmax > 1e-3 * gmax, "%s: grad_X is negligible (%.3g vs max %.3g): X check would be vacuous", name,
             gxmax, gmax);

  /* every configuration */
  const int64_t tiles[3] = {1, 2, 0}, chunks[3] = {1, 3, 0}; /* 0: automatic (one rank: one fused chunk) */
  const int nbs[3] = {1, 2, 5};
  double *g = calloc(D, sizeof(double)), *H = calloc((size_t)D * D, sizeof(double));
  int nconf = 0, nasym = 0; /* configurations whose Hessian is not bitwise symmetric */
  char asym_first[128] = "";
  for (int it = 0; it < 3; it++) {
    ar_eval_options o;
    ar_eval_options_default(&o);
    o.tile = tiles[it], o.chunk = chunks[it];
    ar_eval ev;
    TU_OK(ar_eval_create(prob, &o, &ev));
    int64_t tl = ar_eval_tile(ev);
    TU_CHECK(tl >= 1 && (tiles[it] == 0 || tl <= tiles[it]), "%s: tile %lld in use for requested %lld", name,
             (long long)tl, (long long)tiles[it]);
    /* loss + gradient only */
    double L = lib_eval(ev, z, d, AR_HESS_NONE, NULL, g, NULL);
    double e = fabs(L - Lref) / fabs(Lref);
    UPD(e_loss, e);
    TU_CHECK(e <= 1e-12, "%s tile %lld: loss %.17g vs plain-C %.17g (rel %.3g)", name, (long long)tiles[it], L, Lref,
             e);
    e = tu_relerr(g, gfd, D);
    UPD(e_grad, e);
    TU_CHECK(e <= 1e-6, "%s tile %lld: gradient vs finite differences: rel %.3g", name, (long long)tiles[it], e);
    if (!saturated) {
      e = tu_relerr(g, gfd, d * d);
      UPD(e_grad, e);
      TU_CHECK(e <= 1e-6, "%s tile %lld: grad_X vs finite differences: rel %.3g", name, (long long)tiles[it], e);
    }
    check_replicated(name, g, D);
    check_replicated(name, &L, 1);
    for (int ig = 0; ig <= size; ig++) {
      int pr = 0, pc = 0; /* ig == 0: default grid */
      if (ig > 0) {
        if (size % ig) continue;
        pr = ig, pc = size / ig;
      }
      ar_grid grid;
      TU_OK(ar_grid_create(MPI_COMM_WORLD, pr, pc, &grid));
      int gpr, gpc;
      ar_grid_shape(grid, &gpr, &gpc);
      TU_CHECK(gpr * gpc == size && (ig == 0 || (gpr == pr && gpc == pc)), "%s: grid %dx%d for %dx%d", name, gpr, gpc,
               pr, pc);
      for (int ib = 0; ib < 3; ib++) {
        ar_dmat Hd;
        TU_OK(ar_dmat_create(grid, D, nbs[ib], &Hd));
        for (int kind = 0; kind < 2; kind++) {
          ar_hessian_kind hk = kind ? AR_HESS_GAUSS_NEWTON : AR_HESS_EXACT;
          const char *kn = kind ? "GN" : "exact";
          for (int i = 0; i < D * D; i++) H[i] = NAN;
          L = lib_eval(ev, z, d, hk, Hd, g, H);
          nconf++;
          e = fabs(L - Lref) / fabs(Lref);
          UPD(e_loss, e);
          TU_CHECK(e <= 1e-12, "%s tile %lld grid %dx%d nb %d %s: loss %.17g vs plain-C %.17g", name,
                   (long long)tiles[it], gpr, gpc, nbs[ib], kn, L, Lref);
          e = tu_relerr(g, gfd, D);
          UPD(e_grad, e);
          TU_CHECK(e <= 1e-6, "%s tile %lld grid %dx%d nb %d %s: gradient rel err %.3g", name, (long long)tiles[it],
                   gpr, gpc, nbs[ib], kn, e);
          TU_CHECK(all_finite(H, (long)D * D), "%s tile %lld grid %dx%d nb %d %s: Hessian not finite", name,
                   (long long)tiles[it], gpr, gpc, nbs[ib], kn);
          e = tu_relerr(H, kind ? GNfd : Hfd, (long)D * D);
          if (kind) UPD(e_gn, e);
          else UPD(e_hess, e);
          TU_CHECK(e <= 1e-6, "%s tile %lld grid %dx%d nb %d %s Hessian vs finite differences: rel %.3g", name,
                   (long long)tiles[it], gpr, gpc, nbs[ib], kn, e);
          e = sym_err(H, D);
          UPD(e_sym, e);
          double hmax = 0;
          for (int i = 0; i < D * D; i++) hmax = fmax(hmax, fabs(H[i]));
          TU_CHECK(e <= 4 * DBL_EPSILON * hmax, "%s tile %lld grid %dx%d nb %d %s Hessian asymmetric: max |H-H^T| %.3g",
                   name, (long long)tiles[it], gpr, gpc, nbs[ib], kn, e);
          if (e != 0) {
            if (!nasym) snprintf(asym_first, sizeof asym_first, "tile %lld grid %dx%d nb %d %s", (long long)tiles[it],
                                 gpr, gpc, nbs[ib], kn);
            nasym++;
          }
          check_replicated(name, H, D * D);
        }
        ar_dmat_destroy(&Hd);
      }
      ar_grid_destroy(&grid);
    }
    ar_eval_destroy(&ev);
  }

  /* Exact symmetry (one check per problem; the gathered H is the same on every rank). */
  if (TF_EXACT_SYMMETRY && rank == 0)
    TU_CHECK(nasym == 0, "%s: %d of %d Hessians not bitwise symmetric (largest |H-H^T| in this run so far %.3g), first: %s", name,
             nasym, nconf, e_sym, asym_first);

  /* ridge: same configuration with and without lambda */
  {
    const double lx = 0.3, ly = 0.7;
    ar_eval_options o;
    ar_eval_options_default(&o);
    o.tile = 2;
    o.lambda_x = lx, o.lambda_y = ly;
    ar_eval evr;
    TU_OK(ar_eval_create(prob, &o, &evr));
    double xx = 0, yy = 0;
    for (int i = 0; i < d * d; i++) xx += z[i] * z[i];
    for (int i = d * d; i < D; i++) yy += z[i] * z[i];
    double *g1 = calloc(D, sizeof(double)), *H1 = calloc((size_t)D * D, sizeof(double));
    for (int kind = 0; kind < 2; kind++) {
      ar_hessian_kind hk = kind ? AR_HESS_GAUSS_NEWTON : AR_HESS_EXACT;
      double L0 = lib_eval(ev0, z, d, hk, H0, g, H);
      double L1 = lib_eval(evr, z, d, hk, H0, g1, H1);
      double want = L0 + lx * xx + ly * yy;
      double e = fabs(L1 - want) / fabs(want);
      UPD(e_ridge, e);
      TU_CHECK(e <= 1e-12, "%s ridge: loss %.17g vs %.17g", name, L1, want);
      for (int k = 0; k < D; k++) g[k] += 2 * (k < d * d ? lx : ly) * z[k];
      e = tu_relerr(g1, g, D);
      UPD(e_ridge, e);
      TU_CHECK(e <= 1e-12, "%s ridge: gradient rel err %.3g", name, e);
      for (int k = 0; k < D; k++) H[k * D + k] += 2 * (k < d * d ? lx : ly);
      e = tu_relerr(H1, H, (long)D * D);
      UPD(e_ridge, e);
      TU_CHECK(e <= 1e-12, "%s ridge: %s Hessian rel err %.3g", name, kind ? "GN" : "exact", e);
    }
    free(g1), free(H1);
    ar_eval_destroy(&evr);
  }

  if (rank == 0)
    printf("%-9s n=%-3lld d=%d m=%d  max|S|=%-8.3g max|gX|/max|g|=%-8.2g loss=%.17g  (%d configs)\n", name,
           (long long)n, d, m, smax, gxmax / gmax, Lref, nconf);
  fflush(stdout);

  free(g), free(H), free(gfd), free(Hfd), free(gp), free(gm), free(J), free(Cp), free(Cm), free(GNfd);
  free(z), free(zp), free(h);
  ar_dmat_destroy(&H0);
  ar_grid_destroy(&g0);
  ar_eval_destroy(&ev0);
  ar_problem_destroy(&prob);
  free(p.A1), free(p.A2), free(p.A3), free(p.B);
}

int main(int argc, char **argv)
{
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  double t0 = MPI_Wtime();
  /* name, n, d, m, seed, A std, X std, X FD step (0: relative), saturated, minimum max|logit| */
  run_problem("13x3x5", 13, 3, 5, 11, 1 / sqrt(3.0), 0.5, 0, 0, 0);
  run_problem("10x4x1", 10, 4, 1, 12, 1 / sqrt(4.0), 0.5, 0, 0, 0);
  run_problem("3x2x3", 3, 2, 3, 13, 1 / sqrt(2.0), 0.5, 0, 0, 0);
  run_problem("9x3x3", 9, 3, 3, 14, 1 / sqrt(3.0), 0.5, 0, 0, 0);
  /* moderately large logits (~50): softmax peaked but grad_X clearly non-zero */
  run_problem("logit50", 8, 3, 3, 15, 1.0, 5.0, 1e-5, 0, 30);
  /* logits ~1e3: exp would overflow without the max shift; softmax saturated */
  run_problem("logit1e3", 8, 3, 3, 16, 1.0, 300.0, 1e-5, 1, 710);

  double e[6] = {e_loss, e_grad, e_hess, e_gn, e_ridge, e_sym}, emax[6];
  MPI_Allreduce(e, emax, 6, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0)
    printf("max errors: loss %.3g  grad %.3g  exact Hessian %.3g  GN Hessian %.3g  ridge %.3g  asymmetry %.3g"
           "  (%d ranks, %.2f s)\n",
           emax[0], emax[1], emax[2], emax[3], emax[4], emax[5], size, MPI_Wtime() - t0);
  int rc = tu_finish("test_fd");
  MPI_Finalize();
  return rc;
}

/* Masked evaluation (segments of unequal lengths, some of length 1; causal or not) against
 * PyTorch autograd (tests/data/mask, made by scripts/make-mask-reference.py): the loss, the
 * gradient, the exact and Gauss-Newton Hessians to 1e-11; Hessian-vector products against the
 * autograd Hessian; the preconditioner's pieces and the least-squares Y against the oracle's.
 * On this rank count, with the automatic layout (groups of ranks by segment, zigzag pieces of
 * causal segments) and the contiguous one (segments straddle ranks), for tiles and key chunks
 * of sizes that put segment boundaries inside tiles and chunks.  Also: the work the dry run
 * counts is no more than the unmasked pairs allow, and a causal case computes about half.
 * Usage: test_mask MASKDIR */
#include <string.h>

#include "attnreg.h"
#include "npy.h"
#include "testutil.h"

static double *load(const char *dir, const char *name, int64_t rows, int64_t cols)
{
  char path[1200];
  snprintf(path, sizeof path, "%s/%s.npy", dir, name);
  ar_npy_header h;
  double *a;
  TU_OK(ar_npy_read(path, &h, &a));
  TU_CHECK(h.rows == rows && h.cols == cols, "%s: %lldx%lld, expected %lldx%lld", path, (long long)h.rows,
           (long long)h.cols, (long long)rows, (long long)cols);
  return a;
}

static double meta_number(const char *dir, const char *key)
{
  char path[1200], text[8192] = {0}, pat[64];
  snprintf(path, sizeof path, "%s/meta.json", dir);
  FILE *f = fopen(path, "r");
  size_t got = f ? fread(text, 1, sizeof text - 1, f) : 0;
  if (f) fclose(f);
  (void)got;
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(text, pat);
  if (!p) return NAN;
  p += strlen(pat);
  while (*p == ' ') p++;
  if (!strncmp(p, "true", 4)) return 1;
  if (!strncmp(p, "false", 5)) return 0;
  return strtod(p, NULL);
}

static void matvec(const double *H, const double *v, double *out, int D)
{
  for (int i = 0; i < D; i++) {
    double s = 0;
    for (int j = 0; j < D; j++) s += H[(size_t)i * D + j] * v[j];
    out[i] = s;
  }
}

static void run_case(const char *root, const char *name, int contiguous)
{
  char dir[1024], path[1200], store[4 * 4096];
  snprintf(dir, sizeof dir, "%s/%s", root, name);
  ar_data_paths ps = {0};
  TU_OK(ar_data_paths_from_dir(dir, &ps, store));
  snprintf(path, sizeof path, "%s/segments.npy", dir);
  const int64_t n = (int64_t)meta_number(dir, "n");
  const int d = (int)meta_number(dir, "d"), m = (int)meta_number(dir, "m"), causal = (int)meta_number(dir, "causal");
  int64_t *off, K;
  TU_OK(ar_mask_read_segments(MPI_COMM_WORLD, path, n, &off, &K));
  const ar_mask mask = {K, off, causal, contiguous};
  ar_problem prob;
  TU_OK(ar_problem_load(MPI_COMM_WORLD, &ps, &mask, &prob));
  const int dd = d * d, D = dd + d * m;
  double *X = load(dir, "X", d, d), *Y = load(dir, "Y", d, m), *gx = load(dir, "grad_X", d, d);
  double *gy = load(dir, "grad_Y", d, m), *Hx = load(dir, "hessian", D, D), *Hg = load(dir, "hessian_gn", D, D);
  double *G1r = load(dir, "G1", d, d), *Nr = load(dir, "Nbar", d, d), *Pr = load(dir, "PtP", d, d);
  double *lsY = load(dir, "ls_Y", d, m);
  const double loss_ref = meta_number(dir, "loss"), pairs_ref = meta_number(dir, "unmasked_pairs");
  ar_grid g;
  TU_OK(ar_grid_create(MPI_COMM_WORLD, 0, 0, &g));
  ar_dmat Hd;
  TU_OK(ar_dmat_create(g, D, 0, &Hd));
  double *H = malloc(sizeof(double) * D * D), *grad = malloc(sizeof(double) * D), *v = malloc(sizeof(double) * D);
  double *hv = malloc(sizeof(double) * D), *ref = malloc(sizeof(double) * D), *Yls = malloc(sizeof(double) * d * m);
  double G1[64], Nbar[64], PtP[64];
  const int64_t tiles[4] = {2, 3, 5, 0}, chunks[4] = {3, 4, 2, 0};
  for (int cfg = 0; cfg < 4; cfg++) {
    ar_eval_options eo;
    ar_eval_options_default(&eo);
    eo.tile = tiles[cfg], eo.chunk = chunks[cfg];
    ar_eval ev;
    TU_OK(ar_eval_create(prob, &eo, &ev));
    char what[160];
    snprintf(what, sizeof what, "%s (%s layout, tile %lld, chunk %lld)", name, contiguous ? "contiguous" : "auto",
             (long long)tiles[cfg], (long long)chunks[cfg]);
    for (int kind = 0; kind < 2; kind++) {
      const ar_hessian_kind hk = kind ? AR_HESS_GAUSS_NEWTON : AR_HESS_EXACT;
      const double *Href = kind ? Hg : Hx;
      ar_eval_out out = {.grad = grad, .hess = Hd};
      TU_OK(ar_eval_compute(ev, X, Y, hk, &out));
      TU_OK(ar_dmat_gather(Hd, H));
      TU_CHECK(fabs(out.loss - loss_ref) <= 1e-11 * fabs(loss_ref), "%s: loss %.17g vs autograd %.17g", what,
               out.loss, loss_ref);
      const double eX = tu_relerr(grad, gx, dd), eY = tu_relerr(grad + dd, gy, d * m), eH = tu_relerr(H, Href, D * D);
      TU_CHECK(eX <= 1e-11 && eY <= 1e-11, "%s: gradient relative errors %.3g (X), %.3g (Y)", what, eX, eY);
      TU_CHECK(eH <= 1e-11, "%s: %s Hessian relative error %.3g", what, kind ? "Gauss-Newton" : "exact", eH);
      for (int t = 0; t < 3; t++) { /* products against the autograd Hessian */
        for (int i = 0; i < D; i++) v[i] = sin(1.3 * i + 0.7 * t + kind);
        double fl = 0;
        TU_OK(ar_eval_hessvec(ev, X, Y, hk, v, hv, &fl));
        matvec(Href, v, ref, D);
        const double e = tu_relerr(hv, ref, D);
        TU_CHECK(e <= 1e-11, "%s: %s Hessian-vector product %d relative error %.3g", what,
                 kind ? "Gauss-Newton" : "exact", t, e);
      }
    }
    double fl = 0;
    TU_OK(ar_eval_precond(ev, X, Y, G1, Nbar, PtP, &fl));
    const double e1 = tu_relerr(G1, G1r, dd), e2 = tu_relerr(Nbar, Nr, dd), e3 = tu_relerr(PtP, Pr, dd);
    TU_CHECK(e1 <= 1e-11 && e2 <= 1e-11 && e3 <= 1e-11, "%s: preconditioner G1 %.3g, Nbar %.3g, PtP %.3g", what, e1,
             e2, e3);
    TU_OK(ar_solve_least_squares_y(ev, X, Yls));
    const double ey = tu_relerr(Yls, lsY, d * m);
    TU_CHECK(ey <= 1e-10, "%s: least-squares Y relative error %.3g", what, ey);
    /* the work a trip does: at least the unmasked pairs, and boxes at most twice them (+ small boxes) */
    ar_eval_work w;
    ar_eval_work_info(ev, &w);
    double area = w.area, pairs = w.pairs;
    MPI_Allreduce(MPI_IN_PLACE, &area, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &pairs, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    TU_CHECK(pairs == pairs_ref && w.pairs_total == pairs_ref, "%s: %g unmasked pairs counted (%g), autograd's mask %g",
             what, pairs, w.pairs_total, pairs_ref);
    TU_CHECK(area >= pairs && area <= 2 * pairs + 8.0 * n * (tiles[cfg] ? tiles[cfg] : 8),
             "%s: the boxes cover %g entries for %g unmasked pairs", what, area, pairs);
    ar_eval_destroy(&ev);
  }
  free(off), free(X), free(Y), free(gx), free(gy), free(Hx), free(Hg), free(G1r), free(Nr), free(Pr), free(lsY);
  free(H), free(grad), free(v), free(hv), free(ref), free(Yls);
  ar_dmat_destroy(&Hd);
  ar_grid_destroy(&g);
  ar_problem_destroy(&prob);
}

int main(int argc, char **argv)
{
  MPI_Init(&argc, &argv);
  if (argc < 2) {
    fprintf(stderr, "usage: test_mask MASKDIR\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  const char *cases[] = {"seg", "seg_causal", "causal", "mixed"};
  for (int c = 0; c < 4; c++)
    for (int contiguous = 0; contiguous < 2; contiguous++) run_case(argv[1], cases[c], contiguous);
  int rc = tu_finish("test_mask");
  MPI_Finalize();
  return rc;
}

/* Hessian-vector products without the Hessian (ar_eval_hessvec), exact and Gauss-Newton,
 * against the assembled Hessian (ar_eval_compute + ar_dmat_gather) on the four autograd
 * reference cases, with ridge terms, on this rank count, for tiles and key chunks of several
 * sizes (one fused chunk, and several); against central finite differences of the gradient;
 * and at a point other than the last one evaluated (the per-row state must be refreshed).
 * The preconditioner's P^T P against the Hessian's Y block.  Usage: test_hessvec REFDIR */
#include <string.h>

#include "attnreg.h"
#include "npy.h"
#include "testutil.h"

static void matvec(const double *H, const double *v, double *out, int D)
{
  for (int i = 0; i < D; i++) {
    double s = 0;
    for (int j = 0; j < D; j++) s += H[(size_t)i * D + j] * v[j];
    out[i] = s;
  }
}

static void run_case(const char *refdir, const char *name)
{
  char dir[1024], path[1200], store[4 * 4096];
  snprintf(dir, sizeof dir, "%s/%s", refdir, name);
  ar_data_paths ps = {0};
  TU_OK(ar_data_paths_from_dir(dir, &ps, store));
  ar_problem prob;
  TU_OK(ar_problem_load(MPI_COMM_WORLD, &ps, NULL, &prob));
  int64_t n;
  int d, m;
  ar_problem_sizes(prob, &n, &d, &m);
  const int dd = d * d, D = dd + d * m;
  ar_npy_header h;
  double *X, *Y;
  snprintf(path, sizeof path, "%s/X.npy", dir);
  TU_OK(ar_npy_read(path, &h, &X));
  snprintf(path, sizeof path, "%s/Y.npy", dir);
  TU_OK(ar_npy_read(path, &h, &Y));
  ar_grid g;
  TU_OK(ar_grid_create(MPI_COMM_WORLD, 0, 0, &g));
  ar_dmat Hd;
  TU_OK(ar_dmat_create(g, D, 0, &Hd));
  double *H = malloc(sizeof(double) * D * D), *v = malloc(sizeof(double) * D), *hv = malloc(sizeof(double) * D);
  double *ref = malloc(sizeof(double) * D), *grad = malloc(sizeof(double) * D), *gp = malloc(sizeof(double) * D);
  double *gm = malloc(sizeof(double) * D), *z = malloc(sizeof(double) * D), *Xo = malloc(sizeof(double) * dd);
  const int64_t tiles[3] = {0, 2, 3}, chunks[3] = {0, 3, 1};
  for (int cfg = 0; cfg < 3; cfg++)
    for (int kind = 0; kind < 2; kind++) {
      const ar_hessian_kind hk = kind ? AR_HESS_GAUSS_NEWTON : AR_HESS_EXACT;
      ar_eval_options eo;
      ar_eval_options_default(&eo);
      eo.tile = tiles[cfg], eo.chunk = chunks[cfg], eo.lambda_x = 0.3 * cfg, eo.lambda_y = 0.1 * cfg;
      ar_eval ev;
      TU_OK(ar_eval_create(prob, &eo, &ev));
      ar_eval_out out = {.grad = grad, .hess = Hd};
      TU_OK(ar_eval_compute(ev, X, Y, hk, &out));
      TU_OK(ar_dmat_gather(Hd, H));
      double worst = 0, fl = 0;
      for (int t = 0; t < 4; t++) {
        for (int i = 0; i < D; i++) v[i] = ar_normal(91, 10 * cfg + t, i);
        if (t == 3) memset(v, 0, sizeof(double) * dd); /* a pure Y direction */
        TU_OK(ar_eval_hessvec(ev, X, Y, hk, v, hv, &fl));
        matvec(H, v, ref, D);
        worst = fmax(worst, tu_relerr(hv, ref, D));
      }
      TU_CHECK(worst <= 1e-11, "%s %s tile %lld chunk %lld: H v vs the assembled Hessian: relative error %.3g", name,
               kind ? "gauss-newton" : "exact", (long long)tiles[cfg], (long long)chunks[cfg], worst);
      TU_CHECK(fl > 0, "%s: no flops counted", name);
      /* the state of another point in between: the product must refresh it */
      memcpy(Xo, X, sizeof(double) * dd);
      for (int i = 0; i < dd; i++) Xo[i] += 0.5;
      ar_eval_out o2 = {.grad = gp};
      TU_OK(ar_eval_compute(ev, Xo, Y, AR_HESS_NONE, &o2));
      TU_OK(ar_eval_hessvec(ev, X, Y, hk, v, hv, &fl));
      TU_CHECK(tu_relerr(hv, ref, D) <= 1e-11, "%s: H v after an evaluation elsewhere: relative error %.3g", name,
               tu_relerr(hv, ref, D));
      /* exact H v against central differences of the gradient */
      if (hk == AR_HESS_EXACT) {
        const double eps = 1e-5;
        for (int s = -1; s <= 1; s += 2) {
          for (int i = 0; i < D; i++) z[i] = (i < dd ? X[i] : Y[i - dd]) + s * eps * v[i];
          ar_eval_out o3 = {.grad = s < 0 ? gm : gp};
          TU_OK(ar_eval_compute(ev, z, z + dd, AR_HESS_NONE, &o3));
        }
        for (int i = 0; i < D; i++) ref[i] = (gp[i] - gm[i]) / (2 * eps);
        const double e = tu_relerr(hv, ref, D);
        TU_CHECK(e <= 1e-6, "%s: exact H v vs finite differences of the gradient: relative error %.3g", name, e);
      }
      /* preconditioner pieces: P^T P is the Y block / 2 of the Gauss-Newton Hessian (minus ridge) */
      if (cfg == 0) {
        double *G1 = malloc(sizeof(double) * dd), *Nb = malloc(sizeof(double) * dd), *PtP = malloc(sizeof(double) * dd);
        TU_OK(ar_eval_precond(ev, X, Y, G1, Nb, PtP, &fl));
        double e = 0, sc = 0;
        for (int k = 0; k < d; k++)
          for (int kk = 0; kk < d; kk++) {
            const double hy = H[(size_t)(dd + k * m) * D + dd + kk * m]; /* (k, 0), (kk, 0) */
            e = fmax(e, fabs(2 * PtP[k * d + kk] - hy));
            sc = fmax(sc, fabs(hy));
          }
        TU_CHECK(e <= 1e-11 * sc, "%s: 2 P^T P vs the Hessian's Y block: %.3g", name, e / sc);
        if (hk == AR_HESS_GAUSS_NEWTON) { /* trace identity: tr H_xx = tr(sum_j a1 a1^T (x) N_j) */
          double trH = 0, trK = 0, trG = 0;
          for (int i = 0; i < dd; i++) trH += H[(size_t)i * D + i];
          for (int k = 0; k < d; k++) trG += G1[k * d + k];
          for (int k = 0; k < d; k++) trK += Nb[k * d + k];
          /* with the Kronecker model G1 (x) Nbar the traces multiply; the model is exact when all N_j are
           * equal, so only its sign and order of magnitude are checked here */
          TU_CHECK(trK > 0 && trG > 0 && trH > 0, "%s: preconditioner traces %.3g %.3g %.3g", name, trK, trG, trH);
        }
        free(G1), free(Nb), free(PtP);
      }
      ar_eval_destroy(&ev);
    }
  free(H), free(v), free(hv), free(ref), free(grad), free(gp), free(gm), free(z), free(Xo), free(X), free(Y);
  ar_dmat_destroy(&Hd);
  ar_grid_destroy(&g);
  ar_problem_destroy(&prob);
}

int main(int argc, char **argv)
{
  MPI_Init(&argc, &argv);
  if (argc < 2) {
    fprintf(stderr, "usage: test_hessvec REFDIR\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  static const char *cases[] = {"tiny", "rect", "selfattn", "peaked"};
  for (int c = 0; c < 4; c++) run_case(argv[1], cases[c]);
  int rc = tu_finish("test_hessvec");
  MPI_Finalize();
  return rc;
}

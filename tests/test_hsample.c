/* The sub-sampled Hessian (ar_eval_set_hessian_rows, ar_eval_set_hessian_sample) on the four
 * autograd reference cases, on this rank count, exact and Gauss-Newton, with tiles of 2 rows so
 * that whole tiles fall out of a sample (their narrow, gradient-only products):
 *   - the Hessian is linear in the rows' weights: H(w = 1 on A) + H(w = 1 on B) = H for a
 *     split of the rows into A and B, on the X-X and X-Y blocks; the Y-Y block (2 P^T P) and
 *     the loss and gradient stay exact under any weights;
 *   - the work partitions too: flops(A) + flops(B) = flops(all rows) + flops(gradient only), so
 *     the wide products and Hessian parts are done only on a sample's rows, also in a tile
 *     where some rows are in it and some are not (fused on one rank, over the ring on more);
 *   - a sample of fraction 1 is the full Hessian, bit for bit; fraction 0.5 samples some rows.
 * Usage: test_hsample REFDIR */
#include <string.h>

#include "attnreg.h"
#include "npy.h"
#include "problem_impl.h"
#include "testutil.h"

static void run_case(const char *refdir, const char *name)
{
  char dir[1024], path[1200], store[4 * 4096];
  snprintf(dir, sizeof dir, "%s/%s", refdir, name);
  ar_data_paths ps = {0};
  TU_OK(ar_data_paths_from_dir(dir, &ps, store));
  ar_problem prob;
  TU_OK(ar_problem_load(MPI_COMM_WORLD, &ps, NULL, &prob));
  int64_t n, nloc = prob->nloc;
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
  double *H = malloc(sizeof(double) * D * D), *HA = malloc(sizeof(double) * D * D), *HB = malloc(sizeof(double) * D * D);
  double *g0 = malloc(sizeof(double) * D), *g1 = malloc(sizeof(double) * D);
  double *wa = malloc(sizeof(double) * (nloc + 1)), *wb = malloc(sizeof(double) * (nloc + 1));
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  double nab[2] = {0, 0};
  for (int64_t j = 0; j < nloc; j++) { /* A: whole tiles of 2 and one row of a mixed tile */
    wa[j] = (j / 2 + rank) % 3 == 0 || j == 3 ? 1.0 : 0.0;
    wb[j] = 1.0 - wa[j];
    nab[0] += wa[j], nab[1] += wb[j];
  }
  MPI_Allreduce(MPI_IN_PLACE, nab, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  for (int kind = 0; kind < 2; kind++) {
    const ar_hessian_kind hk = kind ? AR_HESS_GAUSS_NEWTON : AR_HESS_EXACT;
    const char *kn = kind ? "gauss-newton" : "exact";
    ar_eval_options eo;
    ar_eval_options_default(&eo);
    eo.tile = 2, eo.chunk = 3;
    ar_eval ev;
    TU_OK(ar_eval_create(prob, &eo, &ev));
    ar_eval_out out = {.grad = g0, .hess = Hd};
    TU_OK(ar_eval_compute(ev, X, Y, hk, &out));
    const double L0 = out.loss;
    TU_OK(ar_dmat_gather(Hd, H));
    TU_OK(ar_eval_set_hessian_rows(ev, wa));
    ar_eval_out oa = {.grad = g1, .hess = Hd};
    TU_OK(ar_eval_compute(ev, X, Y, hk, &oa));
    TU_OK(ar_dmat_gather(Hd, HA));
    TU_CHECK(oa.loss == L0 && !memcmp(g0, g1, sizeof(double) * D), "%s %s: loss or gradient changed by the weights",
             name, kn);
    TU_OK(ar_eval_set_hessian_rows(ev, wb));
    ar_eval_out ob = {.grad = g1, .hess = Hd};
    TU_OK(ar_eval_compute(ev, X, Y, hk, &ob));
    TU_OK(ar_dmat_gather(Hd, HB));
    double e = 0, ey = 0, sc = 0, sa = 0;
    for (int i = 0; i < D; i++)
      for (int k = 0; k < D; k++) {
        const size_t ik = (size_t)i * D + k;
        sc = fmax(sc, fabs(H[ik]));
        if (i >= dd && k >= dd) ey = fmax(ey, fmax(fabs(HA[ik] - H[ik]), fabs(HB[ik] - H[ik])));
        else e = fmax(e, fabs(HA[ik] + HB[ik] - H[ik])), sa = fmax(sa, fabs(HA[ik] - H[ik]));
      }
    ar_eval_out on = {.grad = g1};
    TU_OK(ar_eval_compute(ev, X, Y, AR_HESS_NONE, &on));
    double fl[4] = {out.flops, oa.flops, ob.flops, on.flops};
    MPI_Allreduce(MPI_IN_PLACE, fl, 4, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    TU_CHECK(fabs(fl[1] + fl[2] - fl[0] - fl[3]) <= 1e-9 * fl[0],
             "%s %s: flops with weights on A %.6g + on B %.6g != all rows %.6g + gradient only %.6g", name, kn, fl[1],
             fl[2], fl[0], fl[3]);
    TU_CHECK(e <= 1e-12 * sc, "%s %s: H(A) + H(B) vs H on the X blocks: %.3g", name, kn, e / sc);
    TU_CHECK(ey <= 1e-12 * sc, "%s %s: the Y-Y block under weights: %.3g", name, kn, ey / sc);
    TU_CHECK(nab[0] == 0 || nab[1] == 0 || sa > 1e-6 * sc, "%s %s: the weights changed nothing (%.3g)", name, kn, sa / sc);
    /* fraction 1: the full Hessian, bit for bit */
    double frac = 0;
    TU_OK(ar_eval_set_hessian_sample(ev, 1.0, 7, &frac));
    TU_OK(ar_eval_compute(ev, X, Y, hk, &ob));
    TU_OK(ar_dmat_gather(Hd, HB));
    TU_CHECK(frac == 1 && !memcmp(H, HB, sizeof(double) * D * D), "%s %s: fraction 1 is not the full Hessian", name,
             kn);
    TU_OK(ar_eval_set_hessian_sample(ev, 0.5, 7, &frac));
    TU_CHECK(frac > 0 && frac <= 1, "%s: sampled fraction %.3g", name, frac);
    TU_OK(ar_eval_compute(ev, X, Y, hk, &ob));
    ar_eval_destroy(&ev);
  }
  free(H), free(HA), free(HB), free(g0), free(g1), free(wa), free(wb), free(X), free(Y);
  ar_dmat_destroy(&Hd);
  ar_grid_destroy(&g);
  ar_problem_destroy(&prob);
}

int main(int argc, char **argv)
{
  MPI_Init(&argc, &argv);
  if (argc < 2) {
    fprintf(stderr, "usage: test_hsample REFDIR\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  static const char *cases[] = {"tiny", "rect", "selfattn", "peaked"};
  for (int c = 0; c < 4; c++) run_case(argv[1], cases[c]);
  int rc = tu_finish("test_hsample");
  MPI_Finalize();
  return rc;
}

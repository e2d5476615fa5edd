/* The four autograd reference cases (../shared/testdata/reference): loss, gradient and the
 * whole joint Hessian, exact and Gauss-Newton (hessian_gn.npy, made by
 * scripts/make-reference-gn.py), agree to relative 1e-11 on this rank count, for the grids and
 * block sizes given on the command line.  Usage: test_reference REFDIR TMPDIR [PRxPC:NB ...] */
#include <string.h>
#include <unistd.h>

#include "attnreg.h"
#include "npy.h"
#include "testutil.h"

static const char *cases[] = {"tiny", "rect", "selfattn", "peaked"};

static void run_case(const char *refdir, const char *tmpdir, const char *name, int pr, int pc, int nb,
                     ar_hessian_kind hk)
{
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  char dir[1024], path[1200], store[4 * 4096];
  snprintf(dir, sizeof dir, "%s/%s", refdir, name);
  ar_data_paths ps = {0};
  TU_OK(ar_data_paths_from_dir(dir, &ps, store));
  /* The reference cases hold A1, A2, A3 separately even for selfattn: use them as given. */
  ar_problem prob;
  TU_OK(ar_problem_load(MPI_COMM_WORLD, &ps, NULL, &prob));
  int64_t n;
  int d, m;
  ar_problem_sizes(prob, &n, &d, &m);
  const int D = d * d + d * m;
  ar_npy_header h;
  double *X, *Y, *gx, *gy, *Href;
  snprintf(path, sizeof path, "%s/X.npy", dir);
  TU_OK(ar_npy_read(path, &h, &X));
  snprintf(path, sizeof path, "%s/Y.npy", dir);
  TU_OK(ar_npy_read(path, &h, &Y));
  snprintf(path, sizeof path, "%s/grad_X.npy", dir);
  TU_OK(ar_npy_read(path, &h, &gx));
  snprintf(path, sizeof path, "%s/grad_Y.npy", dir);
  TU_OK(ar_npy_read(path, &h, &gy));
  snprintf(path, sizeof path, "%s/%s", dir, hk == AR_HESS_EXACT ? "hessian.npy" : "hessian_gn.npy");
  TU_OK(ar_npy_read(path, &h, &Href));
  TU_CHECK(h.rows == D && h.cols == D, "%s: hessian.npy is %lldx%lld, D=%d", name, (long long)h.rows,
           (long long)h.cols, D);
  /* loss from meta.json */
  snprintf(path, sizeof path, "%s/meta.json", dir);
  FILE *f = fopen(path, "r");
  char meta[4096] = {0};
  size_t got = f ? fread(meta, 1, sizeof meta - 1, f) : 0;
  if (f) fclose(f);
  (void)got;
  char *lp = strstr(meta, "\"loss\":");
  double loss_ref = lp ? strtod(lp + 7, NULL) : NAN;

  ar_grid g;
  ar_dmat H;
  ar_eval ev;
  ar_eval_options eo;
  ar_eval_options_default(&eo);
  eo.tile = 2;   /* several tiles even on small cases */
  eo.chunk = nb; /* and several key chunks per ring block (nb = 0: automatic, one chunk) */
  TU_OK(ar_grid_create(MPI_COMM_WORLD, pr, pc, &g));
  TU_OK(ar_dmat_create(g, D, nb, &H));
  TU_OK(ar_eval_create(prob, &eo, &ev));
  double *grad = calloc(D, sizeof(double));
  ar_eval_out out = {.grad = grad, .hess = H};
  TU_OK(ar_eval_compute(ev, X, Y, hk, &out));
  TU_CHECK(fabs(out.loss - loss_ref) <= 1e-11 * fabs(loss_ref), "%s: loss %.17g vs autograd %.17g", name, out.loss,
           loss_ref);
  double eX = tu_relerr(grad, gx, d * d), eY = tu_relerr(grad + d * d, gy, d * m);
  TU_CHECK(eX <= 1e-11, "%s: grad_X relative error %.3g", name, eX);
  TU_CHECK(eY <= 1e-11, "%s: grad_Y relative error %.3g", name, eY);
  snprintf(path, sizeof path, "%s/H-%s-%dx%d-%d-%d.npy", tmpdir, name, pr, pc, nb, (int)hk);
  TU_OK(ar_dmat_write_npy(H, path));
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) {
    double *Hc;
    TU_OK(ar_npy_read(path, &h, &Hc));
    double eH = tu_relerr(Hc, Href, (long)D * D);
    TU_CHECK(eH <= 1e-11, "%s grid %dx%d nb %d: %s Hessian relative error %.3g", name, pr, pc, nb,
             hk == AR_HESS_EXACT ? "exact" : "Gauss-Newton", eH);
    free(Hc);
    unlink(path);
  }
  free(grad), free(X), free(Y), free(gx), free(gy), free(Href);
  ar_eval_destroy(&ev);
  ar_dmat_destroy(&H);
  ar_grid_destroy(&g);
  ar_problem_destroy(&prob);
}

int main(int argc, char **argv)
{
  MPI_Init(&argc, &argv);
  if (argc < 3) {
    fprintf(stderr, "usage: test_reference REFDIR TMPDIR [PRxPC:NB ...]\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  int size;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const ar_hessian_kind kinds[2] = {AR_HESS_EXACT, AR_HESS_GAUSS_NEWTON};
  for (int c = 0; c < 4; c++)
    for (int k = 0; k < 2; k++) {
      run_case(argv[1], argv[2], cases[c], 0, 0, 0, kinds[k]);
      for (int a = 3; a < argc; a++) {
        int pr, pc, nb;
        char extra;
        /* a grid argument that cannot be used fails the test: skipping it would leave that grid
         * untested without a word */
        const int ok = sscanf(argv[a], "%dx%d:%d%c", &pr, &pc, &nb, &extra) == 3 && pr >= 0 && pc >= 0 && nb >= 0;
        TU_CHECK(ok, "grid argument '%s': not PRxPC:NB", argv[a]);
        if (!ok) continue;
        if (pr == 0 && pc != 0) pr = size; /* "0x1" = P x 1, "1x0" = 1 x P, "0x0" = default grid */
        if (pc == 0 && pr != 0 && pr != size) pc = size;
        TU_CHECK(pr * pc == size || (pr == 0 && pc == 0) || (pr == size && pc == 0),
                 "grid argument '%s': %dx%d does not fit %d ranks", argv[a], pr, pc, size);
        run_case(argv[1], argv[2], cases[c], pr, pc, nb, kinds[k]);
      }
    }
  int rc = tu_finish("test_reference");
  MPI_Finalize();
  return rc;
}

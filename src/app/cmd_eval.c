/* attnreg eval: L, its gradient and optionally the joint Hessian at given X, Y. */
#include <math.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>

#include "blas.h"
#include "cli.h"
#include "commands.h"
#include "error.h"
#include "npy.h"
#include "output.h"
#include "report.h"
#include "timing.h"

int ar_cmd_eval(MPI_Comm comm, int argc, char **argv)
{
  ar_common_cfg c;
  ar_common_cfg_default(&c);
  const char *xpath = NULL, *ypath = NULL, *outdir = NULL;
  int hess = AR_HESS_NONE, done;
  ar_option opts[] = {
      AR_DATA_OPTIONS(c),
      {"x", AR_OPT_STRING, &xpath, "X (d x d), required"},
      {"y", AR_OPT_STRING, &ypath, "Y (d x m), required"},
      {"hessian", AR_OPT_CHOICE, &hess, "also compute and write the joint Hessian", NULL, 0, 0,
       "none|exact|gauss-newton", ar_hessian_name},
      {"out", AR_OPT_STRING, &outdir, "output directory, required"},
  };
  const int nopts = sizeof opts / sizeof opts[0];
  AR_CALL(ar_cli_parse(comm, "usage: attnreg eval --data DIR --x X.npy --y Y.npy [--hessian exact|gauss-newton] --out OUT",
                       opts, nopts, argc, argv, &done));
  if (done) return AR_OK;
  AR_CHECK(xpath && ypath, AR_ERR_USAGE, "--x and --y are required");
  AR_CHECK(outdir, AR_ERR_USAGE, "--out is required");
  AR_CALL(ar_eval_options_check(&c.eval));
  int rank;
  MPI_Comm_rank(comm, &rank);
  if (rank == 0 && !c.quiet) ar_blas_print(stdout, "attnreg eval: ");
  ar_phase_times t;
  memset(&t, 0, sizeof t);
  const double t0 = ar_wtime();
  ar_problem prob = NULL;
  ar_grid grid = NULL;
  ar_dmat H = NULL;
  ar_eval ev = NULL;
  double *X = NULL, *Y = NULL, *g = NULL;
  ar_out out = {0};
  int err = ar_grid_create(comm, c.grid[0], c.grid[1], &grid);
  if (!err) err = ar_cli_load_problem(comm, &c, &prob);
  int64_t n = 0;
  int d = 0, m = 0;
  if (!err) {
    ar_problem_sizes(prob, &n, &d, &m);
    X = calloc(d * d, sizeof(double)), Y = calloc(d * m, sizeof(double)), g = calloc(d * d + d * m, sizeof(double));
    err = ar_error_agree(comm, X && Y && g ? AR_OK : AR_ERROR(AR_ERR_MEM, "out of memory"));
  }
  if (!err) err = ar_cli_load_matrix(comm, "--x", xpath, d, d, X);
  if (!err) err = ar_cli_load_matrix(comm, "--y", ypath, d, m, Y);
  t.t[AR_PHASE_IO] = ar_wtime() - t0;
  if (!err && hess) err = ar_dmat_create(grid, d * d + d * m, c.nb, &H);
  if (!err) err = ar_error_agree(comm, err);
  if (!err) err = ar_eval_create(prob, &c.eval, &ev);
  if (!err) err = ar_out_begin(comm, "--out", outdir, &out);
  const char *files[4] = {"eval.json", "grad_X.npy", "grad_Y.npy", "hessian.npy"};
  for (int i = 0; i < (hess ? 4 : 3) && !err; i++) err = ar_out_add(&out, files[i]);
  t.t[AR_PHASE_SETUP] = ar_wtime() - t0 - t.t[AR_PHASE_IO];
  ar_eval_out r = {.grad = g, .hess = H};
  ar_progress *prog = rank == 0 && !c.quiet ? ar_progress_create(stderr, 10.0, 5.0) : NULL;
  ar_progress_start(prog, "eval");
  if (!err) ar_eval_set_progress(ev, prog);
  const double tc = ar_wtime();
  if (!err) err = ar_eval_compute(ev, X, Y, (ar_hessian_kind)hess, &r);
  t.t[AR_PHASE_TOTAL] = ar_wtime() - tc;
  if (ev) ar_eval_set_progress(ev, NULL);
  ar_progress_destroy(&prog);
  if (!err) err = ar_error_agree(comm, err);
  if (!err && !isfinite(r.loss)) err = AR_ERROR(AR_ERR_NUMERIC, "the loss is not finite at the given X, Y");
  ar_phases_add_eval(&t, &r);
  double t1 = ar_wtime(), gnorm = 0;
  if (!err) {
    for (int i = 0; i < d * d + d * m; i++) gnorm += g[i] * g[i];
    gnorm = sqrt(gnorm);
    char path[4400];
    int lerr = AR_OK;
    if (rank == 0) lerr = ar_npy_write(ar_out_path(&out, "grad_X.npy", path, sizeof path), d, d, g);
    if (rank == 0 && !lerr) lerr = ar_npy_write(ar_out_path(&out, "grad_Y.npy", path, sizeof path), d, m, g + d * d);
    err = ar_error_agree(comm, lerr);
    if (!err && H) err = ar_dmat_write_npy(H, ar_out_path(&out, "hessian.npy", path, sizeof path));
    err = ar_error_agree(comm, err);
  }
  t.t[AR_PHASE_WRITE] = ar_wtime() - t1;
  if (!err) {
    ar_report R;
    ar_report_begin(&R, comm, prob, ev, grid);
    R.nb = H ? ar_dmat_nb(H) : 0, R.loss = r.loss, R.grad_norm = gnorm, R.flops = r.flops, R.times = t;
    R.wall = ar_wtime() - t0, R.opts = opts, R.nopts = nopts;
    err = ar_report_write(&R, &out, "eval.json");
  }
  if (!err) err = ar_out_commit(&out);
  if (err) ar_out_abort(&out);
  if (!err && rank == 0 && !c.quiet)
    printf("attnreg eval: n=%lld d=%d m=%d loss %.10e rel_loss %.3e |grad| %.3e%s -> %s\n", (long long)n, d, m, r.loss,
           r.loss / ar_problem_bnorm2(prob), gnorm, H ? " (+hessian.npy)" : "", outdir);
  free(X), free(Y), free(g);
  ar_eval_destroy(&ev);
  ar_dmat_destroy(&H);
  ar_grid_destroy(&grid);
  ar_problem_destroy(&prob);
  return err;
}

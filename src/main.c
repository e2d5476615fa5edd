/* attnreg: the command-line program.  Dispatches to a subcommand; every error reaches here
 * as a code: agreed errors are printed once by rank 0 and every rank exits with the code's
 * status; an error only one rank saw is printed with its rank and aborts the job (no hang). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "error.h"
#include "npy.h"

static const char *usage =
    "usage: attnreg COMMAND [options]   (run under mpirun/srun for several ranks)\n"
    "\n"
    "Commands:\n"
    "  solve     fit X, Y by damped Newton (joint or alternating) with a ScaLAPACK Cholesky\n"
    "  eval      loss, gradient and (optionally) the joint Hessian at given X, Y\n"
    "  generate  write a planted problem (A, B, X_true, Y_true, X0) to a directory\n"
    "  plan      memory per rank, flops and communication per iteration, without running\n"
    "  blas      which BLAS kernels run here, a self-check, the OPENBLAS_CORETYPE that fits (no MPI)\n"
    "\n"
    "attnreg COMMAND --help lists a command's options.  attnreg --version prints the version.\n"
    "Exit status: 0 ok, 2 usage, 3 bad input data, 4 I/O, 5 runtime/MPI/library, 6 numerical\n"
    "failure, 75 stopped by SIGTERM/SIGUSR1/SIGINT (after writing --checkpoint, if given).";

int ar_cli_parse(MPI_Comm comm, const char *use, const ar_option *opts, int nopts, int argc, char **argv, int *done)
{
  int rank;
  MPI_Comm_rank(comm, &rank);
  *done = 0;
  AR_CALL(ar_options_parse(opts, nopts, argc, argv, 2, done));
  if (*done && rank == 0) ar_options_print_help(stdout, use, opts, nopts);
  return AR_OK;
}

static int data_paths(MPI_Comm comm, const ar_common_cfg *c, ar_data_paths *ps)
{
  static char store[4 * 4096];
  *ps = (ar_data_paths){c->a1, c->a2, c->a3, c->b};
  if (c->data) AR_CALL(ar_error_agree(comm, ar_data_paths_from_dir(c->data, ps, store)));
  AR_CHECK(ps->a1 && ps->a2 && ps->a3 && ps->b, AR_ERR_USAGE,
           "no input data: give --data DIR, or all of --a1 --a2 --a3 --b");
  return AR_OK;
}

int ar_cli_load_problem(MPI_Comm comm, const ar_common_cfg *c, ar_problem *prob)
{
  ar_data_paths ps;
  AR_CALL(data_paths(comm, c, &ps));
  return ar_problem_load(comm, &ps, prob);
}

int ar_cli_check_memory(MPI_Comm comm, const ar_common_cfg *c, double mem_per_rank_gb)
{
  ar_data_paths ps;
  ar_npy_header ha, hb;
  AR_CALL(data_paths(comm, c, &ps));
  AR_CALL(ar_npy_read_header(comm, ps.a1, &ha));
  AR_CALL(ar_npy_read_header(comm, ps.b, &hb));
  if (ha.rows < 1 || ha.cols < 1 || hb.cols < 1 || ha.cols > 4096) return AR_OK; /* load reports these */
  int size;
  MPI_Comm_size(comm, &size);
  ar_plan p;
  AR_CALL(ar_plan_compute(ha.rows, (int)ha.cols, (int)hb.cols, size, c->grid[0], c->grid[1], (int)c->nb, c->tile,
                          c->tile_mem, AR_HESS_EXACT, &p));
  double budget;
  char source[128];
  AR_CALL(ar_cli_memory_budget(comm, mem_per_rank_gb, &budget, source, sizeof source));
  AR_CHECK(p.mem_total <= budget, AR_ERR_USAGE,
           "n=%lld d=%d m=%d on %d ranks needs an estimated %.0f MB per rank (inputs %.0f, tables %.0f, tiles %.0f, "
           "Hessian %.0f + assembly %.0f) but the budget is %.0f MB (%s): use more ranks, a smaller --tile-mem, or "
           "see attnreg plan",
           (long long)p.n, p.d, p.m, size, p.mem_total / 1048576, p.mem_inputs / 1048576, p.mem_tables / 1048576,
           p.mem_tiles / 1048576, (p.mem_hessian + p.mem_parts) / 1048576, p.mem_assembly / 1048576,
           budget / 1048576, source);
  return AR_OK;
}

void ar_cli_time_stats(MPI_Comm comm, double t, double *mx, double *avg)
{
  int size;
  MPI_Comm_size(comm, &size);
  MPI_Allreduce(&t, mx, 1, MPI_DOUBLE, MPI_MAX, comm);
  MPI_Allreduce(&t, avg, 1, MPI_DOUBLE, MPI_SUM, comm);
  *avg /= size;
}

int ar_cli_load_matrix(MPI_Comm comm, const char *option, const char *path, int rows, int cols, double *dst)
{
  int rank, err = AR_OK;
  MPI_Comm_rank(comm, &rank);
  if (rank == 0) {
    ar_npy_header h;
    double *a = NULL;
    err = ar_npy_read(path, &h, &a);
    if (!err && (h.rows != rows || h.cols != cols))
      err = AR_ERROR(AR_ERR_DATA, "%s %s: shape %lld x %lld, expected %d x %d", option, path, (long long)h.rows,
                     (long long)h.cols, rows, cols);
    if (!err) memcpy(dst, a, sizeof(double) * rows * cols);
    free(a);
  }
  AR_CALL(ar_error_agree(comm, err));
  AR_CALL_MPI(MPI_Bcast(dst, rows * cols, MPI_DOUBLE, 0, comm));
  return AR_OK;
}

int main(int argc, char **argv)
{
  if (argc > 1 && !strcmp(argv[1], "blas")) return ar_cmd_blas(argc, argv); /* node-local, without MPI */
  if (argc > 1 && !strcmp(argv[1], "solve")) ar_cmd_solve_signals();
  MPI_Init(&argc, &argv);
  MPI_Comm comm = MPI_COMM_WORLD;
  int rank, err = AR_OK;
  MPI_Comm_rank(comm, &rank);
  const char *cmd = argc > 1 ? argv[1] : "";
  if (!strcmp(cmd, "solve")) err = ar_cmd_solve(comm, argc, argv);
  else if (!strcmp(cmd, "eval")) err = ar_cmd_eval(comm, argc, argv);
  else if (!strcmp(cmd, "generate")) err = ar_cmd_generate(comm, argc, argv);
  else if (!strcmp(cmd, "plan")) err = ar_cmd_plan(comm, argc, argv);
  else if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
    if (rank == 0) printf("attnreg %s\n", ATTNREG_VERSION);
  } else if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
    if (rank == 0) printf("%s\n", usage);
  } else {
    err = argc > 1 ? AR_ERROR(AR_ERR_USAGE, "unknown command '%s' (try attnreg --help)", cmd)
                   : AR_ERROR(AR_ERR_USAGE, "no command given (try attnreg --help)");
  }
  /* Every path above agrees its errors over comm, except failures that only one rank can
   * see; agree here too: a lone failure then ends every rank with the same status. */
  err = ar_error_agree(comm, err);
  if (err && rank == 0)
    fprintf(stderr, "attnreg: %s: %s\n", err == AR_ERR_INTERRUPTED ? "interrupted" : "error", ar_error_message());
  fflush(stdout);
  MPI_Finalize();
  return ar_error_exit_status(err);
}

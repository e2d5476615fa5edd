/* attnreg plan: memory per rank, flops and communication per Newton iteration (plan.c),
 * without running; solve applies the same memory check before it allocates anything. */
#include <stdio.h>
#include <stdlib.h>

#include "blas.h"
#include "cli.h"
#include "commands.h"
#include "error.h"

int ar_cmd_plan(MPI_Comm comm, int argc, char **argv)
{
  int64_t n = 0, d = 0, m = 0, ranks = 0;
  double mem = 0;
  int hess = AR_HESS_EXACT, ls = AR_LINSOLVE_AUTO, done, rank;
  ar_common_cfg c;
  ar_common_cfg_default(&c);
  ar_option opts[] = {
      {"n", AR_OPT_INT64, &n, "rows (sequence length), required", NULL, 1},
      {"d", AR_OPT_INT64, &d, "width of A1, A2, A3, required", NULL, 1},
      {"m", AR_OPT_INT64, &m, "columns of B", "d", 1},
      {"ranks", AR_OPT_INT64, &ranks, "MPI ranks, required", NULL, 1},
      AR_LAYOUT_OPTIONS(c),
      AR_MASK_OPTIONS(c),
      {"hessian", AR_OPT_CHOICE, &hess, "Hessian kind", NULL, 0, 0, "exact|gauss-newton", ar_hessian_name},
      {"linear-solver", AR_OPT_CHOICE, &ls, "Newton step: dense Cholesky, matrix-free CG, row-space Gauss-Newton, or auto (as solve chooses)",
       NULL, 0, 0, "auto|cholesky|cg|rows", ar_linear_solver_name},
      {"mem-per-rank", AR_OPT_DOUBLE, &mem, "memory budget per rank in GB", "from SLURM or the node", 0, 1},
  };
  const int nopts = sizeof opts / sizeof opts[0];
  AR_CALL(ar_cli_parse(comm, "usage: attnreg plan --n N --d D [--m M] --ranks P [--grid PRxPC] [--mem-per-rank GB]",
                       opts, nopts, argc, argv, &done));
  if (done) return AR_OK;
  AR_CHECK(n >= 1 && d >= 1 && ranks >= 1, AR_ERR_USAGE, "--n, --d and --ranks are required");
  AR_CHECK(d <= 4096 && (m ? m : d) <= 1 << 20 && ranks <= 1 << 24, AR_ERR_USAGE, "--d, --m or --ranks out of range");
  AR_CALL(ar_eval_options_check(&c.eval));
  ar_plan p;
  double budget;
  char source[128];
  AR_CALL(ar_cli_memory_budget(comm, mem, &budget, source, sizeof source));
  ar_mask mask;
  int64_t *off;
  AR_CALL(ar_cli_mask(comm, &c, n, &mask, &off));
  if (ls == AR_LINSOLVE_AUTO)
    ls = ar_plan_linear_solver(n, (int)d, (int)(m ? m : d), (int)ranks, c.grid[0], c.grid[1], c.nb, c.eval.tile,
                               c.eval.chunk, c.eval.tile_mem_mb, (ar_hessian_kind)hess, budget, &mask, 1);
  const int err = ar_plan_compute(n, (int)d, (int)(m ? m : d), (int)ranks, c.grid[0], c.grid[1], c.nb, c.eval.tile,
                                  c.eval.chunk, c.eval.tile_mem_mb, (ar_hessian_kind)hess, ls, &mask, &p);
  free(off);
  AR_CALL(err);
  MPI_Comm_rank(comm, &rank);
  if (rank == 0) {
    ar_cli_print_plan(stdout, &p, budget, source);
    ar_blas_print(stdout, "this process: ");
  }
  return AR_OK;
}

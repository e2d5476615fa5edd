/* attnreg plan: memory per rank, flops and communication per Newton iteration (plan.c), and
 * the memory budget check that solve applies before it allocates anything. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "cli.h"
#include "error.h"

int ar_cli_memory_budget(MPI_Comm comm, double mem_per_rank_gb, double *bytes, char *source, size_t cap)
{
  if (mem_per_rank_gb > 0) {
    *bytes = mem_per_rank_gb * 1073741824.0;
    snprintf(source, cap, "--mem-per-rank");
    return AR_OK;
  }
  MPI_Comm node;
  int local = 1;
  AR_CALL_MPI(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
  MPI_Comm_size(node, &local);
  MPI_Comm_free(&node);
  const char *per_cpu = getenv("SLURM_MEM_PER_CPU"), *per_node = getenv("SLURM_MEM_PER_NODE");
  const char *cpus = getenv("SLURM_CPUS_PER_TASK");
  if (per_cpu && atof(per_cpu) > 0) {
    *bytes = atof(per_cpu) * 1048576.0 * (cpus && atoi(cpus) > 0 ? atoi(cpus) : 1);
    snprintf(source, cap, "SLURM_MEM_PER_CPU");
    return AR_OK;
  }
  if (per_node && atof(per_node) > 0) {
    *bytes = atof(per_node) * 1048576.0 / local;
    snprintf(source, cap, "SLURM_MEM_PER_NODE / %d ranks on the node", local);
    return AR_OK;
  }
  double avail_kb = 0;
  FILE *f = fopen("/proc/meminfo", "r");
  char line[256];
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "MemAvailable: %lf kB", &avail_kb) == 1) break;
  if (f) fclose(f);
  /* Every rank of the node sees the same number; the smallest wins if nodes differ. */
  double mine = avail_kb * 1024.0 / local;
  AR_CALL_MPI(MPI_Allreduce(&mine, bytes, 1, MPI_DOUBLE, MPI_MIN, comm));
  snprintf(source, cap, "available memory / %d ranks on the node", local);
  if (*bytes <= 0) *bytes = 1e300, snprintf(source, cap, "unknown (no limit)");
  return AR_OK;
}

static double mb(double b) { return b / 1048576.0; }

void ar_cli_print_plan(FILE *f, const ar_plan *p, double budget, const char *source)
{
  fprintf(f, "attnreg plan: n=%lld d=%d m=%d (D=%d unknowns) on %d ranks, grid %dx%d, nb %d, tile %lld rows, "
             "%lld rows per rank\n",
          (long long)p->n, p->d, p->m, p->D, p->ranks, p->pr, p->pc, p->nb, (long long)p->tile,
          (long long)p->rows_per_rank);
  fprintf(f, "memory per rank (largest share), MB:\n");
  fprintf(f, "  inputs (A1, B rows; A2, A3)        %12.1f\n", mb(p->mem_inputs));
  fprintf(f, "  tables [A3|A2|R23], [A2|R22], V    %12.1f\n", mb(p->mem_tables));
  fprintf(f, "  softmax tile work arrays           %12.1f\n", mb(p->mem_tiles));
  fprintf(f, "  Hessian parts (compact, per rank)  %12.1f\n", mb(p->mem_parts));
  fprintf(f, "  local Hessian share + factor       %12.1f\n", mb(p->mem_hessian));
  fprintf(f, "  Hessian reduce-scatter buffer      %12.1f\n", mb(p->mem_assembly));
  fprintf(f, "  solver vectors                     %12.1f\n", mb(p->mem_solver));
  fprintf(f, "  runtime baseline (MPI, BLAS)       %12.1f\n", mb(p->mem_baseline));
  fprintf(f, "  total                              %12.1f   budget %.1f (%s): %s\n", mb(p->mem_total), mb(budget),
          source, p->mem_total <= budget ? "fits" : "DOES NOT FIT");
  fprintf(f, "flops per Newton iteration (whole job, GFLOP):\n");
  fprintf(f, "  loss + gradient %.3f, Hessian %.3f, trial loss %.3f, Cholesky + solve %.3f, total %.3f\n",
          p->flops_loss_grad * 1e-9, p->flops_hessian * 1e-9, p->flops_trial * 1e-9, p->flops_cholesky * 1e-9,
          p->flops_total * 1e-9);
  fprintf(f, "  per rank %.3f GFLOP\n", p->flops_total / p->ranks * 1e-9);
  fprintf(f, "communication per rank per Newton iteration (estimate, MB):\n");
  fprintf(f, "  allreduce %.3f, Hessian reduce-scatter + transpose %.3f, Cholesky %.3f, total %.3f\n",
          mb(p->comm_allreduce), mb(p->comm_hessian), mb(p->comm_cholesky), mb(p->comm_total));
}

int ar_cmd_plan(MPI_Comm comm, int argc, char **argv)
{
  int64_t n, d, m, ranks, nb, tile;
  double tile_mem, mem;
  int grid[2], hess, done, rank;
  ar_option opts[] = {
      {"n", AR_OPT_INT, &n, NULL, "rows (sequence length), required", 1, 0, 0},
      {"d", AR_OPT_INT, &d, NULL, "width of A1, A2, A3, required", 1, 0, 0},
      {"m", AR_OPT_INT, &m, NULL, "columns of B [default: d]", 1, 0, 0},
      {"ranks", AR_OPT_INT, &ranks, NULL, "MPI ranks, required", 1, 0, 0},
      {"grid", AR_OPT_GRID, grid, NULL, "BLACS process grid PRxPC [default: as square as possible]", 0, 0, 0},
      {"nb", AR_OPT_INT, &nb, NULL, "ScaLAPACK block size [default: min(64, D/max(PR,PC))]", 1, 0, 0},
      {"tile", AR_OPT_INT, &tile, NULL, "rows per softmax tile [default: from --tile-mem, at most 256]", 1, 0, 0},
      {"tile-mem", AR_OPT_DOUBLE, &tile_mem, "32", "memory budget in MB for one tile's work arrays", 0, 1, 0},
      {"hessian", AR_OPT_CHOICE, &hess, "exact", "Hessian kind", 0, 0, "exact|gauss-newton"},
      {"mem-per-rank", AR_OPT_DOUBLE, &mem, NULL, "memory budget per rank in GB [default: from SLURM or the node]", 0, 1,
       0},
  };
  const int nopts = sizeof opts / sizeof opts[0];
  AR_CALL(ar_cli_parse(comm, "usage: attnreg plan --n N --d D [--m M] --ranks P [--grid PRxPC] [--mem-per-rank GB]",
                       opts, nopts, argc, argv, &done));
  if (done) return AR_OK;
  AR_CHECK(n >= 1 && d >= 1 && ranks >= 1, AR_ERR_USAGE, "--n, --d and --ranks are required");
  AR_CHECK(d <= 4096 && (m ? m : d) <= 1 << 20 && ranks <= 1 << 24, AR_ERR_USAGE, "--d, --m or --ranks out of range");
  ar_plan p;
  AR_CALL(ar_plan_compute(n, (int)d, (int)(m ? m : d), (int)ranks, grid[0], grid[1], (int)nb, tile, tile_mem,
                          hess ? AR_HESS_GAUSS_NEWTON : AR_HESS_EXACT, &p));
  double budget;
  char source[128];
  AR_CALL(ar_cli_memory_budget(comm, mem, &budget, source, sizeof source));
  MPI_Comm_rank(comm, &rank);
  if (rank == 0) {
    ar_cli_print_plan(stdout, &p, budget, source);
    ar_blas_print(stdout, "this process: ");
  }
  return AR_OK;
}

/* What the subcommands share (cli.h): parsing with --help, loading, the memory budget and
 * the plan table, small reductions for the reports. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "npy.h"

void ar_common_cfg_default(ar_common_cfg *c)
{
  memset(c, 0, sizeof *c);
  ar_eval_options_default(&c->eval);
}

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

const char *ar_layout_name(int layout) { return layout == 0 ? "auto" : layout == 1 ? "contiguous" : NULL; }

int ar_cli_mask(MPI_Comm comm, const ar_common_cfg *c, int64_t n, ar_mask *mask, int64_t **offsets)
{
  *offsets = NULL;
  *mask = (ar_mask){0, NULL, c->causal, c->layout == 1};
  char path[4200];
  int rank, have = 0;
  MPI_Comm_rank(comm, &rank);
  if (c->segments && strcmp(c->segments, "none") != 0) {
    snprintf(path, sizeof path, "%s", c->segments), have = 1;
  } else if (!c->segments && c->data) { /* DIR/segments.npy, when the directory holds one */
    snprintf(path, sizeof path, "%s/segments.npy", c->data);
    FILE *f = rank == 0 ? fopen(path, "rb") : NULL;
    have = f != NULL;
    if (f) fclose(f);
    AR_CALL_MPI(MPI_Bcast(&have, 1, MPI_INT, 0, comm));
  }
  if (!have) return AR_OK;
  AR_CALL(ar_mask_read_segments(comm, path, n, offsets, &mask->nseg));
  mask->offsets = *offsets;
  return AR_OK;
}

int ar_cli_load_problem(MPI_Comm comm, const ar_common_cfg *c, ar_problem *prob)
{
  ar_data_paths ps;
  AR_CALL(data_paths(comm, c, &ps));
  ar_npy_header h;
  AR_CALL(ar_npy_read_header(comm, ps.a1, &h));
  ar_mask mask;
  int64_t *off;
  AR_CALL(ar_cli_mask(comm, c, h.rows, &mask, &off));
  const int err = ar_problem_load(comm, &ps, &mask, prob);
  free(off);
  return err;
}

/* Why --linear-solver auto chose ls: memory per rank and flops an iteration of both steps. */
static void auto_reason(const ar_common_cfg *c, int64_t n, int d, int m, int size, int hk, double budget,
                        const ar_mask *mask, int ls, char *why, size_t cap)
{
  ar_plan pd, pc;
  if (ar_plan_compute(n, d, m, size, c->grid[0], c->grid[1], c->nb, c->eval.tile, c->eval.chunk, c->eval.tile_mem_mb,
                      hk, AR_LINSOLVE_CHOLESKY, mask, &pd) ||
      ar_plan_compute(n, d, m, size, c->grid[0], c->grid[1], c->nb, c->eval.tile, c->eval.chunk, c->eval.tile_mem_mb,
                      hk, AR_LINSOLVE_CG, mask, &pc)) {
    ar_error_clear();
    return;
  }
  const int dense_fits = budget <= 0 || pd.mem_total <= budget;
  ar_plan pr;
  if (ls == AR_LINSOLVE_ROWS &&
      !ar_plan_compute(n, d, m, size, c->grid[0], c->grid[1], c->nb, c->eval.tile, c->eval.chunk, c->eval.tile_mem_mb,
                       hk, AR_LINSOLVE_ROWS, mask, &pr)) {
    snprintf(why, cap, "auto chose rows: n m = %lld < D = %d, so the Gauss-Newton Hessian has rank at most n m; the "
             "row-space step factors J J^T (%lld x %lld): %.0f MB per rank and %.3g GFLOP an iteration (the dense step "
             "%.0f MB and %.3g GFLOP)", (long long)n * m, d * d + d * m, (long long)n * m, (long long)n * m,
             pr.mem_total / 1048576, (pr.flops_hessian + pr.flops_cholesky) * 1e-9, pd.mem_total / 1048576,
             (pd.flops_hessian + pd.flops_cholesky) * 1e-9);
    return;
  }
  ar_error_clear();
  snprintf(why, cap, "auto chose %s: the dense step needs %.0f MB per rank (%s the budget of %.0f MB) and %.3g "
         "GFLOP an iteration for its Hessian and Cholesky; the matrix-free step %.0f MB and %.3g GFLOP (%.0f "
         "Hessian-vector products assumed)",
         ar_linear_solver_name(ls), pd.mem_total / 1048576, dense_fits ? "within" : "over", budget / 1048576,
         (pd.flops_hessian + pd.flops_cholesky) * 1e-9, pc.mem_total / 1048576, pc.flops_hessian * 1e-9, pc.cg_iters);
}

int ar_cli_check_memory(MPI_Comm comm, const ar_common_cfg *c, double mem_per_rank_gb, int hessian, int rows_ok,
                        int *ls, char *why, size_t cap)
{
  if (why && cap) why[0] = 0;
  ar_data_paths ps;
  ar_npy_header ha, hb;
  AR_CALL(data_paths(comm, c, &ps));
  AR_CALL(ar_npy_read_header(comm, ps.a1, &ha));
  AR_CALL(ar_npy_read_header(comm, ps.b, &hb));
  if (ha.rows < 1 || ha.cols < 1 || hb.cols < 1 || ha.cols > 4096) return AR_OK; /* load reports these */
  int size;
  MPI_Comm_size(comm, &size);
  ar_plan p;
  double budget;
  char source[128];
  ar_mask mask;
  int64_t *off;
  AR_CALL(ar_cli_mask(comm, c, ha.rows, &mask, &off));
  int err = ar_cli_memory_budget(comm, mem_per_rank_gb, &budget, source, sizeof source);
  /* the exact Hessian's footprint (auto and Gauss-Newton may need it too) */
  const int hk = hessian == AR_HESS_GAUSS_NEWTON ? AR_HESS_GAUSS_NEWTON : AR_HESS_EXACT;
  if (!err && *ls == AR_LINSOLVE_AUTO) {
    *ls = ar_plan_linear_solver(ha.rows, (int)ha.cols, (int)hb.cols, size, c->grid[0], c->grid[1], c->nb, c->eval.tile,
                                c->eval.chunk, c->eval.tile_mem_mb, hk, budget, &mask, rows_ok);
    if (why) auto_reason(c, ha.rows, (int)ha.cols, (int)hb.cols, size, hk, budget, &mask, *ls, why, cap);
  }
  if (!err)
    err = ar_plan_compute(ha.rows, (int)ha.cols, (int)hb.cols, size, c->grid[0], c->grid[1], c->nb, c->eval.tile,
                          c->eval.chunk, c->eval.tile_mem_mb, hk, *ls, &mask, &p);
  free(off);
  AR_CALL(err);
  AR_CHECK(p.mem_total <= budget, AR_ERR_USAGE,
           "n=%lld d=%d m=%d on %d ranks needs an estimated %.0f MB per rank (rows %.0f, ring %.0f, tiles and chunks "
           "%.0f, Hessian %.0f + assembly %.0f) but the budget is %.0f MB (%s): use more ranks, a smaller --tile-mem, "
           "--linear-solver cg, or see attnreg plan",
           (long long)p.n, p.d, p.m, size, p.mem_total / 1048576, (p.mem_inputs + p.mem_rows) / 1048576,
           p.mem_ring / 1048576, (p.mem_tiles + p.mem_chunk) / 1048576, (p.mem_hessian + p.mem_parts) / 1048576,
           p.mem_assembly / 1048576, budget / 1048576, source);
  return AR_OK;
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
  fprintf(f, "attnreg plan: n=%lld d=%d m=%d (D=%d unknowns) on %d ranks, grid %dx%d, nb %d, %lld rows per rank\n",
          (long long)p->n, p->d, p->m, p->D, p->ranks, p->pr, p->pc, p->nb, (long long)p->rows_per_rank);
  fprintf(f, "tiles: %lld query rows x %lld key rows%s\n", (long long)p->tile, (long long)p->chunk,
          p->fused ? " (one chunk: forward and backward fused)" : " (key blocks around the ring, two passes)");
  if (p->nseg > 1 || p->causal)
    fprintf(f, "mask: %lld segment%s%s; %d group%s of ranks exchanging key blocks, the largest %d%s; unmasked pairs "
               "%.4g (%.1f%% of n^2), per rank max/avg %.3f\n",
            (long long)p->nseg, p->nseg == 1 ? "" : "s", p->causal ? ", causal" : "", p->groups, p->groups == 1 ? "" : "s",
            p->max_group, p->zigzag ? " (causal segments in zigzag pieces)" : "", p->pairs_total,
            100.0 * p->pairs_total / ((double)p->n * p->n), p->pairs_avg > 0 ? p->pairs_max / p->pairs_avg : 1.0);
  fprintf(f, "memory per rank (largest share), MB:\n");
  const int rw = p->linear_solver == AR_LINSOLVE_ROWS;
  const struct {
    const char *what;
    double bytes;
  } rows[] = {{"inputs (this rank's rows of A1, A2, A3, B)", p->mem_inputs},
              {"ring: own [A2|A3] block + two in flight", p->mem_ring},
              {"per-row accumulators (F[A3|A2|R23], W[A2|R22])", p->mem_rows},
              {"one key chunk's tables", p->mem_chunk},
              {"one tile's work arrays", p->mem_tiles},
              {"Hessian parts (compact, per rank)", p->mem_parts},
              {rw ? "local J J^T share + factor (n m x n m)" : "local Hessian share + factor", p->mem_hessian},
              {"Hessian assembly panel", p->mem_assembly},
              {rw ? "solver vectors, every row's pieces of J" : "solver vectors", p->mem_solver},
              {"runtime baseline (MPI, BLAS)", p->mem_baseline}};
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) fprintf(f, "  %-48s %12.1f\n", rows[i].what, mb(rows[i].bytes));
  fprintf(f, "  %-48s %12.1f   budget %.1f (%s): %s\n", "total", mb(p->mem_total), mb(budget), source,
          p->mem_total <= budget ? "fits" : "DOES NOT FIT");
  fprintf(f, "flops per Newton iteration (whole job, GFLOP), %s step:\n",
          p->linear_solver == AR_LINSOLVE_CG ? "matrix-free CG" : rw ? "row-space Gauss-Newton" : "dense Cholesky");
  if (p->linear_solver == AR_LINSOLVE_CG)
    fprintf(f, "  loss + gradient %.3f, preconditioner %.3f + %.0f Hessian-vector products x %.3f, trial loss %.3f, "
               "total %.3f\n",
            p->flops_loss_grad * 1e-9, p->flops_precond * 1e-9, p->cg_iters, p->flops_hessvec * 1e-9,
            p->flops_trial * 1e-9, p->flops_total * 1e-9);
  else
    fprintf(f, rw ? "  loss + gradient %.3f, J's pieces and J J^T %.3f, trial loss %.3f, Cholesky of J J^T + solve %.3f, "
                    "total %.3f\n"
                  : "  loss + gradient %.3f, Hessian %.3f, trial loss %.3f, Cholesky + solve %.3f, total %.3f\n",
            p->flops_loss_grad * 1e-9, p->flops_hessian * 1e-9, p->flops_trial * 1e-9, p->flops_cholesky * 1e-9,
            p->flops_total * 1e-9);
  fprintf(f, "  per rank %.3f GFLOP\n", p->flops_total / p->ranks * 1e-9);
  fprintf(f, "communication per rank per Newton iteration (estimate, MB):\n");
  if (p->linear_solver == AR_LINSOLVE_CG)
    fprintf(f, "  ring %.3f, allreduce %.3f, Hessian-vector allreduces %.3f, total %.3f\n", mb(p->comm_ring),
            mb(p->comm_allreduce), mb(p->comm_hessian), mb(p->comm_total));
  else
    fprintf(f, rw ? "  ring %.3f, allreduce %.3f, allgather of J's pieces %.3f, Cholesky %.3f, total %.3f\n"
                  : "  ring %.3f, allreduce %.3f, Hessian reduce-scatter %.3f, Cholesky %.3f, total %.3f\n",
            mb(p->comm_ring),
            mb(p->comm_allreduce), mb(p->comm_hessian), mb(p->comm_cholesky), mb(p->comm_total));
}


/* What the subcommands (cmd_*.c) share: the data and layout options, loading, the memory
 * budget, argument parsing with --help, and small reductions for reports.  Implemented in
 * cli.c; main.c only dispatches (commands.h). */
#ifndef AR_CLI_H
#define AR_CLI_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "attnreg.h"
#include "options.h"

/* Options every data-reading command has.  Defaults: ar_common_cfg_default. */
typedef struct {
  const char *data, *a1, *a2, *a3, *b;
  const char *segments;     /* packed sequences: an offsets file, "none", or NULL (DIR/segments.npy if any) */
  int causal, layout;       /* --causal; --layout auto (0) | contiguous (1) */
  int grid[2];              /* 0x0: as square as the rank count allows */
  int nb;                   /* ScaLAPACK block size, 0: ar_plan_default_nb */
  ar_eval_options eval;     /* tile, tile_mem_mb, lambda_x, lambda_y */
  int quiet;
} ar_common_cfg;

/* Not collective: everything unset, the evaluation options from ar_eval_options_default. */
void ar_common_cfg_default(ar_common_cfg *c);

/* The layout of a run: the BLACS grid, the block size and the softmax tiles (solve, eval, plan). */
#define AR_LAYOUT_OPTIONS(c)                                                                                   \
  {"grid", AR_OPT_GRID, (c).grid, "BLACS process grid PRxPC (PR*PC = ranks)", "as square as possible"},          \
  {"nb", AR_OPT_INT, &(c).nb, "ScaLAPACK block size", "min(64, D/max(PR,PC))", 1},                             \
  {"tile", AR_OPT_INT64, &(c).eval.tile, "query rows per tile", "from --tile-mem, at most 256", 1},            \
  {"chunk", AR_OPT_INT64, &(c).eval.chunk, "key rows per chunk of a ring block", "from --tile-mem", 1},        \
  {"tile-mem", AR_OPT_DOUBLE, &(c).eval.tile_mem_mb, "memory budget in MB for one tile's work arrays", NULL, 0, 1}

/* The attention mask and its row layout (eval, solve, plan). */
#define AR_MASK_OPTIONS(c)                                                                                     \
  {"segments", AR_OPT_STRING, &(c).segments,                                                                   \
   "packed sequences: int64 offsets 0 = o_0 < ... < o_K = n (npy; 'none': one sequence); a row attends only "  \
   "to rows of its own sequence", "DIR/segments.npy if --data DIR holds one"},                                 \
  {"causal", AR_OPT_FLAG, &(c).causal, "causal mask: row i attends only to rows k <= i of its sequence"},        \
  {"layout", AR_OPT_CHOICE, &(c).layout,                                                                       \
   "rows over the ranks under a mask: auto (groups of ranks by sequence, zigzag pieces when causal) or "       \
   "contiguous (blocks in file order, one ring)", NULL, 0, 0, "auto|contiguous", ar_layout_name}

#define AR_DATA_OPTIONS(c)                                                                                      \
  {"data", AR_OPT_STRING, &(c).data, "directory with A1.npy A2.npy A3.npy B.npy (or A.npy B.npy)"},             \
  {"a1", AR_OPT_STRING, &(c).a1, "A1 file (n x d), overrides --data"},                                        \
  {"a2", AR_OPT_STRING, &(c).a2, "A2 file (n x d)"},                                                          \
  {"a3", AR_OPT_STRING, &(c).a3, "A3 file (n x d)"},                                                          \
  {"b", AR_OPT_STRING, &(c).b, "B file (n x m)"},                                                             \
  AR_LAYOUT_OPTIONS(c),                                                                                        \
  AR_MASK_OPTIONS(c),                                                                                          \
  {"lambda-x", AR_OPT_DOUBLE, &(c).eval.lambda_x, "ridge weight on ||X||_F^2", "0"},                           \
  {"lambda-y", AR_OPT_DOUBLE, &(c).eval.lambda_y, "ridge weight on ||Y||_F^2", "0"},                           \
  {"quiet", AR_OPT_FLAG, &(c).quiet, "print nothing but errors"}

/* Collective: parse argv for a subcommand; prints help (rank 0) and sets *done for --help. */
int ar_cli_parse(MPI_Comm comm, const char *usage, const ar_option *opts, int nopts, int argc, char **argv,
                 int *done);

/* Not collective: --layout's names. */
const char *ar_layout_name(int layout);
/* Collective: the mask cfg names for n rows (--segments, DIR/segments.npy, --causal, --layout);
 * *offsets: the segments read (caller frees; NULL without). */
int ar_cli_mask(MPI_Comm comm, const ar_common_cfg *cfg, int64_t n, ar_mask *mask, int64_t **offsets);
/* Collective: load the problem named by cfg (--data / --a1..--b, and its mask). */
int ar_cli_load_problem(MPI_Comm comm, const ar_common_cfg *cfg, ar_problem *prob);
/* Collective: refuse (AR_ERR_USAGE, with the numbers) a run that plan says cannot fit in the
 * memory budget (ar_cli_memory_budget).  Reads only the headers of A1 and B (and the segments).  *ls: the linear
 * solver; AUTO is resolved here, knowing the budget (rows_ok: the row-space step may be chosen), and why (if not
 * NULL: cap bytes) says why. */
int ar_cli_check_memory(MPI_Comm comm, const ar_common_cfg *cfg, double mem_per_rank_gb, int hessian, int rows_ok,
                        int *ls, char *why, size_t cap);
/* Collective: read a small rows x cols matrix (X0, Y0, ...) on rank 0 and broadcast it;
 * option names the command-line option in messages.  dst must hold rows*cols doubles. */
int ar_cli_load_matrix(MPI_Comm comm, const char *option, const char *path, int rows, int cols, double *dst);

/* Collective: memory budget per rank in bytes: --mem-per-rank if > 0, else SLURM's
 * allocation, else the node's available memory over the ranks on the node. */
int ar_cli_memory_budget(MPI_Comm comm, double mem_per_rank_gb, double *bytes, char *source, size_t cap);
/* Not collective: the plan as a table. */
void ar_cli_print_plan(FILE *f, const ar_plan *p, double budget, const char *source);


#endif

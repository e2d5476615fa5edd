/* Shared pieces of the subcommands (main.c dispatches to cmd_*.c). */
#ifndef AR_CLI_H
#define AR_CLI_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "attnreg.h"
#include "options.h"

/* Options every data-reading command has. */
typedef struct {
  const char *data, *a1, *a2, *a3, *b;
  int grid[2];
  int64_t nb, tile;
  double tile_mem, lambda_x, lambda_y;
  int quiet;
} ar_common_cfg;

#define AR_DATA_OPTIONS(c)                                                                                   \
  {"data", AR_OPT_STRING, &(c).data, NULL, "directory with A1.npy A2.npy A3.npy B.npy (or A.npy B.npy)", 0, 0, 0}, \
  {"a1", AR_OPT_STRING, &(c).a1, NULL, "A1 file (n x d), overrides --data", 0, 0, 0},                        \
  {"a2", AR_OPT_STRING, &(c).a2, NULL, "A2 file (n x d)", 0, 0, 0},                                          \
  {"a3", AR_OPT_STRING, &(c).a3, NULL, "A3 file (n x d)", 0, 0, 0},                                          \
  {"b", AR_OPT_STRING, &(c).b, NULL, "B file (n x m)", 0, 0, 0},                                             \
  {"grid", AR_OPT_GRID, (c).grid, NULL, "BLACS process grid PRxPC (PR*PC = ranks) [default: as square as possible]", 0, 0, 0}, \
  {"nb", AR_OPT_INT, &(c).nb, NULL, "ScaLAPACK block size [default: min(64, D/max(PR,PC))]", 1, 0, 0},     \
  {"tile", AR_OPT_INT, &(c).tile, NULL, "rows per softmax tile [default: from --tile-mem, at most 256]", 1, 0, 0},        \
  {"tile-mem", AR_OPT_DOUBLE, &(c).tile_mem, "32", "memory budget in MB for one tile's work arrays", 0, 1, 0}, \
  {"lambda-x", AR_OPT_DOUBLE, &(c).lambda_x, "0", "ridge weight on ||X||_F^2", 0, 0, 0},                    \
  {"lambda-y", AR_OPT_DOUBLE, &(c).lambda_y, "0", "ridge weight on ||Y||_F^2", 0, 0, 0},                    \
  {"quiet", AR_OPT_FLAG, &(c).quiet, NULL, "print nothing but errors", 0, 0, 0}

/* Collective: load the problem named by cfg (--data / --a1..--b). */
int ar_cli_load_problem(MPI_Comm comm, const ar_common_cfg *cfg, ar_problem *prob);
/* Collective: refuse (AR_ERR_USAGE, with the numbers) a run that plan says cannot fit in the
 * memory budget (ar_cli_memory_budget).  Reads only the headers of A1 and B. */
int ar_cli_check_memory(MPI_Comm comm, const ar_common_cfg *cfg, double mem_per_rank_gb);
/* Collective: read a small rows x cols matrix (X0, Y0, ...) on rank 0 and broadcast it;
 * option names the command-line option in messages.  dst must hold rows*cols doubles. */
int ar_cli_load_matrix(MPI_Comm comm, const char *option, const char *path, int rows, int cols, double *dst);

/* Collective: a local time reduced to its maximum and average over comm. */
void ar_cli_time_stats(MPI_Comm comm, double t, double *mx, double *avg);

/* Parse argv for a subcommand; prints help (rank 0) and sets *done when --help was given. */
int ar_cli_parse(MPI_Comm comm, const char *usage, const ar_option *opts, int nopts, int argc, char **argv,
                 int *done);

/* Collective: memory budget per rank in bytes: --mem-per-rank if > 0, else SLURM's
 * allocation, else the node's available memory over the ranks on the node. */
int ar_cli_memory_budget(MPI_Comm comm, double mem_per_rank_gb, double *bytes, char *source, size_t cap);
/* Not collective: the plan as a table. */
void ar_cli_print_plan(FILE *f, const ar_plan *p, double budget, const char *source);

int ar_cmd_generate(MPI_Comm comm, int argc, char **argv);
int ar_cmd_plan(MPI_Comm comm, int argc, char **argv);
int ar_cmd_eval(MPI_Comm comm, int argc, char **argv);
int ar_cmd_solve(MPI_Comm comm, int argc, char **argv);
/* Not MPI (main calls it before MPI_Init): attnreg blas; returns the exit status. */
int ar_cmd_blas(int argc, char **argv);
/* Install solve's SIGTERM/SIGUSR1/SIGINT handlers (before MPI_Init: no window in which a
 * signal kills a rank instead of asking for a checkpoint). */
void ar_cmd_solve_signals(void);

#endif

/* The command line of attnreg solve (cmd_solve.c parses it; the solve driver, solve_job.h, and
 * multi-start, cmd_multistart.c, read it). */
#ifndef AR_SOLVE_CLI_H
#define AR_SOLVE_CLI_H

#include <stdint.h>

#include "cli.h"

/* --whiten: on when the ridge weights are 0 (auto), or as asked. */
#define AR_WHITEN_MAP(X)       \
  X(WHITEN_AUTO, 0, "auto")    \
  X(WHITEN_ON, 1, "on")        \
  X(WHITEN_OFF, 2, "off")
/* --strategy of multi-start */
#define AR_STRATEGY_MAP(X)                   \
  X(AR_STRATEGY_STARTS, 0, "starts")         \
  X(AR_STRATEGY_NORM, 1, "norm")             \
  X(AR_STRATEGY_HOP, 2, "hop")               \
  X(AR_STRATEGY_PORTFOLIO, 3, "portfolio")

#define AR_SOLVE_CLI_ENUM(name, value, text) name = value,
enum { AR_WHITEN_MAP(AR_SOLVE_CLI_ENUM) };
enum { AR_STRATEGY_MAP(AR_SOLVE_CLI_ENUM) };
#undef AR_SOLVE_CLI_ENUM
/* Not collective: the names (NULL past the last); solve_job.c. */
const char *ar_whiten_name(int w);
const char *ar_strategy_name(int k);
/* The starts a multi-start run makes room for: --starts K, or --max-starts with --starts auto. */
#define AR_STARTS_K(s) ((s)->starts ? (s)->starts : (s)->max_starts)

/* The command line: the data/layout options, the solver's options (defaults from
 * ar_solver_options_default), and what only the command has. */
typedef struct {
  ar_common_cfg c;
  ar_solver_options so;     /* as given; the driver resolves --linear-solver auto (solve_job.h) */
  const char *x0, *y0, *out, *checkpoint, *restart;
  double mem_per_rank;
  int whiten;               /* WHITEN_AUTO, _ON, _OFF */
  /* multi-start (cmd_multistart.c) */
  int starts;               /* K, or 0: auto (at most max_starts) */
  int max_starts, ranks_per_start, strategy, no_race;
  int64_t start_seed;
  double start_scale;
} solve_cfg;

#endif

/* attnreg solve --starts K (cmd_multistart.c): called by cmd_solve.c; uses the solve driver
 * (solve_job.h) and nothing of cmd_solve.c. */
#ifndef AR_MULTISTART_H
#define AR_MULTISTART_H

#include <mpi.h>

#include "options.h"
#include "solve_cli.h"

/* Collective: the multi-start ensemble of s (s->starts > 1), opts: the command line for the
 * configuration and summary.json. */
int ar_multistart(MPI_Comm world, solve_cfg *s, const ar_option *opts, int nopts);

#endif

/* The subcommands, one file each (cmd_*.c), dispatched by main.c. */
#ifndef AR_COMMANDS_H
#define AR_COMMANDS_H

#include <mpi.h>

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

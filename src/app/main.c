/* attnreg: the command-line program.  Dispatches to a subcommand; every error reaches here
 * as a code: agreed errors are printed once by rank 0 and every rank exits with the code's
 * status; an error only one rank saw is printed with its rank and aborts the job (no hang).
 * Before MPI_Init each process may re-execute itself once with the OpenBLAS kernels that fit
 * its CPU (reexec.h; ATTNREG_NO_REEXEC=1 turns it off), and on one node it tells Open MPI to
 * take its shared-memory PML without probing network libraries (launch.h; ATTNREG_NO_MPI_TUNE=1
 * turns it off). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnreg.h"
#include "commands.h"
#include "error.h"
#include "launch.h"
#include "reexec.h"

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
    "failure, 75 stopped by SIGTERM/SIGUSR1/SIGINT (after writing --checkpoint, if given).\n"
    "\n"
    "Environment: with OPENBLAS_CORETYPE unset, a process whose OpenBLAS kernels are older than its\n"
    "CPU re-executes itself once with the fitting ones after a self-check (attnreg blas --check);\n"
    "ATTNREG_NO_REEXEC=1 turns that off.  With every rank on one node and no PML chosen, attnreg sets\n"
    "OMPI_MCA_pml=ob1 (Open MPI's shared memory, without probing network libraries: 0.2 s a run);\n"
    "ATTNREG_NO_MPI_TUNE=1 turns that off.";

int main(int argc, char **argv)
{
  if (argc > 1 && !strcmp(argv[1], "blas")) return ar_cmd_blas(argc, argv); /* node-local, without MPI */
  ar_reexec_blas(argv); /* returns only if it does not re-execute */
  ar_launch_tune();     /* one node: Open MPI's shared-memory PML without probing networks */
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

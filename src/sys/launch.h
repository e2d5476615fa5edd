/* Open MPI's start-up on one node.  MPI_Init in Debian's Open MPI 4.1 probes every network
 * library it was built with (the cm PML's libfabric and PSM2 MTLs, the UCX PML) before it settles
 * on ob1 with shared memory, the only transport a single node needs: 0.22 s of each process's
 * 0.37 s MPI_Init + MPI_Finalize measured on a 2-core VM, on every run.  ar_launch_tune, called
 * by main() before MPI_Init, sets OMPI_MCA_pml=ob1 when
 *   - every rank of the job is on this node: under mpirun OMPI_COMM_WORLD_LOCAL_SIZE equals
 *     OMPI_COMM_WORLD_SIZE; under srun SLURM_STEP_NUM_NODES is 1; a singleton run (neither,
 *     and no other launcher's PMI variables) is one process;
 *   - the user chose no PML or MTL: OMPI_MCA_pml and OMPI_MCA_mtl unset or exclusion lists
 *     ("^ucx", as Debian's /etc/openmpi/openmpi-mca-params.conf has) that keep ob1, and the same
 *     for "pml" and "mtl" lines in ~/.openmpi/mca-params.conf and that file;
 *   - ATTNREG_NO_MPI_TUNE is unset (or 0).
 * Every rank sees the same variables, so every rank makes the same choice (the PML must agree).
 * Across nodes nothing changes: Open MPI picks its network as it would.  The choice and its
 * reason are kept (ATTNREG_MPI_TUNED) for the header and summary.json (ar_launch_describe). */
#ifndef AR_LAUNCH_H
#define AR_LAUNCH_H

/* A variable's value or NULL (getenv, or a table in the tests). */
typedef const char *(*ar_env_get)(const char *name, void *ctx);

/* Not collective: the reason to choose ob1 ("one node (mpirun)", "one node (srun)", "singleton"),
 * or NULL with *why_not saying why Open MPI keeps its own choice.  Reads nothing but get and, for
 * the configuration files, the file at each path of conf (NULL-terminated, may be NULL). */
const char *ar_launch_decide(ar_env_get get, void *ctx, const char *const *conf, const char **why_not);

/* Not collective, before MPI_Init: apply the decision to this process's environment. */
void ar_launch_tune(void);

/* Not collective: "pml ob1 (one node (mpirun))" or "Open MPI's own choice (<why not>)", and the
 * PML forced (NULL if none), for the header and summary.json. */
const char *ar_launch_describe(const char **pml);

#endif

/* Open MPI's PML choice on one node (launch.c), without MPI: the decision from tables of
 * environment variables and from configuration files -- ob1 for a job on one node under mpirun,
 * srun or as a singleton; Open MPI's own choice across nodes, under an unknown launcher, when the
 * user chose a PML or MTL (environment or mca-params.conf, comments and exclusion lists that keep
 * ob1 ignored) or turned it off. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "launch.h"

/* ctx: "NAME=value" strings, NULL-terminated */
static const char *table_get(const char *name, void *ctx)
{
  const size_t k = strlen(name);
  for (const char *const *e = ctx; *e; e++)
    if (!strncmp(*e, name, k) && (*e)[k] == '=') return *e + k + 1;
  return NULL;
}

static void expect(const char *const *env, const char *const *conf, const char *want, const char *label)
{
  const char *why_not = NULL, *why = ar_launch_decide(table_get, (void *)env, conf, &why_not);
  if (want) CHECK(why && !strcmp(why, want), "%s: expected ob1 (%s), got %s", label, want, why ? why : why_not);
  else CHECK(!why && why_not && *why_not, "%s: expected Open MPI's own choice, got ob1 (%s)", label, why ? why : "");
}

int main(void)
{
  const char *single[] = {"OMPI_COMM_WORLD_SIZE=4", "OMPI_COMM_WORLD_LOCAL_SIZE=4", NULL};
  const char *multi[] = {"OMPI_COMM_WORLD_SIZE=8", "OMPI_COMM_WORLD_LOCAL_SIZE=4", NULL};
  const char *nolocal[] = {"OMPI_COMM_WORLD_SIZE=8", NULL};
  const char *srun1[] = {"SLURM_PROCID=0", "SLURM_STEP_NUM_NODES=1", "PMIX_RANK=0", NULL};
  const char *srun2[] = {"SLURM_PROCID=3", "SLURM_STEP_NUM_NODES=2", NULL};
  const char *srun_nonodes[] = {"SLURM_PROCID=0", NULL};
  const char *alone[] = {"HOME=/nowhere", "SLURM_JOB_ID=7", NULL}; /* a singleton inside an allocation */
  const char *pmi[] = {"PMI_RANK=0", NULL};
  const char *pml[] = {"OMPI_COMM_WORLD_SIZE=2", "OMPI_COMM_WORLD_LOCAL_SIZE=2", "OMPI_MCA_pml=ucx", NULL};
  const char *mtl[] = {"OMPI_MCA_mtl=psm2", NULL};
  const char *off[] = {"ATTNREG_NO_MPI_TUNE=1", NULL};
  const char *off0[] = {"ATTNREG_NO_MPI_TUNE=0", NULL};
  const char *empty_pml[] = {"OMPI_MCA_pml=", NULL};
  const char *excl[] = {"OMPI_MCA_pml=^ucx,cm", "OMPI_MCA_mtl=^ofi", NULL};
  const char *excl_ob1[] = {"OMPI_MCA_pml=^ob1", NULL};
  expect(single, NULL, "one node (mpirun)", "mpirun, one node");
  expect(multi, NULL, NULL, "mpirun, two nodes");
  expect(nolocal, NULL, NULL, "mpirun without a local size");
  expect(srun1, NULL, "one node (srun)", "srun, one node");
  expect(srun2, NULL, NULL, "srun, two nodes");
  expect(srun_nonodes, NULL, NULL, "srun without a node count");
  expect(alone, NULL, "singleton", "singleton");
  expect(pmi, NULL, NULL, "an unknown launcher");
  expect(pml, NULL, NULL, "OMPI_MCA_pml set");
  expect(mtl, NULL, NULL, "OMPI_MCA_mtl set");
  expect(off, NULL, NULL, "ATTNREG_NO_MPI_TUNE=1");
  expect(off0, NULL, "singleton", "ATTNREG_NO_MPI_TUNE=0");
  expect(empty_pml, NULL, "singleton", "OMPI_MCA_pml empty");
  expect(excl, NULL, "singleton", "PML and MTL exclusion lists");
  expect(excl_ob1, NULL, NULL, "OMPI_MCA_pml excluding ob1");

  char dir[] = "/tmp/attnreg-launch-XXXXXX", f1[64], f2[64];
  CHECK(mkdtemp(dir) != NULL, "mkdtemp");
  snprintf(f1, sizeof f1, "%s/a.conf", dir), snprintf(f2, sizeof f2, "%s/b.conf", dir);
  FILE *f = fopen(f1, "w");
  fputs("# pml = ucx\nbtl = self,vader\n  pml_ucx_verbose = 0\nmtl = ^ofi\npml = ^ucx\n", f); /* Debian's */
  fclose(f);
  f = fopen(f2, "w");
  fputs("btl = ^openib\n  pml = ucx\n", f);
  fclose(f);
  const char *c1[] = {f1, "/nonexistent/mca-params.conf", NULL}, *c2[] = {f1, f2, NULL};
  expect(single, c1, "one node (mpirun)", "a conf without pml");
  expect(single, c2, NULL, "a conf with pml");
  remove(f1), remove(f2), remove(dir);
  printf("test_launch: %s (%d failed checks)\n", failures ? "FAILED" : "passed", failures);
  return failures ? 1 : 0;
}

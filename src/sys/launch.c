/* Open MPI's PML on one node (launch.h). */
#include "launch.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A value that chooses: not empty, and not an exclusion list ("^ucx", Debian's default) unless it
 * excludes ob1 itself. */
static int chooses(const char *v)
{
  while (v && (*v == ' ' || *v == '\t')) v++;
  return v && *v && *v != '\n' && (*v != '^' || strstr(v, "ob1"));
}

/* A configuration file chooses name (a line "name = value", not a comment). */
static int conf_chooses(const char *path, const char *name)
{
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  char line[1024];
  int hit = 0;
  const size_t k = strlen(name);
  while (!hit && fgets(line, sizeof line, f)) {
    const char *s = line;
    while (isspace((unsigned char)*s)) s++;
    if (strncmp(s, name, k)) continue;
    s += k;
    while (*s == ' ' || *s == '\t') s++;
    hit = *s == '=' && chooses(s + 1);
  }
  fclose(f);
  return hit;
}

static int set(const char *v) { return v && *v; }

const char *ar_launch_decide(ar_env_get get, void *ctx, const char *const *conf, const char **why_not)
{
  const char *off = get("ATTNREG_NO_MPI_TUNE", ctx);
  if (set(off) && strcmp(off, "0")) return *why_not = "ATTNREG_NO_MPI_TUNE is set", NULL;
  if (chooses(get("OMPI_MCA_pml", ctx)) || chooses(get("OMPI_MCA_mtl", ctx)))
    return *why_not = "OMPI_MCA_pml or OMPI_MCA_mtl is set", NULL;
  for (int i = 0; conf && conf[i]; i++)
    if (conf_chooses(conf[i], "pml") || conf_chooses(conf[i], "mtl")) return *why_not = "an mca-params.conf sets pml or mtl", NULL;
  const char *size = get("OMPI_COMM_WORLD_SIZE", ctx), *local = get("OMPI_COMM_WORLD_LOCAL_SIZE", ctx);
  if (set(size)) {
    if (set(local) && atol(size) > 0 && atol(local) == atol(size)) return "one node (mpirun)";
    return *why_not = "the ranks span several nodes", NULL;
  }
  const char *nodes = get("SLURM_STEP_NUM_NODES", ctx);
  if (set(get("SLURM_PROCID", ctx)) || set(nodes)) {
    if (set(nodes) && atol(nodes) == 1) return "one node (srun)";
    return *why_not = "the step spans several nodes", NULL;
  }
  if (set(get("PMIX_RANK", ctx)) || set(get("PMI_RANK", ctx)))
    return *why_not = "an unknown launcher", NULL;
  return "singleton";
}

static const char *env_get(const char *name, void *ctx)
{
  (void)ctx;
  return getenv(name);
}

void ar_launch_tune(void)
{
  if (getenv("ATTNREG_MPI_TUNED")) return; /* decided already (before a re-exec) */
  char user[1024] = "";
  const char *home = getenv("HOME");
  if (home) snprintf(user, sizeof user, "%s/.openmpi/mca-params.conf", home);
  const char *conf[] = {user, "/etc/openmpi/openmpi-mca-params.conf", NULL}, *why_not = NULL;
  const char *why = ar_launch_decide(env_get, NULL, conf, &why_not);
  char v[160];
  snprintf(v, sizeof v, "%s%s", why ? "ob1: " : "-: ", why ? why : why_not);
  if (why) setenv("OMPI_MCA_pml", "ob1", 0);
  setenv("ATTNREG_MPI_TUNED", v, 1);
}

const char *ar_launch_describe(const char **pml)
{
  static char s[200];
  const char *t = getenv("ATTNREG_MPI_TUNED");
  *pml = NULL;
  if (t && !strncmp(t, "ob1: ", 5)) {
    *pml = "ob1";
    snprintf(s, sizeof s, "pml ob1, %s (ATTNREG_NO_MPI_TUNE=1 keeps Open MPI's own choice)", t + 5);
  } else {
    snprintf(s, sizeof s, "Open MPI's own choice (%s)", t && !strncmp(t, "-: ", 3) ? t + 3 : "not decided");
  }
  return s;
}

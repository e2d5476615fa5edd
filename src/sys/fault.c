#include "fault.h"

#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#define AR_FAULT_SITES 16

static struct {
  char name[32];
  int calls;
} g_sites[AR_FAULT_SITES];
static int g_nsites;

/* The call count of site (registered on its first call). */
static int count_call(const char *site)
{
  for (int i = 0; i < g_nsites; i++)
    if (!strcmp(g_sites[i].name, site)) return ++g_sites[i].calls;
  if (g_nsites == AR_FAULT_SITES) return 0;
  strncpy(g_sites[g_nsites].name, site, sizeof g_sites[0].name - 1);
  g_sites[g_nsites].calls = 1;
  return g_sites[g_nsites++].calls;
}

int ar_fault(const char *site)
{
  const char *spec = getenv("ATTNREG_FAULT");
  if (!spec || !*spec) return 0;
  const int call = count_call(site);
  int rank = -1, init = 0;
  MPI_Initialized(&init);
  if (init) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const size_t len = strlen(site);
  for (const char *s = spec; s && *s; s = strchr(s, ',') ? strchr(s, ',') + 1 : NULL) {
    if (strncmp(s, site, len) != 0 || s[len] != ':') continue;
    char *end;
    long k = strtol(s + len + 1, &end, 10);
    long r = *end == ':' ? strtol(end + 1, NULL, 10) : -1;
    if (k == call && (r < 0 || r == rank)) return 1;
  }
  return 0;
}

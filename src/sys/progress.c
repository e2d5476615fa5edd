/* Progress lines for long phases (attnreg.h, ar_progress): a long evaluation or Newton
 * iteration says on stderr how far it is and about how long is left, at most every few
 * seconds and only once it has run for a while; short runs print nothing. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnreg.h"
#include "timing.h"

struct ar_progress_s {
  FILE *out;
  double first_after, every;  /* seconds: quiet for the first first_after, then at most every */
  double t_start, t_phase, t_last;
  char what[64], phase[64];
};

ar_progress *ar_progress_create(FILE *out, double first_after, double every)
{
  ar_progress *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->out = out, p->first_after = first_after, p->every = every;
  /* tests make it talk at once: ATTNREG_PROGRESS="FIRST,EVERY" (seconds) */
  const char *env = getenv("ATTNREG_PROGRESS");
  if (env) sscanf(env, "%lf,%lf", &p->first_after, &p->every);
  p->t_start = p->t_phase = ar_wtime();
  p->t_last = -1e300;
  return p;
}

void ar_progress_destroy(ar_progress **p)
{
  free(*p);
  *p = NULL;
}

void ar_progress_start(ar_progress *p, const char *what)
{
  if (!p) return;
  snprintf(p->what, sizeof p->what, "%s", what);
  p->phase[0] = '\0';
  p->t_start = p->t_phase = ar_wtime();
  p->t_last = -1e300;
}

void ar_progress_phase(ar_progress *p, const char *phase, double fraction)
{
  if (!p) return;
  const double now = ar_wtime();
  if (strcmp(phase, p->phase) != 0) {
    snprintf(p->phase, sizeof p->phase, "%s", phase);
    p->t_phase = now;
  }
  if (now - p->t_start < p->first_after || now - p->t_last < p->every) return;
  p->t_last = now;
  const double in_phase = now - p->t_phase;
  /* the estimate is the phase's own (its share done so far): the unit's time is printed apart */
  if (fraction > 0 && fraction < 1)
    fprintf(p->out, "attnreg: %s (%.1f s so far): %s %.0f%% done, about %.0f s left of it\n", p->what,
            now - p->t_start, phase, 100 * fraction, in_phase / fraction * (1 - fraction));
  else
    fprintf(p->out, "attnreg: %s (%.1f s so far): %s\n", p->what, now - p->t_start, phase);
  fflush(p->out);
}

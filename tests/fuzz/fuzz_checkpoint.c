/* libFuzzer target: the checkpoint reader must refuse anything malformed without crashing,
 * and what it accepts must be self-consistent and written back byte for byte.  Each input is
 * parsed as it is and again with its checksum repaired, so that mutations reach the structure
 * behind the checksum.  Also built without libFuzzer (replay.c) to replay the seeds in CTest. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "error.h"

int ar_fuzz_accepted; /* inputs accepted as given (replay.c reports them) */

static int parse(const uint8_t *data, size_t size)
{
  ar_checkpoint c;
  ar_error_clear();
  if (ar_checkpoint_parse(data, size, "fuzz.ckpt", &c) != AR_OK) return 0;
  const int D = c.id.d * c.id.d + c.id.d * c.id.m;
  if (c.kind == AR_CKPT_SOLVE) {
    const ar_solver_state *s = &c.st;
    if (s->D != D || !s->z || !s->zf || !s->history) abort();
    for (int i = 0; i < D; i++)
      if (!isfinite(s->z[i]) || !isfinite(s->zf[i])) abort();
    if (s->nchord < 0 || s->nchord > s->iter || (s->h_fresh != 0 && s->h_fresh != 1)) abort();
    for (int i = 0; i <= s->iter; i++)
      if (s->history[i].iter != i) abort();
  } else if (c.kind == AR_CKPT_ENSEMBLE) {
    const ar_ckpt_ensemble *e = &c.ens;
    if (!e->rows || !e->z || e->best_k < -1 || e->best_k >= e->id.starts || (e->best_k >= 0) != (e->nhist > 0)) abort();
    if (e->best_k >= 0 && e->rows[e->best_k].done != 1) abort();
    for (int i = 0; i < D; i++)
      if (!isfinite(e->z[i])) abort();
    for (int k = e->rounds_done * e->id.round; k < e->id.starts; k++)
      if (e->rows[k].done != 0) abort();
  } else {
    abort();
  }
  /* what was accepted is written back exactly */
  unsigned char *buf;
  size_t len;
  if (ar_checkpoint_serialize(&c, &buf, &len) == AR_OK) {
    if (len != size || memcmp(buf, data, size)) abort();
    free(buf);
  }
  ar_checkpoint_free(&c);
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  ar_fuzz_accepted += parse(data, size);
  if (size < 16) return 0;
  uint8_t *copy = malloc(size);
  memcpy(copy, data, size);
  uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a, as checkpoint.c */
  for (size_t i = 0; i + 8 < size; i++) h = (h ^ copy[i]) * 0x100000001b3ULL;
  memcpy(copy + size - 8, &h, 8);
  parse(copy, size);
  free(copy);
  return 0;
}

/* libFuzzer target: the checkpoint reader must refuse anything malformed without crashing,
 * and what it accepts must be self-consistent.  Each input is parsed as it is and again with
 * its checksum repaired, so that mutations reach the structure behind the checksum. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "error.h"

static void parse(const uint8_t *data, size_t size)
{
  ar_checkpoint c;
  ar_error_clear();
  if (ar_checkpoint_parse(data, size, "fuzz.ckpt", &c) == AR_OK) {
    if (c.st.D != c.d * c.d + c.d * c.m || !c.st.z || !c.st.zf || !c.st.history) abort();
    for (int i = 0; i < c.st.D; i++)
      if (!isfinite(c.st.z[i]) || !isfinite(c.st.zf[i])) abort();
    if (c.st.nchord < 0 || c.st.nchord > c.st.iter || (c.st.h_fresh != 0 && c.st.h_fresh != 1)) abort();
    ar_checkpoint_free(&c);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  parse(data, size);
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

/* libFuzzer target: the npy header parser must never crash, hang or read out of bounds,
 * and whatever it accepts must describe a sane array.  Also built without libFuzzer (replay.c). */
#include <stdint.h>
#include <stdlib.h>

#include "error.h"
#include "npy.h"

int ar_fuzz_accepted; /* inputs accepted (replay.c reports them) */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  ar_npy_header h;
  ar_error_clear();
  if (ar_npy_parse_header((const char *)data, size, "fuzz.npy", &h) == AR_OK) {
    ar_fuzz_accepted++;
    if (h.rows < 0 || h.cols < 0 || (h.elem_size != 4 && h.elem_size != 8) || h.data_offset > (int64_t)size ||
        (h.ndim != 1 && h.ndim != 2))
      abort();
  }
  return 0;
}

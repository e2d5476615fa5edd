/* Stable row softmax (softmax.c). */
#ifndef AR_SOFTMAX_H
#define AR_SOFTMAX_H

#include <stdint.h>

/* Not collective: softmax of each of the r rows (length n) of s, in place. */
void ar_softmax_rows(double *s, int64_t r, int64_t n);
/* Not collective: the exp used by ar_softmax_rows, for x <= 0 (tests). */
double ar_exp_nonpositive(double x);
/* Not collective, for tests: use the variant for instruction set isa ("avx512f", "avx2",
 * "default") from now on; 0 (and no change) if it was not built or this CPU cannot run it. */
int ar_softmax_use(const char *isa);
/* Not collective: the instruction set of the variant in use. */
const char *ar_softmax_isa(void);

#endif

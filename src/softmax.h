/* Stable row softmax (softmax.c). */
#ifndef AR_SOFTMAX_H
#define AR_SOFTMAX_H

#include <stdint.h>

/* Not collective: softmax of each of the r rows (length n) of s, in place. */
void ar_softmax_rows(double *s, int64_t r, int64_t n);
/* Not collective: the exp used by ar_softmax_rows, for x <= 0 (tests). */
double ar_exp_nonpositive(double x);

#endif

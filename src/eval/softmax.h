/* Stable row softmax (softmax.c). */
#ifndef AR_SOFTMAX_H
#define AR_SOFTMAX_H

#include <stdint.h>

/* Not collective: softmax of each of the r rows (length n) of s, in place. */
void ar_softmax_rows(double *s, int64_t r, int64_t n);
/* Not collective: the same, and lse[j] = log sum_l exp(s_jl) of each row (lse may be NULL). */
void ar_softmax_rows_lse(double *s, int64_t r, int64_t n, double *lse);
/* Not collective: one chunk (c columns) of an online softmax over r rows.  With the running
 * row maxima rmax and sums rsum of exp(s - rmax) over the earlier chunks: the row becomes
 * exp(s - new max), rsum and rmax are updated, and rescale[j] = exp(old max - new max) is the
 * factor for the row's earlier accumulators (0 when there were none: rmax = -inf). */
void ar_softmax_online(double *s, int64_t r, int64_t c, double *rmax, double *rsum, double *rescale);
/* Not collective: each row j (length c) of s becomes exp(s - lse[j]): the softmax
 * probabilities again, from the saved log-sum-exp. */
void ar_softmax_exp_shifted(double *s, int64_t r, int64_t c, const double *lse);
/* Not collective: the exp used by ar_softmax_rows, for x <= 0 (tests). */
double ar_exp_nonpositive(double x);
/* Not collective, for tests: use the variant for instruction set isa ("avx512f", "avx2",
 * "default") from now on; 0 (and no change) if it was not built or this CPU cannot run it. */
int ar_softmax_use(const char *isa);
/* Not collective: the instruction set of the variant in use. */
const char *ar_softmax_isa(void);

#endif

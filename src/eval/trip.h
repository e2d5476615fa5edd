/* The ring trip (trip.c): one walk of the key blocks around the ring, each cut into chunks and
 * this rank's query rows into tiles, a tile cut into boxes under a mask.  The data movement is
 * ring.c's, the kernels the callers' (eval.c: forward and backward passes; hessvec.c: the
 * Hessian-vector products' two trips and the preconditioner's). */
#ifndef AR_TRIP_H
#define AR_TRIP_H

#include "eval_impl.h"

/* One trip of the ring over the key blocks: for every chunk of key rows in hand (kv: cr rows
 * of ev->width doubles, A2 first), chunk() once, then tile() for each tile of query rows
 * [j0, j0 + r); between tiles the ring's transfer is progressed and the work counted.  A
 * caller embeds ar_trip first in its own struct. */
typedef struct ar_trip_s {
  ar_eval ev;
  double *flops;
  void (*chunk)(struct ar_trip_s *t, const double *kv, int64_t cr); /* may be NULL */
  /* rows [j0, j0 + r) against the keys kv (cr rows) that start k0 rows into the chunk (k0 > 0
   * only for a box of a masked tile: chunk tables are offset by k0) */
  void (*tile)(struct ar_trip_s *t, int64_t j0, int64_t r, int64_t k0, const double *kv, int64_t cr);
} ar_trip;
int ar_trip_run(ar_trip *t); /* collective */

/* Collective: what a trip computes, from the mask alone (no data), into ev->work and
 * ev->units_trip: boxes, their area, the unmasked pairs, how evenly the ring's members share
 * each step. */
int ar_trip_dry_run(ar_eval ev);

/* Not collective: the logits S = (A1 X) A2^T of rows [j0, j0 + r) against a chunk (the box in
 * hand, masked entries -inf), into ev->scores (r x cr); with probs, F = exp(S - lse) from the
 * saved log-sum-exp (masked entries exactly 0). */
void ar_trip_logits(ar_eval ev, int64_t j0, int64_t r, const double *kv, int64_t cr, int probs, double *flops);

/* Not collective: one unit of work done (a tile against a chunk, or a tile's Hessian parts):
 * tell the progress reporter. */
void ar_trip_tick(ar_eval ev);

#endif

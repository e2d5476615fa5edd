/* The ring trip (trip.h): the key blocks walked around the ring (ring.c moves them), each cut
 * into chunks of ev->chunk rows and this rank's query rows into tiles of ev->tile rows; under a
 * mask a tile against a chunk is cut into boxes of the rows whose keys meet the chunk and the
 * keys they may see (docs/math.md §8, docs/layout.md §6), and a chunk no box needs costs
 * nothing.  The callers' kernels run per chunk and per tile (or box); the logits of a tile
 * against a chunk, masked entries -inf, are computed here for all of them. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "softmax.h"
#include "trip.h"

/* ---- the mask (docs/math.md §8, docs/layout.md §6) */

/* Rows of a block (sorted ranges of global rows) below global row x. */
static int64_t rows_below(const int64_t *rg, int nr, int64_t x)
{
  int64_t c = 0;
  for (int i = 0; i < nr && x > rg[2 * i]; i++) c += (x < rg[2 * i + 1] ? x : rg[2 * i + 1]) - rg[2 * i];
  return c;
}

/* The keys each local row may see in the block of ring member `owner`, block-local. */
static void block_bounds(ar_eval ev, int owner)
{
  ar_problem p = ev->p;
  const int64_t *rg;
  const int nr = ar_problem_rank_ranges(p, p->layout.group_first[p->layout.group[p->rank]] + owner, &rg);
  for (int64_t j = 0; j < p->nloc; j++)
    ev->blk_lo[j] = rows_below(rg, nr, p->key_lo[j]), ev->blk_hi[j] = rows_below(rg, nr, p->key_hi[j]);
}

/* The boxes of tile rows [j0, j0 + r) against block keys [c0, c1): the rows whose keys meet
 * the chunk, in runs that are cut where a row's keys do not overlap the box's (the next
 * sequence), where a box would hold more than twice as many entries as unmasked ones
 * (FlashAttention's diagonal tiles are at that ratio), or at a row that sees nothing here.
 * Returns how many (at most r). */
static int tile_boxes(ar_eval ev, int64_t j0, int64_t r, int64_t c0, int64_t c1, struct ar_box_s *bx)
{
  int nb = 0;
  int64_t j = j0;
  const int64_t end = j0 + r;
  while (j < end) {
    int64_t lo = ev->blk_lo[j] > c0 ? ev->blk_lo[j] : c0, hi = ev->blk_hi[j] < c1 ? ev->blk_hi[j] : c1;
    if (lo >= hi) {
      j++;
      continue;
    }
    int64_t a = j++, bl = lo, bh = hi;
    double un = (double)(hi - lo);
    int partial = 0;
    while (j < end) {
      const int64_t l2 = ev->blk_lo[j] > c0 ? ev->blk_lo[j] : c0, h2 = ev->blk_hi[j] < c1 ? ev->blk_hi[j] : c1;
      if (l2 >= h2) break;
      const int64_t nl = l2 < bl ? l2 : bl, nh = h2 > bh ? h2 : bh, rows = j - a + 1;
      if (l2 >= bh || (rows > 8 && (double)rows * (double)(nh - nl) > 2 * (un + (double)(h2 - l2)))) break;
      partial |= nl != bl || nh != bh || l2 != nl || h2 != nh;
      bl = nl, bh = nh, un += (double)(h2 - l2), j++;
    }
    bx[nb++] = (struct ar_box_s){a, j - a, bl, bh - bl, partial};
  }
  return nb;
}

/* ---- the work, counted before any trip */

int ar_trip_dry_run(ar_eval ev)
{
  ar_problem p = ev->p;
  ar_eval_work *w = &ev->work;
  const int G = p->ring_size;
  double *step = calloc((size_t)G * 2 + 2, sizeof(double));
  int err = step ? AR_OK : AR_ERROR(AR_ERR_MEM, "out of memory");
  ar_layout_info li;
  ar_problem_layout_info(p, &li);
  w->pairs = p->pairs, w->pairs_total = li.pairs;
  ev->units_trip = 0;
  const int64_t *brows = p->layout.rows + p->layout.group_first[p->layout.group[p->rank]];
  for (int s = 0; s < G && !err; s++) {
    const int owner = (p->ring_rank - s + G) % G; /* the block in hand at step s */
    if (!p->masked) {
      const double tiles = ceil((double)p->nloc / ev->tile), chunks = ceil((double)brows[owner] / ev->chunk);
      step[s] = (double)p->nloc * brows[owner];
      w->boxes += tiles * chunks, ev->units_trip += tiles * chunks;
      continue;
    }
    block_bounds(ev, owner);
    for (int64_t c0 = 0; c0 < brows[owner]; c0 += ev->chunk) {
      const int64_t c1 = c0 + ev->chunk < brows[owner] ? c0 + ev->chunk : brows[owner];
      for (int64_t j0 = 0; j0 < p->nloc; j0 += ev->tile) {
        const int nb = tile_boxes(ev, j0, p->nloc - j0 < ev->tile ? p->nloc - j0 : ev->tile, c0, c1, ev->boxes);
        for (int b = 0; b < nb; b++) step[s] += (double)ev->boxes[b].r * ev->boxes[b].kr;
        w->boxes += nb, ev->units_trip += nb > 0;
      }
    }
  }
  for (int s = 0; s < G; s++) w->area += step[s];
  if (!err) { /* over the ring's steps: the largest and the summed area of each */
    memcpy(step + G, step, sizeof(double) * G);
    AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, step, G, MPI_DOUBLE, MPI_MAX, p->ring));
    AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, step + G, G, MPI_DOUBLE, MPI_SUM, p->ring));
    double smax = 0, savg = 0;
    for (int s = 0; s < G; s++) smax += step[s], savg += step[G + s] / G;
    w->step_efficiency = smax > 0 ? savg / smax : 1;
    double a[2] = {w->area, w->area};
    AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, a, 1, MPI_DOUBLE, MPI_MAX, p->comm));
    AR_CALL_MPI(MPI_Allreduce(MPI_IN_PLACE, a + 1, 1, MPI_DOUBLE, MPI_SUM, p->comm));
    w->area_max = a[0], w->area_avg = a[1] / p->size;
  }
  free(step);
  return err;
}

/* ---- the trip */

void ar_trip_tick(ar_eval ev)
{
  if (!ev->prog) return;
  ev->units_done += 1;
  ar_progress_phase(ev->prog, "evaluation", ev->units_done / ev->units_total);
}

int ar_trip_run(ar_trip *t)
{
  ar_eval ev = t->ev;
  ar_problem p = ev->p;
  AR_CALL(ar_ring_start(ev->ring, ev->kv_own ? ev->kv_own : p->a2));
  while (ar_ring_active(ev->ring)) {
    int64_t first, rows;
    int owner;
    const double *block = ar_ring_block(ev->ring, &first, &rows, &owner);
    if (p->masked) block_bounds(ev, owner);
    for (int64_t c0 = 0; c0 < rows; c0 += ev->chunk) {
      const int64_t cr = rows - c0 < ev->chunk ? rows - c0 : ev->chunk;
      const double *kv = block + c0 * ev->width;
      int chunk_ready = 0;
      for (int64_t j0 = 0; j0 < p->nloc; j0 += ev->tile) {
        const int64_t r = p->nloc - j0 < ev->tile ? p->nloc - j0 : ev->tile;
        if (!p->masked) {
          if (!chunk_ready && t->chunk) t->chunk(t, kv, cr);
          chunk_ready = 1, ev->box_kb = c0, ev->box_partial = 0;
          t->tile(t, j0, r, 0, kv, cr);
        } else {
          const int nb = tile_boxes(ev, j0, r, c0, c0 + cr, ev->boxes);
          for (int b = 0; b < nb; b++) { /* a chunk no box needs costs nothing, not even its tables */
            const struct ar_box_s *x = &ev->boxes[b];
            if (!chunk_ready && t->chunk) t->chunk(t, kv, cr);
            chunk_ready = 1, ev->box_kb = x->k0, ev->box_partial = x->partial;
            t->tile(t, x->j0, x->r, x->k0 - c0, block + x->k0 * ev->width, x->kr);
          }
          if (nb == 0) continue;
        }
        ar_ring_progress(ev->ring);
        ar_trip_tick(ev);
      }
    }
    AR_CALL(ar_ring_next(ev->ring));
  }
  return AR_OK;
}

void ar_trip_logits(ar_eval ev, int64_t j0, int64_t r, const double *kv, int64_t cr, int probs, double *flops)
{
  const int d = ev->p->d;
  ar_gemm(CblasNoTrans, CblasTrans, r, cr, d, 1.0, ev->a1x + j0 * d, d, kv, ev->width, 0.0, ev->scores, cr, flops);
  if (ev->box_partial) /* the keys a row may not see: -inf, so that their exponentials are 0 */
    for (int64_t j = 0; j < r; j++) {
      double *row = ev->scores + j * cr;
      const int64_t lo = ev->blk_lo[j0 + j] - ev->box_kb, hi = ev->blk_hi[j0 + j] - ev->box_kb;
      for (int64_t l = 0; l < lo && l < cr; l++) row[l] = -INFINITY;
      for (int64_t l = hi > 0 ? hi : 0; l < cr; l++) row[l] = -INFINITY;
    }
  if (probs) ar_softmax_exp_shifted(ev->scores, r, cr, ev->lse + j0), ev->exps += (double)r * (double)cr;
}

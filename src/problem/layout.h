/* The row layout: which global rows each rank holds, and which ranks form a ring (layout.c,
 * docs/layout.md §6).
 *
 * Without a mask the layout is today's contiguous partition and all ranks are one ring.  With
 * segments or a causal mask, a query row sees only keys of its own segment, so the ranks are
 * cut into groups that never exchange key blocks: a segment longer than one rank's share gets
 * a group of its own, cut into 2k zigzag pieces when causal (member i holds pieces i and
 * 2k-1-i, so every member does the same masked work at every step of the group's ring) or k
 * contiguous ones; runs of shorter segments are packed whole, contiguously, one group of one
 * rank each.  Ranks are apportioned to the groups by the larger of their share of the masked
 * work and their share of the rows, so both work and memory per rank stay near 1/P of the
 * whole.  Everything here is a pure function of (n, mask, P): every rank computes the same
 * layout without communication, and `attnreg plan` computes it for any P. */
#ifndef AR_LAYOUT_H
#define AR_LAYOUT_H

#include <stdint.h>

#include "attnreg.h"

typedef struct {
  int64_t n;
  int size;           /* ranks */
  int *first;         /* size + 1: rank r's ranges are ranges[2 first[r] .. 2 first[r + 1]) */
  int64_t *ranges;    /* [g0, g1) pairs of global rows, sorted within each rank */
  int64_t *rows;      /* size: rows of each rank */
  int *group;         /* size: the group of each rank */
  int ngroups;
  int *group_first;   /* ngroups: first rank (the ranks of a group are consecutive) */
  int *group_size;    /* ngroups */
  int zigzag;         /* some group holds a causal segment in zigzag pieces */
} ar_layout;

/* Not collective: the layout of n rows with mask m (NULL or trivial: contiguous) on size ranks. */
int ar_layout_make(int64_t n, const ar_mask *m, int size, ar_layout *L);
void ar_layout_free(ar_layout *L);

/* Not collective: the masked work (query-key pairs that are not masked) of global rows [a, b),
 * all in segment [o0, o1). */
double ar_mask_pairs(int64_t a, int64_t b, int64_t o0, int64_t o1, int causal);
/* Not collective: the segment holding global row g (offsets of K segments; K = 0: one). */
int64_t ar_mask_segment(const ar_mask *m, int64_t g);

#endif

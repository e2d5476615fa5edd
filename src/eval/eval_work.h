/* The evaluator's work arrays, listed once (issue 20, item 3).  Each list entry is
 *
 *   X(owner, type, name, bucket, when, count, cg)
 *
 * owner   where the pointer lives: ev (struct ar_eval_s, eval_impl.h), parts (its ar_hess_parts,
 *         problem_impl.h) or hv (struct ar_hessvec_s, hessvec.c)
 * type    element type; name: the field
 * bucket  the term of the plan's memory model (plan.c: mem_ring, mem_rows, ...) it belongs to
 * when    whether it is allocated at all (else the pointer stays NULL)
 * count   elements allocated (0: one, so that the pointer is not NULL)
 * cg      elements the matrix-free method touches (0: none; the pages of a mapping are faulted
 *         in only when touched, and the plan models that run's RSS with these)
 *
 * The sizes are plain numbers, named by AR_WORK_LOCALS from an ar_work_sizes, so that eval.c and
 * hessvec.c (which allocate and free by the lists and declare the struct fields from them) and
 * plan.c (which sums them without an evaluator) read the same expressions.  Adding an array is
 * one line here; tests/test_evalmem.c compares what the evaluator allocates with the plan. */
#ifndef AR_EVAL_WORK_H
#define AR_EVAL_WORK_H

#include <stdint.h>

typedef struct {
  int64_t nl, t, c; /* this rank's rows, query rows per tile, key rows per chunk */
  int d, m;
  int w;            /* ring row: 2d ([A2 | A3]), or d when A3 = A2 */
  int masked;       /* segments or causal: per-row key bounds and a tile's boxes */
} ar_work_sizes;

/* The names the lists' expressions use: npair symmetric pairs, the rows of the two tables. */
#define AR_WORK_LOCALS(z)                                                                          \
  const int64_t nl = (z).nl, t = (z).t, c = (z).c;                                                 \
  const int d = (z).d, m = (z).m, w = (z).w, masked = (z).masked, np = d * (d + 1) / 2;           \
  const int ld_fwd = 2 * d + d * d, ld_bwd = d + np;                                               \
  (void)nl, (void)t, (void)c, (void)d, (void)m, (void)w, (void)masked, (void)np, (void)ld_fwd, (void)ld_bwd

/* A box of a masked tile: rows [j0, j0 + r) against block keys [k0, k0 + kr); partial: some
 * entries masked (trip.c cuts them). */
struct ar_box_s {
  int64_t j0, r, k0, kr;
  int partial;
};

/* The memory model's terms (ar_plan's mem_ring, mem_rows, mem_chunk, mem_tiles, mem_parts). */
enum { AR_WORK_RING, AR_WORK_ROWS, AR_WORK_CHUNK, AR_WORK_TILES, AR_WORK_PARTS, AR_WORK_NBUCKETS };

/* clang-format off */
#define AR_EVAL_WORK(X)                                                                                             \
  /* this rank's [A2 | A3] rows for the ring (A3 = A2: none, A2 itself travels) */                                  \
  X(ev, double, kv_own, AR_WORK_RING, w == 2 * d, nl * w, nl * w)                                                   \
  /* one row each for this rank's query rows */                                                                     \
  X(ev, double, a1x, AR_WORK_ROWS, 1, nl * d, nl * d)                 /* A1 X */                                      \
  X(ev, double, fwd, AR_WORK_ROWS, 1, nl * ld_fwd, nl * d)            /* F [A3 | A2 | R23] = [P | beta | F R23] */    \
  X(ev, double, bwd, AR_WORK_ROWS, 1, nl * ld_bwd, nl * d)            /* W [A2 | R22]; GN, gradient: W A2 */          \
  X(ev, double, rmax, AR_WORK_ROWS, 1, nl, nl)                        /* online softmax: running max, */              \
  X(ev, double, rsum, AR_WORK_ROWS, 1, nl, nl)                        /* sum of exp(s - max), */                      \
  X(ev, double, lse, AR_WORK_ROWS, 1, nl, nl)                         /* log-sum-exp */                               \
  X(ev, double, resid, AR_WORK_ROWS, 1, nl * m, nl * m)               /* C = P Y - B */                               \
  X(ev, double, fu, AR_WORK_ROWS, 1, nl, nl)                          /* fu_j = f_j . u_j */                          \
  /* the mask (docs/math.md §8): per local row its keys [lo, hi) in the block in hand; a tile's boxes */            \
  X(ev, int64_t, blk_lo, AR_WORK_ROWS, masked, nl, nl)                                                              \
  X(ev, int64_t, blk_hi, AR_WORK_ROWS, masked, nl, nl)                                                              \
  X(ev, struct ar_box_s, boxes, AR_WORK_ROWS, masked, t, t)                                                         \
  /* one row each for the key rows of a chunk */                                                                    \
  X(ev, double, tab_fwd, AR_WORK_CHUNK, 1, c * ld_fwd, 0)             /* [A3 | A2 | R23], R23[l,(q,k)] = a2_lq a3_lk */ \
  X(ev, double, tab_bwd, AR_WORK_CHUNK, 1, c * ld_bwd, 0)             /* [A2 | R22], R22[l,{q<=q'}] = a2_lq a2_lq' */ \
  X(ev, double, vals, AR_WORK_CHUNK, 1, c * m, c * m)                 /* V = A3 Y */                                  \
  /* a tile against a chunk */                                                                                      \
  X(ev, double, scores, AR_WORK_TILES, 1, t * c, t * c)               /* S, then exp(S - max) or F, then W */         \
  X(ev, double, cvt, AR_WORK_TILES, 1, t * c, t * c)                  /* U = C V^T */                                 \
  X(ev, double, rescale, AR_WORK_TILES, 1, t, t)                      /* exp(old max - new max) per row */            \
  /* a tile of rows: the Hessian parts of docs/math.md §3 */                                                        \
  X(ev, double, E, AR_WORK_TILES, 1, t * d * d, 0)                                                                  \
  X(ev, double, M, AR_WORK_TILES, 1, t * d * m, 0)                                                                  \
  X(ev, double, MMt, AR_WORK_TILES, 1, d * d, 0)                                                                    \
  X(ev, double, alpha, AR_WORK_TILES, 1, t * d, 0)                                                                  \
  X(ev, double, Npair, AR_WORK_TILES, 1, t * np, 0)                                                                 \
  X(ev, double, Kpair, AR_WORK_TILES, 1, t * np, 0)                                                                 \
  X(ev, double, a1c, AR_WORK_TILES, 1, t * d * m, 0)                                                                \
  X(ev, double, a1p, AR_WORK_TILES, 1, t * d * d, 0)                                                                \
  /* this rank's Hessian parts (hessian.c reduces them), the reduced sums, the point */                             \
  X(parts, double, hpair, AR_WORK_PARTS, 1, (int64_t)np * np, 0)                                                    \
  X(parts, double, t1, AR_WORK_PARTS, 1, (int64_t)d * m * d * d, 0)                                                 \
  X(parts, double, t2, AR_WORK_PARTS, 1, (int64_t)d * d * d * m, 0)                                                 \
  X(parts, double, ptp, AR_WORK_PARTS, 1, d * d, 0)                                                                 \
  X(ev, double, sums, AR_WORK_PARTS, 1, 1 + 2 * d * d + d * m, 1 + 2 * d * d + d * m) /* L, grad_X, grad_Y, P^T P */ \
  X(ev, double, at, AR_WORK_PARTS, 1, d * d + d * m, d * d + d * m)   /* the point (X, Y) of the per-row state */

/* The Hessian-vector products' and the preconditioner's (hessvec.c), made at the first of them:
 * only the matrix-free method has them (cg = count). */
#define AR_HESSVEC_WORK(X)                                                                                          \
  X(hv, double, a1dx, AR_WORK_ROWS, 1, nl * d, nl * d)                /* per local row: A1 dX, */                     \
  X(hv, double, pdot, AR_WORK_ROWS, 1, nl * d, nl * d)                /* dP, */                                       \
  X(hv, double, sig, AR_WORK_ROWS, 1, nl, nl)                         /* sigma, */                                    \
  X(hv, double, cdot, AR_WORK_ROWS, 1, nl * m, nl * m)                /* dC, */                                       \
  X(hv, double, fudot, AR_WORK_ROWS, 1, nl, nl)                       /* dfu, */                                      \
  X(hv, double, wdot, AR_WORK_ROWS, 1, nl * d, nl * d)                /* dW A2 */                                     \
  X(hv, double, kf, AR_WORK_ROWS, 1, nl * (d + d * m), nl * (d + d * m)) /* preconditioner: F [A2 | A2 (x) V] */     \
  X(hv, double, sdot, AR_WORK_TILES, 1, t * c, t * c)                 /* a tile against a chunk: dS */                \
  X(hv, double, vdot, AR_WORK_CHUNK, 1, c * m, c * m)                 /* a chunk: A3 dY, */                           \
  X(hv, double, tab_pre, AR_WORK_CHUNK, 1, c * (d + d * m), c * (d + d * m)) /* [A2 | A2 (x) V] per key row */
/* clang-format on */

/* How the lists' pointers are declared and reached from their owner (e: the evaluator, or the
 * Hessian-vector struct for hv).  parts' fields are declared by ar_hess_parts. */
#define AR_WORK_DECL_ev(type, name) type *name;
#define AR_WORK_DECL_parts(type, name)
#define AR_WORK_DECL_hv(type, name) type *name;
#define AR_WORK_AT_ev(e, name) ((e)->name)
#define AR_WORK_AT_parts(e, name) ((e)->parts.name)
#define AR_WORK_AT_hv(e, name) ((e)->name)
#define AR_WORK_DECLARE(owner, type, name, bucket, when, count, cg) AR_WORK_DECL_##owner(type, name)

/* Bytes the arrays of a list take, by bucket, placed as ar_work_alloc places them (memory.c):
 * AR_WORK_EVAL every array of AR_EVAL_WORK at its count, AR_WORK_EVAL_CG those the matrix-free
 * method touches (cg), AR_WORK_HESSVEC those of AR_HESSVEC_WORK.  Not collective (plan.c). */
enum { AR_WORK_EVAL, AR_WORK_EVAL_CG, AR_WORK_HESSVEC };
void ar_work_model(const ar_work_sizes *z, int list, double bytes[AR_WORK_NBUCKETS]);

#endif

/* The ring: key/value row blocks travelling around the ranks (docs/layout.md).
 *
 * Block b is the rows of member b of comm (rows[b] of them, `width` doubles per row): with a
 * mask, comm is one group of the row layout (layout.h), whose members exchange key blocks.  In a
 * trip, rank r holds block (r - s) mod P at step s = 0 .. P-1: its own at step 0, then the
 * block its left neighbour held.  While a block is being computed on, it is already on its way
 * to the right neighbour and the next one is arriving from the left (non-blocking send and
 * receive into the second of two buffers); ar_ring_progress between tiles lets the transfer
 * advance, and ar_ring_next waits for it (the time waited is the "ring" phase).  P = 1 is the
 * same loop with one step and no messages.  Data movement only: trip.c walks the blocks, and the
 * tile kernels are eval.c's and hessvec.c's. */
#ifndef AR_RING_H
#define AR_RING_H

#include <mpi.h>
#include <stdint.h>

typedef struct ar_ring_s ar_ring;

/* Collective: a ring over comm for blocks of rows[b] rows (b: rank in comm; the same array on
 * every member), width doubles a row. */
int ar_ring_create(MPI_Comm comm, const int64_t *rows, int width, ar_ring **ring);
void ar_ring_destroy(ar_ring **ring); /* not collective */

/* Collective: start a trip with this rank's own block (its rows x width, row-major; read
 * only, and not changed until the trip ends). */
int ar_ring_start(ar_ring *ring, const double *own);
/* Not collective: the block in hand: its position in the ring's concatenation of blocks, rows,
 * owner (member of comm; NULL: not wanted), and data (rows x width). */
const double *ar_ring_block(const ar_ring *ring, int64_t *first, int64_t *rows, int *owner);
/* Not collective: 1 while the trip has a block in hand. */
int ar_ring_active(const ar_ring *ring);
/* Not collective: give MPI a chance to move the transfer in flight (call between tiles). */
void ar_ring_progress(ar_ring *ring);
/* Collective: finish the transfer in flight and make the received block the one in hand;
 * after the last step the trip ends (ar_ring_active returns 0). */
int ar_ring_next(ar_ring *ring);
/* Not collective: seconds spent waiting for blocks since creation. */
double ar_ring_wait_seconds(const ar_ring *ring);
/* Not collective: rows of the largest block. */
int64_t ar_ring_max_rows(const ar_ring *ring);

#endif

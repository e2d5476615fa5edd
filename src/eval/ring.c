#include "ring.h"

#include <stdlib.h>

#include "attnreg.h"
#include "error.h"
#include "memory.h"
#include "timing.h"

struct ar_ring_s {
  MPI_Comm comm;
  int rank, size, width, step;
  int64_t max_rows;
  int64_t *rows, *first;  /* rows and position (in ring order) of each member's block */
  MPI_Datatype row;       /* width contiguous doubles */
  double *buf[2];         /* receive buffers, max_rows x width each */
  const double *hand;     /* the block in hand */
  int hand_owner;         /* its rank (= block index) */
  int next_buf;           /* the buffer the next block arrives in */
  MPI_Request req[2];     /* send of the block in hand, receive of the next */
  int in_flight;
  double t_wait;
};

int ar_ring_create(MPI_Comm comm, const int64_t *rows, int width, ar_ring **out)
{
  *out = NULL;
  ar_ring *r = calloc(1, sizeof *r);
  int size, err = r ? AR_OK : AR_ERROR(AR_ERR_MEM, "out of memory (ring)");
  MPI_Comm_size(comm, &size);
  if (r) {
    *out = r;
    r->comm = MPI_COMM_NULL, r->row = MPI_DATATYPE_NULL;
    r->size = size, r->width = width;
    MPI_Comm_rank(comm, &r->rank);
    r->rows = calloc((size_t)size, sizeof(int64_t)), r->first = calloc((size_t)size, sizeof(int64_t));
    if (!r->rows || !r->first) err = AR_ERROR(AR_ERR_MEM, "out of memory (ring)");
    for (int b = 0; b < size && !err; b++) {
      r->rows[b] = rows[b], r->first[b] = b ? r->first[b - 1] + rows[b - 1] : 0;
      r->max_rows = rows[b] > r->max_rows ? rows[b] : r->max_rows;
    }
    if (!err && r->max_rows >= 2147483647)
      err = AR_ERROR(AR_ERR_DATA, "a block of %lld rows is too large for one message", (long long)r->max_rows);
    if (size > 1)
      for (int i = 0; i < 2 && !err; i++)
        if (!(r->buf[i] = ar_work_alloc(sizeof(double) * (size_t)(r->max_rows * width))))
          err = AR_ERROR(AR_ERR_MEM, "out of memory: ring buffer of %.1f MB", 8.0 * r->max_rows * width / 1048576.0);
  }
  AR_CALL(ar_error_agree(comm, err)); /* every member is still here: the collective calls follow */
  AR_CALL_MPI(MPI_Comm_dup(comm, &r->comm));
  AR_CALL_MPI(MPI_Type_contiguous(width, MPI_DOUBLE, &r->row));
  AR_CALL_MPI(MPI_Type_commit(&r->row));
  return AR_OK;
}

void ar_ring_destroy(ar_ring **pr)
{
  ar_ring *r = *pr;
  if (!r) return;
  if (r->in_flight) MPI_Waitall(2, r->req, MPI_STATUSES_IGNORE);
  ar_work_free(r->buf[0]), ar_work_free(r->buf[1]);
  if (r->row != MPI_DATATYPE_NULL) MPI_Type_free(&r->row);
  if (r->comm != MPI_COMM_NULL) MPI_Comm_free(&r->comm);
  free(r->rows), free(r->first);
  free(r);
  *pr = NULL;
}

static int64_t block_rows(const ar_ring *r, int b, int64_t *first)
{
  if (first) *first = r->first[b];
  return r->rows[b];
}

/* Post the transfer of the block in hand to the right, and of the next one from the left. */
static int post(ar_ring *r)
{
  const int right = (r->rank + 1) % r->size, left = (r->rank + r->size - 1) % r->size;
  const int from = (r->hand_owner + r->size - 1) % r->size; /* the block the left neighbour holds */
  const int64_t out_rows = block_rows(r, r->hand_owner, NULL), in_rows = block_rows(r, from, NULL);
  AR_CALL_MPI(MPI_Irecv(r->buf[r->next_buf], (int)in_rows, r->row, left, 0, r->comm, &r->req[1]));
  AR_CALL_MPI(MPI_Isend(r->hand, (int)out_rows, r->row, right, 0, r->comm, &r->req[0]));
  r->in_flight = 1;
  return AR_OK;
}

int ar_ring_start(ar_ring *r, const double *own)
{
  AR_CHECK(!r->in_flight, AR_ERR_INTERNAL, "ring: a trip started while a transfer is in flight");
  r->step = 0, r->hand = own, r->hand_owner = r->rank, r->next_buf = 0;
  if (r->size > 1) AR_CALL(post(r));
  return AR_OK;
}

const double *ar_ring_block(const ar_ring *r, int64_t *first, int64_t *rows, int *owner)
{
  *rows = block_rows(r, r->hand_owner, first);
  if (owner) *owner = r->hand_owner;
  return r->hand;
}

int ar_ring_active(const ar_ring *r) { return r->step < r->size; }

void ar_ring_progress(ar_ring *r)
{
  int done;
  if (r->in_flight) MPI_Testall(2, r->req, &done, MPI_STATUSES_IGNORE);
}

int ar_ring_next(ar_ring *r)
{
  r->step++;
  if (r->step >= r->size) return AR_OK;
  double t0 = ar_wtime();
  AR_CALL_MPI(MPI_Waitall(2, r->req, MPI_STATUSES_IGNORE));
  r->t_wait += ar_wtime() - t0;
  r->in_flight = 0;
  r->hand = r->buf[r->next_buf];
  r->hand_owner = (r->hand_owner + r->size - 1) % r->size;
  r->next_buf ^= 1;
  if (r->step < r->size - 1) AR_CALL(post(r));
  return AR_OK;
}

double ar_ring_wait_seconds(const ar_ring *r) { return r->t_wait; }

int64_t ar_ring_max_rows(const ar_ring *r) { return r->max_rows; }

/* Error handling: one path for every failure (STYLE.md "Errors").
 *
 * Every function returns an int error code (AR_OK == 0).  A failing check records a
 * one-line, user-facing message (naming the file or option and the problem) and returns
 * the code; callers propagate with AR_CALL.  At collective sync points all ranks call
 * ar_error_agree(), so every rank leaves together with the same code and rank 0 (or the
 * failing rank) prints the message exactly once. */
#ifndef AR_ERROR_H
#define AR_ERROR_H

#include <mpi.h>
#include "attnreg.h"

/* Record an error (not collective).  Returns code.  The first error recorded since the
 * last ar_error_clear() wins: later ones are the consequences of it. */
int ar_error_set(int code, const char *file, int line, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
const char *ar_error_message(void); /* the recorded message, "" if none */
void ar_error_clear(void);

/* Collective over comm: every rank passes its local code; returns the code of the
 * lowest failing rank (0 if none) on every rank, and copies that rank's message to all. */
int ar_error_agree(MPI_Comm comm, int err);

#define AR_CHECK(cond, code, ...) \
  do { if (!(cond)) return ar_error_set((code), __FILE__, __LINE__, __func__, __VA_ARGS__); } while (0)
#define AR_ERROR(code, ...) ar_error_set((code), __FILE__, __LINE__, __func__, __VA_ARGS__)
#define AR_CALL(expr) \
  do { int ar_err_ = (expr); if (ar_err_) return ar_err_; } while (0)
#define AR_CALL_MPI(call)                                                       \
  do {                                                                          \
    int ar_mpi_ = (call);                                                       \
    if (ar_mpi_ != MPI_SUCCESS) {                                               \
      char ar_msg_[MPI_MAX_ERROR_STRING]; int ar_len_ = 0;                      \
      MPI_Error_string(ar_mpi_, ar_msg_, &ar_len_);                             \
      return ar_error_set(AR_ERR_MPI, __FILE__, __LINE__, __func__, "%s: %s", #call, ar_msg_); \
    }                                                                           \
  } while (0)
/* Collective over comm, for a failure that must be agreed right before a collective call (an
 * allocation, a LAPACK info on one rank): every rank evaluates cond; when it is false on any rank,
 * every rank records the lowest failing rank's message and returns its code together, so no rank
 * is left waiting in the collective call that follows.  Costs one allreduce. */
#define AR_CHECK_AGREE(comm, cond, code, ...)                                                         \
  do {                                                                                                \
    int ar_agree_ = (cond) ? AR_OK : ar_error_set((code), __FILE__, __LINE__, __func__, __VA_ARGS__); \
    ar_agree_ = ar_error_agree((comm), ar_agree_);                                                    \
    if (ar_agree_) return ar_agree_;                                                                  \
  } while (0)
/* Collective over comm: the same for an error code (expr's, on each rank). */
#define AR_CALL_AGREE(comm, expr)                        \
  do {                                                   \
    int ar_agree_ = ar_error_agree((comm), (expr));      \
    if (ar_agree_) return ar_agree_;                     \
  } while (0)
/* Allocate n elements of *p (zeroed) or fail with AR_ERR_MEM. */
#define AR_MALLOC(p, n)                                                                       \
  do {                                                                                        \
    size_t ar_n_ = (size_t)(n);                                                               \
    (p) = calloc(ar_n_ ? ar_n_ : 1, sizeof(*(p)));                                            \
    AR_CHECK((p) != NULL, AR_ERR_MEM, "out of memory allocating %zu bytes", ar_n_ * sizeof(*(p))); \
  } while (0)

#endif

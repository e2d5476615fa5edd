/* Work arrays: the softmax tiles, the tables, the D x D Hessian share and its factor.
 *
 * They are touched for the first time in the first evaluation and the first Cholesky.  With
 * 4 KB pages that is one page fault per 4 KB: on the virtual machines this project is
 * measured on, about 17 us each, ≈ 30 % of a Gauss-Newton solve at n = 1024, d = 16.  Where
 * the kernel runs transparent huge pages in "madvise" mode (Debian's default), a 2 MB aligned,
 * MADV_HUGEPAGE region faults once per 2 MB (measured here: 8 MB first touched in 14.5 ms
 * instead of 23.3 ms); bench-solve's problem solved ≈ 10 % faster.  Only arrays up to
 * AR_HUGE_MAX get the advice: there the first touch is a visible part of the run, while at
 * n = 4096, d = m = 32 huge pages made the Hessian part of every evaluation ≈ 20 % slower here
 * (three runs out of three).  Where THP is unavailable the advice is ignored.
 *
 * Arrays below AR_HEAP_MAX come from the heap (many small per-row arrays would otherwise each
 * take a 2 MB page).  Each larger block is its own anonymous mapping (zero-filled, faulted lazily): a header just below
 * the aligned start, in the mapping's slack, records the mapping for ar_work_free. */
#define _GNU_SOURCE
#include "memory.h"

#include <math.h>
#include <stdint.h>
#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#define AR_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AR_ASAN 1
#endif
#endif

#define HUGE_ALIGN ((size_t)2 << 20)

double ar_work_placed(double bytes)
{
  const double h = (double)HUGE_ALIGN;
  if (bytes < (double)AR_HEAP_MAX) return bytes;
  return bytes <= (double)AR_HUGE_MAX ? ceil(bytes / h) * h : bytes;
}

#ifdef AR_ASAN
/* AddressSanitizer checks only what malloc hands out: plain calloc, so overruns are caught. */
#include <stdlib.h>
void *ar_work_alloc(size_t bytes) { return calloc(bytes ? bytes : 1, 1); }
void ar_work_free(void *p) { free(p); }
double ar_work_live_bytes(void) { return -1; }
#else
#include <stdlib.h>

#define HEADER 64

typedef struct {
  void *base;
  size_t len;    /* 0: from the heap */
  size_t placed; /* the bytes it counts in live_bytes */
} map_header;

static size_t live_bytes; /* placed bytes not yet freed (the processes are single-threaded here) */

double ar_work_live_bytes(void) { return (double)live_bytes; }

void *ar_work_alloc(size_t bytes)
{
  if (bytes == 0) bytes = 1;
  if (bytes < AR_HEAP_MAX) { /* a mapping of its own would cost more than the heap */
    char *b = calloc(1, bytes + HEADER);
    if (!b) return NULL;
    map_header *h = (map_header *)b;
    h->base = b, h->len = 0, h->placed = bytes;
    live_bytes += bytes;
    return b + HEADER;
  }
  if (bytes > SIZE_MAX - 3 * HUGE_ALIGN) return NULL;
  const int huge = bytes <= AR_HUGE_MAX;
  if (huge) bytes = (bytes + HUGE_ALIGN - 1) & ~(HUGE_ALIGN - 1); /* whole huge pages: a partial one gets none */
  size_t len = bytes + HUGE_ALIGN + HUGE_ALIGN / 512; /* room to align, and a page for the header */
  void *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return NULL;
  uintptr_t p = ((uintptr_t)base + HEADER + HUGE_ALIGN - 1) & ~(uintptr_t)(HUGE_ALIGN - 1);
#ifdef MADV_HUGEPAGE
  if (huge) (void)madvise((void *)p, bytes, MADV_HUGEPAGE); /* advice only: ignored where unsupported */
#endif
  map_header *h = (map_header *)(p - HEADER);
  h->base = base, h->len = len, h->placed = bytes; /* huge: already whole pages */
  live_bytes += bytes;
  return (void *)p;
}

void ar_work_free(void *p)
{
  if (!p) return;
  map_header *h = (map_header *)((uintptr_t)p - HEADER);
  live_bytes -= h->placed;
  if (h->len) munmap(h->base, h->len);
  else free(h->base);
}
#endif

/* Work arrays: zeroed anonymous mappings, small ones on transparent huge pages (memory.c). */
#ifndef AR_MEMORY_H
#define AR_MEMORY_H

#include <stddef.h>

/* Not collective: bytes of zeroed memory.  Below AR_HEAP_MAX from the heap; larger ones are
 * anonymous mappings whose pages are touched (and faulted in) only when used, and up to
 * AR_HUGE_MAX bytes they are rounded to whole 2 MB pages, 2 MB aligned and advised for
 * transparent huge pages (MADV_HUGEPAGE).  NULL on failure. */
#define AR_HEAP_MAX ((size_t)512 << 10)
#define AR_HUGE_MAX ((size_t)4 << 20)
void *ar_work_alloc(size_t bytes);
void ar_work_free(void *p); /* NULL is ignored */
/* Not collective: the bytes a request of `bytes` occupies as placed above (the heap: as asked;
 * mappings up to AR_HUGE_MAX: whole 2 MB pages), which plan.c's memory model sums. */
double ar_work_placed(double bytes);
/* Not collective: this process's arrays from ar_work_alloc not yet freed, in placed bytes (-1
 * under AddressSanitizer, where they are plain calloc and not counted).  Tests compare it with
 * the plan's model (tests/test_evalmem.c). */
double ar_work_live_bytes(void);

#endif

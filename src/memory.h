/* Work arrays: zeroed anonymous mappings, small ones on transparent huge pages (memory.c). */
#ifndef AR_MEMORY_H
#define AR_MEMORY_H

#include <stddef.h>

/* Not collective: bytes of zeroed memory whose pages are touched (and faulted in) only when
 * used; up to AR_HUGE_MAX bytes are rounded to whole 2 MB pages, 2 MB aligned and advised for
 * transparent huge pages (MADV_HUGEPAGE).  NULL on failure. */
#define AR_HUGE_MAX ((size_t)4 << 20)
void *ar_work_alloc(size_t bytes);
void ar_work_free(void *p); /* NULL is ignored */

#endif

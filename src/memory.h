/* Large work arrays on transparent huge pages (memory.c). */
#ifndef AR_MEMORY_H
#define AR_MEMORY_H

#include <stddef.h>

/* Not collective: bytes of zeroed memory, 2 MB aligned and advised for transparent huge pages
 * (MADV_HUGEPAGE); pages are touched (and faulted in) only when used.  NULL on failure. */
void *ar_huge_alloc(size_t bytes);
void ar_huge_free(void *p); /* NULL is ignored */

#endif

/* Test-only fault injection: the one seam through which the reliability tests make the code
 * fail on purpose (a NaN trial loss, a signal at a given iteration, a failed rename during the
 * output commit, ...).  Inert unless ATTNREG_FAULT is set in the environment:
 *
 *   ATTNREG_FAULT="SITE:K[:RANK][,SITE:K[:RANK]...]"
 *
 * makes ar_fault(SITE) return 1 on its K-th call (counting from 1) in each process, or only in
 * the process with MPI_COMM_WORLD rank RANK.  Sites are plain names chosen at the call sites
 * (grep ar_fault); an unknown site in the variable simply never fires. */
#ifndef AR_FAULT_H
#define AR_FAULT_H

/* Not collective: 1 when this call of site is the one ATTNREG_FAULT names, else 0. */
int ar_fault(const char *site);

#endif

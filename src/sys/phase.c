/* The phase registry (phase.h). */
#include "phase.h"

#include "error.h"

const char *ar_phase_name(ar_phase p)
{
  switch (p) {
#define AR_PHASE_CASE(id, name, what) case AR_PHASE_##id: return name;
    AR_PHASE_LIST(AR_PHASE_CASE)
#undef AR_PHASE_CASE
  case AR_PHASE_COUNT: break;
  }
  return "?";
}

void ar_phases_add_solve(ar_phase_times *p, const ar_solve_result *r)
{
  p->t[AR_PHASE_LOSS_GRADIENT] += r->t_kernel;
  p->t[AR_PHASE_HESSIAN] += r->t_hess;
  p->t[AR_PHASE_REDUCTION] += r->t_reduce;
  p->t[AR_PHASE_RING] += r->t_ring;
  p->t[AR_PHASE_FACTORIZATION] += r->t_factor;
  p->t[AR_PHASE_SOLVE] += r->t_solve;
  p->t[AR_PHASE_TOTAL] += r->t_total;
}

void ar_phases_add_eval(ar_phase_times *p, const ar_eval_out *o)
{
  p->t[AR_PHASE_LOSS_GRADIENT] += o->t_kernel;
  p->t[AR_PHASE_HESSIAN] += o->t_hess;
  p->t[AR_PHASE_REDUCTION] += o->t_reduce;
  p->t[AR_PHASE_RING] += o->t_ring;
}

int ar_phases_reduce(MPI_Comm comm, const ar_phase_times *p, ar_phase_stat s[AR_PHASE_COUNT])
{
  int size;
  MPI_Comm_size(comm, &size);
  double mx[2 * AR_PHASE_COUNT], in[2 * AR_PHASE_COUNT], sum[AR_PHASE_COUNT];
  for (int i = 0; i < AR_PHASE_COUNT; i++) in[i] = p->t[i], in[AR_PHASE_COUNT + i] = -p->t[i];
  AR_CALL_MPI(MPI_Allreduce(in, mx, 2 * AR_PHASE_COUNT, MPI_DOUBLE, MPI_MAX, comm)); /* max and -min */
  AR_CALL_MPI(MPI_Allreduce(p->t, sum, AR_PHASE_COUNT, MPI_DOUBLE, MPI_SUM, comm));
  for (int i = 0; i < AR_PHASE_COUNT; i++)
    s[i] = (ar_phase_stat){mx[i], -mx[AR_PHASE_COUNT + i], sum[i] / size};
  return AR_OK;
}

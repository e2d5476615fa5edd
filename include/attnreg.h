/* attnreg: distributed-memory Newton solver for attention regression (arXiv 2309.07418).
 *
 *   minimise L(X,Y) = || softmax_rows(A1 X A2^T) A3 Y - B ||_F^2 (+ ridge terms)
 *
 * Formulas: docs/math.md; layout: docs/layout.md; solver: docs/solver.md.  Conventions, as in reference ScaLAPACK:
 *   "collective" = every rank of the communicator must call it, with the same global arguments;
 *   "global" arguments/results are identical on every rank, "local" ones are this rank's share.
 * Every function returns an ar_error code (AR_OK == 0); ar_error_message() says what failed.
 * Matrices are double, row-major (C order); z = [vec_r(X); vec_r(Y)], D = d*d + d*m. */
#ifndef ATTNREG_H
#define ATTNREG_H

#include <mpi.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>

#define ATTNREG_VERSION "0.1.0"

/* Error codes with their process exit status (usage 2, data 3, I/O 4, runtime 5, numeric 6,
 * stopped by SIGTERM/SIGUSR1 75).  One list: enum, strings and exit codes cannot drift. */
#define AR_ERROR_MAP(X)                                                   \
  X(AR_OK, 0, "success")                                                  \
  X(AR_ERR_USAGE, 2, "invalid command line")                              \
  X(AR_ERR_DATA, 3, "invalid input data")                                 \
  X(AR_ERR_IO, 4, "I/O error")                                            \
  X(AR_ERR_MEM, 5, "out of memory")                                       \
  X(AR_ERR_MPI, 5, "MPI error")                                           \
  X(AR_ERR_LIB, 5, "BLAS/ScaLAPACK error")                                \
  X(AR_ERR_INTERNAL, 5, "internal error")                                 \
  X(AR_ERR_NUMERIC, 6, "numerical failure")                               \
  X(AR_ERR_INTERRUPTED, 75, "stopped by a signal (checkpoint written if --checkpoint was given)")

typedef enum {
#define AR_ERR_ENUM(name, status, text) name,
  AR_ERROR_MAP(AR_ERR_ENUM)
#undef AR_ERR_ENUM
} ar_error;

const char *ar_error_name(int code);        /* not collective */
int ar_error_exit_status(int code);         /* not collective: process exit status for code */
const char *ar_error_message(void);         /* not collective: last recorded message */

/* ------------------------------------------------------------------------------------------
 * Attention masks (docs/math.md §8): which keys each query row sees.  Packed sequences, like
 * FlashAttention's cu_seqlens: rows [o_b, o_{b+1}) are sequence b and attend only to the keys
 * of their own sequence; causal: row i attends to the keys k <= i of its sequence.  The loss
 * sums over all rows. */
typedef struct {
  int64_t nseg;            /* K segments; 0 or 1: one sequence [0, n) (offsets may be NULL) */
  const int64_t *offsets;  /* K + 1 global offsets 0 = o_0 < o_1 < ... < o_K = n */
  int causal;
  int contiguous;          /* the row layout: 0 (auto) groups of ranks by segment (docs/layout.md
                              §6); 1 the contiguous partition and one ring of all ranks */
} ar_mask;

/* Collective: read a segments file (int64 or int32 npy, 1-D, K + 1 offsets, 0 = o_0 < ... <
 * o_K = n) on rank 0, check it against n and broadcast it: *offsets (caller frees), *nseg = K.
 * Errors name the file ("segments.npy: offsets must increase strictly (o_3 = 40, o_4 = 40)"). */
int ar_mask_read_segments(MPI_Comm comm, const char *path, int64_t n, int64_t **offsets, int64_t *nseg);
/* Not collective: AR_ERR_DATA (naming `what`) unless offsets are 0 = o_0 < ... < o_K = n. */
int ar_mask_check(const char *what, int64_t n, const int64_t *offsets, int64_t nseg);
/* Not collective: the global rows rank `rank` of `size` holds for a problem of n rows with
 * mask m (NULL: none; then the contiguous partition ar_partition), as *nranges sorted ranges
 * [r[2i], r[2i+1]) (*ranges: caller frees).  docs/layout.md §6. */
int ar_layout_rows(int64_t n, const ar_mask *m, int size, int rank, int *nranges, int64_t **ranges);

/* ------------------------------------------------------------------------------------------
 * Problem: A1, A2, A3, B distributed by rows (each rank holds only its rows; which rows:
 * ar_layout_rows — contiguous blocks without a mask). */
typedef struct ar_problem_s *ar_problem;

typedef struct {
  const char *a1, *a2, *a3, *b; /* paths; a2 == a3 == a1 allowed (self-attention) */
} ar_data_paths;

/* Fill paths from --data DIR: DIR/A1.npy, A2, A3, B; or DIR/A.npy + DIR/B.npy (self-attention).
 * Explicit non-NULL entries of *paths are kept.  storage must hold 4 * 4096 chars. Not collective. */
int ar_data_paths_from_dir(const char *dir, ar_data_paths *paths, char *storage);

/* Collective.  Reads and validates the four files (shapes agree, values finite); each rank
 * reads only its own rows of each (MPI-IO).  mask: NULL for none (copied). */
int ar_problem_load(MPI_Comm comm, const ar_data_paths *paths, const ar_mask *mask, ar_problem *prob);
/* Collective.  Build from arrays already in memory: a1, a2, a3 and b hold this rank's rows,
 * those of ar_layout_rows(n, mask, size, rank) in their order.  The arrays are copied;
 * a1 == a2 == a3 (self-attention) or a2 == a3 are stored once. */
int ar_problem_create(MPI_Comm comm, int64_t n, int d, int m, const ar_mask *mask, const double *a1_local,
                      const double *a2_local, const double *a3_local, const double *b_local, ar_problem *prob);
void ar_problem_destroy(ar_problem *prob);  /* not collective; NULLs *prob */
void ar_problem_sizes(ar_problem prob, int64_t *n, int *d, int *m); /* global */
double ar_problem_bnorm2(ar_problem prob);  /* global: ||B||_F^2 */
/* Collective: ||A1||_F and ||A2||_F (global). */
int ar_problem_input_norms(ar_problem prob, double *a1, double *a2);
/* Global: a 64-bit fingerprint of (n, d, m, A1, A2, A3, B), independent of the rank count
 * (a sum of per-entry hashes), used to tie a checkpoint to its data. */
uint64_t ar_problem_hash(ar_problem prob);
/* Global: a fingerprint of the mask (0 without one: segments [0, n) and not causal). */
uint64_t ar_problem_mask_hash(ar_problem prob);
/* Global: the mask (offsets owned by the problem; nseg = 1 without segments). */
ar_mask ar_problem_mask(ar_problem prob);

/* Facts of a problem's layout and mask for reports, global (the same on every rank). */
typedef struct {
  int64_t nseg;         /* segments (1: one sequence) */
  int causal, masked;   /* masked: segments or causal */
  int groups;           /* rings of ranks that exchange key blocks (1 without a mask) */
  int max_group;        /* ranks in the largest one */
  int zigzag;           /* a causal segment is laid out in zigzag pieces */
  int64_t rows_max;     /* rows of the most loaded rank */
  double pairs;         /* unmasked query-key pairs of the whole problem (n^2 without a mask) */
  double pairs_max, pairs_avg; /* ... of one rank: its largest and the average */
} ar_layout_info;
void ar_problem_layout_info(ar_problem prob, ar_layout_info *info); /* not collective */

/* Contiguous row partition of n rows over size ranks: rank gets [*r0, *r1).  Not collective. */
void ar_partition(int64_t n, int size, int rank, int64_t *r0, int64_t *r1);

/* ------------------------------------------------------------------------------------------
 * Whitening (docs/math.md §6): A_k = Q_k R_k by rows (shifted CholeskyQR3), and the problem in
 * the Q's, whose loss at X~ = R1 X R2^T, Y~ = R3 Y equals the original's at X, Y. */
typedef struct ar_whitening_s *ar_whitening;
/* Collective: the whitened problem (its own arrays; the data hash of prob) and the factors.
 * names[3]: how messages name A1, A2, A3 (a column that depends on the others is an error). */
int ar_whiten(ar_problem prob, const char *const names[3], ar_problem *white, ar_whitening *w);
void ar_whitening_destroy(ar_whitening *w);  /* not collective */
/* Not collective (global in, global out; in place allowed): X~ = R1 X R2^T, Y~ = R3 Y. */
int ar_whiten_point(ar_whitening w, const double *X, const double *Y, double *Xt, double *Yt);
/* Not collective: X = R1^{-1} X~ R2^{-T}, Y = R3^{-1} Y~. */
int ar_unwhiten_point(ar_whitening w, const double *Xt, const double *Yt, double *X, double *Y);
/* Not collective: the gradient in the user's variables, grad_X = R1^T grad_X~ R2, grad_Y = R3^T grad_Y~. */
int ar_unwhiten_gradient(ar_whitening w, const double *gXt, const double *gYt, double *gX, double *gY);

/* ------------------------------------------------------------------------------------------
 * Distributed dense matrix (ScaLAPACK 2-D block-cyclic) on a BLACS process grid. */
typedef struct ar_grid_s *ar_grid;
typedef struct ar_dmat_s *ar_dmat;

/* Collective.  pr x pc grid over comm (pr = pc = 0: as square as the rank count allows). */
int ar_grid_create(MPI_Comm comm, int pr, int pc, ar_grid *grid);
void ar_grid_destroy(ar_grid *grid);                 /* collective */
void ar_grid_shape(ar_grid grid, int *pr, int *pc);  /* global */
/* Collective: an N x N matrix in nb x nb blocks (nb <= 0: a default from N and the grid). */
int ar_dmat_create(ar_grid grid, int N, int nb, ar_dmat *A);
void ar_dmat_destroy(ar_dmat *A);                    /* not collective */
int ar_dmat_nb(ar_dmat A);                           /* global */
/* Collective: write the whole matrix to a float64 .npy file with MPI-IO (darray file view). */
int ar_dmat_write_npy(ar_dmat A, const char *path);
/* Collective: Cholesky factor of A + shift*I (pdpotrf; LAPACK dpotrf on one process) into a
 * separate copy: A is kept, and the factor stays valid until the next ar_dmat_factor or the
 * next Hessian assembled into A on more than 2 ranks (which uses the copy as scratch; a solve
 * then fails with an internal error instead of using it).  *not_pd = 1 when A + shift*I is not
 * positive definite (pdpotrf info > 0: global). */
int ar_dmat_factor(ar_dmat A, double shift, int *not_pd);
/* Collective: the same with a diagonal shift: shift_diag[i] added to A_ii (global, length N). */
int ar_dmat_factor_diag(ar_dmat A, double shift, const double *shift_diag, int *not_pd);
/* A Kronecker-structured metric on z = [vec_r X (d*d); vec_r Y (d*m)] (row-major vec):
 * Ga (x) Gb on the X block, Gy (x) I_m on the Y block (d x d, row-major, symmetric), plus
 * floor * I.  N = d*d (the X block alone) or d*d + d*m. */
typedef struct {
  int d, m;
  const double *Ga, *Gb, *Gy;
  double floor;
} ar_kron_metric;
/* Collective: the same with the shift shift * M (M global, the same on every rank). */
int ar_dmat_factor_metric(ar_dmat A, double shift, const ar_kron_metric *M, int *not_pd);
/* Not collective: v^T M v for v of length N. */
double ar_kron_metric_quad(const ar_kron_metric *M, int N, const double *v);
/* Collective: the diagonal of A on every rank (global, length N). */
int ar_dmat_diag(ar_dmat A, double *diag);
/* Collective: x = (A + shift*I)^{-1} rhs with the last successful ar_dmat_factor (pdpotrs).
 * rhs, x: global vectors of length N (replicated). */
int ar_dmat_solve(ar_dmat A, const double *rhs, double *x);
/* Collective: the whole matrix on every rank (N x N row-major into full).  For tests and small
 * matrices only: the solver never calls it. */
int ar_dmat_gather(ar_dmat A, double *full);
/* Global: mean |A_ii| (scale for the Levenberg-Marquardt shift). */
int ar_dmat_mean_abs_diag(ar_dmat A, double *mean);

/* ------------------------------------------------------------------------------------------
 * Progress of long phases: a line on the given stream (rank 0's stderr, say) once a unit of
 * work (an evaluation, a Newton iteration) has run for first_after seconds, then at most every
 * `every` seconds.  Not collective; every function accepts NULL (no progress). */
typedef struct ar_progress_s ar_progress;
ar_progress *ar_progress_create(FILE *out, double first_after, double every); /* NULL: no memory */
void ar_progress_destroy(ar_progress **p);
void ar_progress_start(ar_progress *p, const char *what);                  /* a new unit of work */
void ar_progress_phase(ar_progress *p, const char *phase, double fraction); /* fraction < 0: unknown */

/* ------------------------------------------------------------------------------------------
 * Evaluation of L, its gradient and joint Hessian (docs/math.md §1-§4, distributed as docs/layout.md). */
/* Hessian kinds: enum value (stored in checkpoints: never renumber), name (options, outputs).
 * AUTO is a solver choice only (Gauss-Newton while it makes fast progress, then exact). */
#define AR_HESSIAN_MAP(X)                  \
  X(AR_HESS_NONE, 0, "none")               \
  X(AR_HESS_EXACT, 1, "exact")             \
  X(AR_HESS_GAUSS_NEWTON, 2, "gauss-newton") \
  X(AR_HESS_AUTO, 3, "auto")

typedef enum {
#define AR_HESS_ENUM(name, value, text) name = value,
  AR_HESSIAN_MAP(AR_HESS_ENUM)
#undef AR_HESS_ENUM
} ar_hessian_kind;
#define AR_HESS_COUNT 4
const char *ar_hessian_name(int kind);      /* not collective: "exact", ...; NULL if not a kind */

typedef struct ar_eval_s *ar_eval;

typedef struct {
  int64_t tile;          /* query rows per tile; <= 0: from tile_mem_mb */
  int64_t chunk;         /* key rows per chunk; <= 0: from tile_mem_mb */
  double tile_mem_mb;    /* memory budget for one tile's work arrays */
  double lambda_x, lambda_y; /* ridge weights */
} ar_eval_options;
/* Not collective: the defaults (the command line's defaults come from here). */
void ar_eval_options_default(ar_eval_options *o);
/* Not collective: AR_ERR_USAGE with a message naming the option if a value is out of range. */
int ar_eval_options_check(const ar_eval_options *o);

typedef struct {
  double loss;           /* global: L(X,Y) including ridge terms */
  double *grad;          /* global, length D (z ordering); NULL if not requested */
  ar_dmat hess;          /* distributed D x D Hessian; NULL if not requested */
  int lower_only;        /* in: only its lower triangle is needed (a Cholesky): half the reduction */
  double flops;          /* local flops done counted in the GEMMs it ran */
  double t_kernel, t_hess, t_reduce; /* local seconds: loss/gradient, Hessian assembly, reductions */
  double t_ring;         /* local seconds waiting for key/value blocks of the ring */
} ar_eval_out;

/* What one trip over the key blocks computes (masked problems skip what the mask hides):
 * global except where it says "this rank". */
typedef struct {
  double boxes;            /* this rank: GEMM boxes (tiles cut to the rows and keys the mask leaves) */
  double area, pairs;      /* this rank: logits computed (box area); unmasked query-key pairs */
  double area_max, area_avg; /* over the ranks */
  double step_efficiency;  /* over the steps of this rank's ring: sum of the average area a step
                              over sum of the largest (1: every member equally busy at every step) */
  double pairs_total;      /* unmasked pairs of the whole problem */
} ar_eval_work;

/* Collective: the evaluator of prob: tiles, chunks, the ring, work arrays (docs/layout.md). */
int ar_eval_create(ar_problem prob, const ar_eval_options *opt, ar_eval *ev);
void ar_eval_destroy(ar_eval *ev);
int64_t ar_eval_tile(ar_eval ev);                    /* global: query rows per tile in use */
int64_t ar_eval_chunk(ar_eval ev);                   /* global: key rows per chunk in use */
ar_problem ar_eval_problem(ar_eval ev);              /* global: the problem it evaluates */
void ar_eval_set_progress(ar_eval ev, ar_progress *p); /* not collective: report tiles done to p */
void ar_eval_ridge(ar_eval ev, double *lambda_x, double *lambda_y); /* global: the ridge weights */
void ar_eval_work_info(ar_eval ev, ar_eval_work *w); /* not collective (computed at creation) */
double ar_eval_exps(ar_eval ev);                     /* this rank: exponentials computed since creation */
/* The sub-sampled Hessian (docs/math.md §9): the Hessian's X-X and X-Y blocks from a weighted
 * sum over rows; the gradient, the loss and the Y-Y block (2 P^T P) stay exact.  Not
 * collective: w[j] per local row (NULL: every row, weight 1; the default). */
int ar_eval_set_hessian_rows(ar_eval ev, const double *w);
/* Collective: a uniform sample of about fraction * n rows (in units of 64 global rows, by a hash
 * of seed: independent of the rank count), each weighing n / (rows sampled); fraction >= 1:
 * every row.  *sampled (if not NULL): the fraction of rows in the sample. */
int ar_eval_set_hessian_sample(ar_eval ev, double fraction, uint64_t seed, double *sampled);
/* Collective: L at z (global X, Y); grad if out->grad != NULL; Hessian of kind hk into
 * out->hess if hk != AR_HESS_NONE (out->hess must be a D x D ar_dmat). */
int ar_eval_compute(ar_eval ev, const double *X, const double *Y, ar_hessian_kind hk, ar_eval_out *out);

/* ------------------------------------------------------------------------------------------
 * Planted problems: A entries N(0, 1/d), X_true N(0, x_scale^2), Y_true N(0, 1),
 * B = softmax(A1 X_true A2^T) A3 Y_true + noise N(0, noise^2), X0 = X_true + start_noise *
 * x_scale * N(0, 1).  Counter-based random numbers: bit-identical for a seed on any rank count. */
typedef struct {
  int64_t n;
  int d, m;
  uint64_t seed;
  double x_scale, noise, start_noise;
  int self;              /* one shared A (written as A.npy) */
  ar_mask mask;          /* B under this mask (segments, causal); written as segments.npy when segmented */
} ar_generate_options;

/* Collective: generate and write DIR/{A1,A2,A3 | A}.npy, B.npy, X_true.npy, Y_true.npy,
 * X0.npy and, with segments, segments.npy (atomically); each rank makes and writes its own rows. */
int ar_generate(MPI_Comm comm, const ar_generate_options *opt, const char *dir);
/* Not collective: the i-th standard normal of stream `stream` for `seed`. */
double ar_normal(uint64_t seed, uint64_t stream, uint64_t i);

/* Collective: hv = H v at (X, Y) without forming H (docs/math.md §7): H of kind hk (EXACT or
 * GAUSS_NEWTON), v and hv global vectors of length D.  Two passes over the key blocks; reuses
 * the per-row state of the last evaluation at (X, Y), or makes it.  flops: added to. */
int ar_eval_hessvec(ar_eval ev, const double *X, const double *Y, ar_hessian_kind hk, const double *v, double *hv,
                    double *flops);
/* Collective: the pieces of the matrix-free step's preconditioner at (X, Y), all d x d and
 * global: G1 = A1^T A1, Nbar = (1/n) sum_j 2 M_j M_j^T (Gauss-Newton N_j), and P^T P. */
int ar_eval_precond(ar_eval ev, const double *X, const double *Y, double *G1, double *Nbar, double *PtP,
                    double *flops);

/* Collective: the Gauss-Newton Jacobian of this rank's rows at (X, Y), in pieces (docs/math.md
 * §10): the row j of the output depends on X through M_j (d x m) and on Y through p_j, so
 * J_j = [a1_j^T (x) M_j^T | p_j^T (x) I_m].  P (nloc x d), M (nloc x d x m) and the residual
 * C = P Y - B (nloc x m), local rows in the problem's order.  One trip F [A2 | A2 (x) V]. */
int ar_eval_gn_rows(ar_eval ev, const double *X, const double *Y, double *P, double *M, double *C, double *flops);

/* Collective: P^T P (d x d) and P^T B (d x m) at X, for the least-squares Y step (docs/math.md §5). */
int ar_eval_normal_equations(ar_eval ev, const double *X, double *PtP, double *PtB);

/* Accumulated seconds of pdpotrf and pdpotrs on this rank, and their count. */
void ar_dmat_times(ar_dmat A, double *t_factor, double *t_solve, int *nfactor);

/* ------------------------------------------------------------------------------------------
 * The solver: damped Newton (Levenberg-Marquardt shift, gain ratio), docs/solver.md. */
#define AR_REASON_MAP(X)                                                   \
  X(AR_REASON_NONE, "ITERATING", 0)                                        \
  X(AR_DIVERGED_NAN, "DIVERGED_NAN", 0)                                    \
  X(AR_CONVERGED_GATOL, "CONVERGED_GATOL", 1)                              \
  X(AR_CONVERGED_GRTOL, "CONVERGED_GRTOL", 1)                              \
  X(AR_CONVERGED_GTTOL, "CONVERGED_GTTOL", 1)                              \
  X(AR_CONVERGED_FTOL, "CONVERGED_FTOL", 1)                                \
  X(AR_CONVERGED_STEPTOL, "CONVERGED_STEPTOL", 1)                          \
  X(AR_CONVERGED_FLOOR, "CONVERGED_FLOOR", 1)                              \
  X(AR_DIVERGED_MAXITS, "DIVERGED_MAXITS", 0)                              \
  X(AR_DIVERGED_MU_OVERFLOW, "DIVERGED_MU_OVERFLOW", 0)                    \
  X(AR_DIVERGED_TIME_LIMIT, "DIVERGED_TIME_LIMIT", 0)                      \
  X(AR_DIVERGED_SIGNAL, "DIVERGED_SIGNAL", 0)                              \
  X(AR_STOPPED_EARLY, "STOPPED_EARLY", 0)                                  \
  X(AR_CONVERGED_LOSS_TARGET, "CONVERGED_LOSS_TARGET", 1)

typedef enum {
#define AR_REASON_ENUM(name, text, conv) name,
  AR_REASON_MAP(AR_REASON_ENUM)
#undef AR_REASON_ENUM
} ar_reason;
const char *ar_reason_name(ar_reason r);   /* not collective */
int ar_reason_converged(ar_reason r);      /* not collective: 1 for the CONVERGED_* reasons */

/* Methods: enum value (stored in checkpoints), name (options, outputs). */
#define AR_METHOD_MAP(X)              \
  X(AR_METHOD_JOINT, 0, "joint")      \
  X(AR_METHOD_ALTERNATING, 1, "alternating")

typedef enum {
#define AR_METHOD_ENUM(name, value, text) name = value,
  AR_METHOD_MAP(AR_METHOD_ENUM)
#undef AR_METHOD_ENUM
} ar_method;
#define AR_METHOD_COUNT 2
const char *ar_method_name(int method);     /* not collective: "joint", ...; NULL if not a method */

/* Linear solvers of the Newton step (stored in checkpoints): the dense Cholesky of the
 * assembled Hessian, matrix-free conjugate gradients, the cheaper by the plan's model, or the
 * row-space Gauss-Newton step (n m < D: a Cholesky of J J^T, n m x n m). */
#define AR_LINSOLVE_MAP(X)                 \
  X(AR_LINSOLVE_CHOLESKY, 0, "cholesky")   \
  X(AR_LINSOLVE_CG, 1, "cg")               \
  X(AR_LINSOLVE_AUTO, 2, "auto")          \
  X(AR_LINSOLVE_ROWS, 3, "rows")

typedef enum {
#define AR_LINSOLVE_ENUM(name, value, text) name = value,
  AR_LINSOLVE_MAP(AR_LINSOLVE_ENUM)
#undef AR_LINSOLVE_ENUM
} ar_linear_solver;
const char *ar_linear_solver_name(int ls); /* not collective: "cholesky", ...; NULL if none */

/* The shape of the Levenberg-Marquardt shift of the dense step: mu s I (s = mean |diag H|), or
 * mu s D with D = |diag H| / s (Marquardt, More: scale-invariant, for badly scaled unknowns), or
 * mu s M with M the inputs' Gram metric (G1 (x) G2 on X, G3 (x) I on Y, G_k = A_k^T A_k, scaled
 * to mean diagonal 1): the step whitening would take, without changing variables. */
#define AR_SHIFT_MAP(X)                \
  X(AR_SHIFT_IDENTITY, 0, "identity")  \
  X(AR_SHIFT_DIAGONAL, 1, "diagonal")  \
  X(AR_SHIFT_GRAM, 2, "gram")

typedef enum {
#define AR_SHIFT_ENUM(name, value, text) name = value,
  AR_SHIFT_MAP(AR_SHIFT_ENUM)
#undef AR_SHIFT_ENUM
} ar_shift_kind;
const char *ar_shift_name(int kind); /* not collective */

/* One row of the history.  The fields come from one list (X(type, name): type int or double),
 * which the struct and the checkpoint serialiser both follow:
 *   iter      0 = the starting point
 *   accepted  the trial step of this iteration was taken
 *   hessian   ar_hessian_kind of the Hessian behind this step (iteration 0: at the start)
 *   chord     1: the step reused the factor of an earlier point's Hessian (chord step)
 *   cg_iters  conjugate-gradient iterations of the step (matrix-free method; 0 otherwise)
 *   loss, rel_loss (loss / ||B||^2), grad_norm, mu, rho (gain ratio), step_norm, seconds */
#define AR_ITER_FIELDS(X)                                                                           \
  X(int, iter) X(int, accepted) X(int, hessian) X(int, chord) X(int, cg_iters) X(double, loss)     \
  X(double, rel_loss) X(double, grad_norm) X(double, mu) X(double, rho) X(double, step_norm)         \
  X(double, seconds) X(double, hessian_sample)

typedef struct {
#define AR_FIELD_DECL(type, name) type name;
  AR_ITER_FIELDS(AR_FIELD_DECL)
} ar_iter_info;

typedef void (*ar_monitor_fn)(const ar_iter_info *it, void *ctx); /* called on every rank */
/* Called on every rank after each iteration with the same global it: non-zero stops the solve
 * with AR_STOPPED_EARLY (multi-start racing).  Must decide on global data only. */
typedef int (*ar_stop_fn)(const ar_iter_info *it, void *ctx);

/* Everything the solver needs to continue exactly where it stopped (checkpoint/restart), and
 * the solver's own record of its state while it runs: one list of the scalar fields, which
 * the struct and the checkpoint serialiser both follow (adding a field is one edit here).
 *   iter         iterations done
 *   accepted     the last trial step was taken
 *   mu, nu       Levenberg-Marquardt shift (relative to its scale) and its growth factor
 *   f_prev       loss before the last accepted step
 *   g0norm       |g| at the start
 *   step_norm, rho  the last step's length and gain ratio
 *   h_kind       kind of the Hessian last evaluated (at z, or at zf before a chord step)
 *   hk_next      kind for the next Hessian evaluation (--hessian auto)
 *   h_fresh      1: that Hessian is at z; 0: at zf, and the next step is a chord step
 *   nchord       chord steps taken with the current factor
 *   fact_shift   shift of the current factor
 *   contraction  |g| after / before the last accepted step */
#define AR_STATE_FIELDS(X)                                                                          \
  X(int, iter) X(int, accepted) X(double, mu) X(double, nu) X(double, f_prev) X(double, g0norm)    \
  X(double, step_norm) X(double, rho) X(int, h_kind) X(int, hk_next) X(int, h_fresh) X(int, nchord) \
  X(double, fact_shift) X(double, contraction) X(int, nfloor) X(double, hess_frac)

typedef struct {
  AR_STATE_FIELDS(AR_FIELD_DECL)
  int D;
  double *z;                 /* D = d*d + d*m: [vec_r X; vec_r Y] */
  double *zf;                /* h_fresh == 0: the point whose Hessian is factored */
  ar_iter_info *history;     /* iter + 1 entries */
} ar_solver_state;
#undef AR_FIELD_DECL

/* Called (collectively, same arguments on every rank) at checkpoint times; a non-zero
 * return is an error that stops the solve. */
typedef int (*ar_checkpoint_fn)(const ar_solver_state *st, void *ctx);

typedef struct {
  int method;                /* ar_method */
  int hessian;               /* ar_hessian_kind: EXACT, GAUSS_NEWTON or AUTO */
  int linear_solver;         /* ar_linear_solver (AUTO: by the plan's flop model) */
  int cg_max_iter;           /* matrix-free: conjugate-gradient iterations per step at most */
  int shift;                 /* ar_shift_kind of the dense step's shift */
  int chord_steps;           /* steps that reuse one Cholesky factor after the Newton step (0: none) */
  int64_t max_iter;
  double time_limit;         /* seconds, <= 0: none */
  double gatol, grtol, gttol, ftol, steptol;
  double loss_target;        /* stop when L <= loss_target * |B|^2 (the relative loss; 0: never) */
  double hessian_sample;     /* dense step: Hessians from this fraction of the rows (1: all), doubled after a
                                rejected step or one that cut |g| less than fourfold (docs/solver.md) */
  int floor_iters;           /* stop (CONVERGED_FLOOR) after this many steps in a row at f's rounding floor (0: never) */
  double mu0, mu_max;        /* initial and largest LM shift (relative to mean |diag H|) */
  int nb;                    /* ScaLAPACK block size (0: default) */
  volatile sig_atomic_t *interrupt; /* non-zero on any rank: checkpoint and stop (AR_DIVERGED_SIGNAL) */
  int checkpoint_every;      /* call checkpoint every K iterations (0: only when interrupted) */
  ar_checkpoint_fn checkpoint;
  void *checkpoint_ctx;
  const ar_solver_state *resume; /* continue from this state (X, Y arguments are ignored) */
  ar_monitor_fn monitor;
  void *monitor_ctx;
  ar_progress *progress;     /* long iterations report their phases here (NULL: none) */
  ar_stop_fn stop;           /* NULL: never stop early */
  void *stop_ctx;
} ar_solver_options;
/* Not collective: the defaults (the command line's defaults come from here). */
void ar_solver_options_default(ar_solver_options *o);
/* Not collective: AR_ERR_USAGE with a message naming the option if a value is out of range
 * (ar_solve checks too). */
int ar_solver_options_check(const ar_solver_options *o);

typedef struct {
  ar_reason reason;
  int iterations;
  double loss, rel_loss, grad_norm;
  ar_iter_info *history;     /* iterations + 1 entries (caller frees) */
  double *grad;              /* the final gradient, D entries (caller frees) */
  int nb;                    /* ScaLAPACK block size used */
  double flops;              /* local */
  double t_kernel, t_hess, t_reduce, t_ring, t_factor, t_solve, t_total; /* local seconds */
  int hessvecs;              /* Hessian-vector products (matrix-free method) */
  int linear_solver;         /* the method used (AUTO resolved) */
} ar_solve_result;

/* Collective: minimise from (X, Y) (global, updated in place). */
int ar_solve(ar_problem prob, ar_eval ev, ar_grid grid, const ar_solver_options *opt, double *X, double *Y,
             ar_solve_result *res);
/* Collective: Y = argmin_Y L(X, Y) (ridge lambda_y of ev included): (P^T P + lambda_y I) Y = P^T B.
 * A singular P^T P (e.g. n < d) gets a tiny shift (1e-12 of its mean diagonal). */
int ar_solve_least_squares_y(ar_eval ev, const double *X, double *Y);
/* Collective: the same, and the reduced loss L(X, Y*(X)) (ridge terms included) from the normal
 * equations: one forward pass. */
int ar_reduced_loss(ar_eval ev, const double *X, double *Y, double *loss);
/* Collective: the fixed-norm search of the multi-start strategy "norm" (docs/solver.md): from X
 * (global; its Frobenius norm r is kept), projected gradient descent of the reduced loss
 * L(X, Y*(X)) on the sphere ||X||_F = r with an Armijo line search, at most iters steps; X, Y
 * (= Y*(X)) updated in place, *loss the reduced loss there, *evals the loss evaluations. */
int ar_fixed_norm_search(ar_eval ev, double *X, double *Y, int iters, double *loss, int *evals);

/* ------------------------------------------------------------------------------------------
 * Planning: memory per rank, flops and communication per Newton iteration, without running.
 * The memory model follows the code's allocations one by one (docs/layout.md): the local rows
 * of the inputs, the ring's block buffers, the per-row accumulators, a chunk's tables, a
 * tile's work arrays, the Hessian parts, the local Hessian share, the assembly panel, the
 * solver vectors, plus a measured runtime baseline.  Every term that grows with n is
 * O(n / ranks).  With a mask (NULL: none) the row layout of ar_layout_rows sets the rows of the
 * most loaded rank and the ring's length, and the flops count the unmasked pairs. */
typedef struct {
  int64_t n, tile, chunk, rows_per_rank;
  int d, m, D, ranks, pr, pc, nb;
  int fused;             /* one rank, one chunk: forward and backward fused (no recomputation) */
  int linear_solver;     /* the Newton step the numbers are for: AR_LINSOLVE_CHOLESKY or _CG */
  /* bytes on the most loaded rank */
  double mem_inputs, mem_ring, mem_rows, mem_chunk, mem_tiles, mem_parts, mem_hessian, mem_assembly, mem_solver,
      mem_baseline, mem_total;
  /* flops of the whole job per Newton iteration (model of docs/math.md) */
  double flops_loss_grad, flops_hessian, flops_trial, flops_cholesky, flops_total;
  /* the matrix-free step: one Hessian-vector product, the preconditioner, the products per
   * step assumed by the model (the dense step's flops_hessian, flops_cholesky are then 0) */
  double flops_hessvec, flops_precond, cg_iters;
  /* bytes sent per rank per Newton iteration (estimates) */
  double comm_ring, comm_allreduce, comm_hessian, comm_cholesky, comm_total;
  /* the mask and its row layout (docs/layout.md §6): flops count the unmasked pairs only */
  int64_t nseg;          /* segments (1: one sequence) */
  int causal, groups, max_group, zigzag;
  double pairs_total, pairs_max, pairs_avg; /* unmasked query-key pairs: all, and per rank */
} ar_plan;

/* Bytes of the Hessian assembly panel: the reduction goes through a buffer of at most this. */
#define AR_ASSEMBLY_BYTES (64.0 * 1048576.0)

/* Not collective.  pr = pc = 0: default grid; nb <= 0: default block size; tile <= 0: from
 * tile_mem_mb (as ar_eval_create chooses it); ls: the linear solver (AUTO: resolved by
 * ar_plan_linear_solver without a memory budget); with ROWS, nb is J J^T's block size. */
int ar_plan_compute(int64_t n, int d, int m, int ranks, int pr, int pc, int nb, int64_t tile, int64_t chunk,
                    double tile_mem_mb, ar_hessian_kind hk, int ls, const ar_mask *mask, ar_plan *plan);
/* Not collective: what --linear-solver auto picks: with rows_ok (the joint method, no ridge, not
 * --hessian exact) and n m < D the row-space step when it fits the budget (bytes per rank; <= 0:
 * no limit); else the dense Cholesky when it fits and its Hessian and factorisation cost no more
 * flops per Newton iteration than the matrix-free step's model; otherwise CG (if it fits). */
int ar_plan_linear_solver(int64_t n, int d, int m, int ranks, int pr, int pc, int nb, int64_t tile, int64_t chunk,
                          double tile_mem_mb, ar_hessian_kind hk, double budget, const ar_mask *mask, int rows_ok);
/* Not collective: the query rows per tile and key rows per chunk that ar_eval_create uses. */
void ar_plan_tiles(int64_t n, int d, int m, int ranks, int64_t tile, int64_t chunk, double tile_mem_mb,
                   int64_t *rows, int64_t *chunk_rows);
/* Not collective: default grid shape and block size. */
void ar_plan_default_grid(int ranks, int *pr, int *pc);
int ar_plan_default_nb(int N, int pr, int pc);

#endif

# shellcheck shell=bash
# Sourced by the scripts: MPI settings for running as root and oversubscribed on small machines,
# and the OpenBLAS kernels for this CPU.
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
# OpenBLAS picks its kernels when it loads; on a CPU newer than the library it falls back to its
# generic SSE ones (3-8x slower DGEMM).  Unless OPENBLAS_CORETYPE is already set (then it is kept),
# take the core `attnreg blas --suggest` names: the one that fits this CPU, printed only after a
# child process running it passed the DGEMM + Cholesky self-check (else it says so on stderr).
ar_env_bin=${ATTNREG:-$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)/${ATTNREG_BUILD:-build}/attnreg}
case ${ATTNREG_BUILD:-} in /*) ar_env_bin=${ATTNREG:-$ATTNREG_BUILD/attnreg} ;; esac
if [ -z "${OPENBLAS_CORETYPE:-}" ] && [ -x "$ar_env_bin" ]; then
  if ar_env_core=$("$ar_env_bin" blas --suggest) && [ -n "$ar_env_core" ]; then
    export OPENBLAS_CORETYPE=$ar_env_core
  fi
fi
unset ar_env_bin ar_env_core

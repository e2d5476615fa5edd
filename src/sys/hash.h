/* The 64-bit mixing function (splitmix64's finaliser) behind the counter-based random numbers
 * (generate.c) and the data fingerprint (problem.c). */
#ifndef AR_HASH_H
#define AR_HASH_H

#include <stdint.h>

static inline uint64_t ar_mix64(uint64_t z)
{
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

#endif

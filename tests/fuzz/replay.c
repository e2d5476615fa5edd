/* Replays a fuzz target's seed corpus without libFuzzer, so the ordinary CTest run checks every
 * seed (the release build; scripts/test's sanitizer build too): each file of each directory (or
 * each file) given is passed to LLVMFuzzerTestOneInput once; a crash or abort fails the test, and
 * so does accepting fewer than --min-accepted inputs as they are (the valid seeds must stay
 * valid: a parser that refused everything would pass a crash test).
 *   replay [--min-accepted N] DIR_OR_FILE... */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
extern int ar_fuzz_accepted;

static int replay_file(const char *path)
{
  FILE *f = fopen(path, "rb");
  if (!f) return fprintf(stderr, "replay: cannot open %s\n", path), 1;
  uint8_t *buf = NULL;
  size_t len = 0, cap = 0, got;
  do {
    if (len == cap) buf = realloc(buf, cap = cap ? 2 * cap : 1 << 16);
    if (!buf) return fclose(f), fprintf(stderr, "replay: out of memory\n"), 1;
    got = fread(buf + len, 1, cap - len, f);
    len += got;
  } while (got > 0);
  fclose(f);
  const int before = ar_fuzz_accepted;
  LLVMFuzzerTestOneInput(buf, len);
  printf("  %-60s %6zu bytes  %s\n", path, len, ar_fuzz_accepted > before ? "accepted" : "refused");
  free(buf);
  return 0;
}

static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int main(int argc, char **argv)
{
  int min_accepted = 0, files = 0, fail = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--min-accepted") && i + 1 < argc) {
      min_accepted = atoi(argv[++i]);
      continue;
    }
    struct stat st;
    if (stat(argv[i], &st) != 0) return fprintf(stderr, "replay: %s: not found\n", argv[i]), 1;
    if (!S_ISDIR(st.st_mode)) {
      fail |= replay_file(argv[i]), files++;
      continue;
    }
    DIR *d = opendir(argv[i]);
    if (!d) return fprintf(stderr, "replay: cannot read %s\n", argv[i]), 1;
    char *names[4096];
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) && n < 4096;)
      if (e->d_name[0] != '.') names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, n, sizeof names[0], cmp); /* the same order on every run */
    for (int k = 0; k < n; k++) {
      char path[8192];
      snprintf(path, sizeof path, "%s/%s", argv[i], names[k]);
      fail |= replay_file(path), files++;
      free(names[k]);
    }
  }
  if (files == 0) return fprintf(stderr, "replay: no inputs\n"), 1;
  printf("replay: %d inputs, %d accepted as given (at least %d expected)\n", files, ar_fuzz_accepted, min_accepted);
  return fail || ar_fuzz_accepted < min_accepted;
}

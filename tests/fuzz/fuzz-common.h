/* What every harness asserts about an engine call: a failure is a GError in
 * the VMOE_ERROR domain with a message, a success sets no error.  A
 * violation aborts, which libFuzzer reports as a crash with its input. */
#ifndef VMOE_FUZZ_COMMON_H
#define VMOE_FUZZ_COMMON_H

#include "vmoe/vmoe.h"

#include <stdio.h>
#include <stdlib.h>

#define FUZZ_ASSERT(cond, ...) \
  do { \
    if (!(cond)) { \
      fprintf (stderr, "%s:%d: %s: ", __FILE__, __LINE__, #cond); \
      fprintf (stderr, __VA_ARGS__); \
      fputc ('\n', stderr); \
      abort (); \
    } \
  } while (0)

static inline void
fuzz_check_outcome (gboolean ok, GError *error)
{
  if (ok) {
    FUZZ_ASSERT (error == NULL, "success with an error: %s", error->message);
    return;
  }
  FUZZ_ASSERT (error != NULL, "failure without a GError");
  FUZZ_ASSERT (error->domain == VMOE_ERROR, "error outside VMOE_ERROR: %s", error->message);
  FUZZ_ASSERT (error->message && error->message[0], "error without a message");
}

/* GLib's criticals and warnings report programming errors (a NULL where
 * none may be): each is a finding.  GLib's own fatal path ends in SIGTRAP,
 * which libFuzzer does not catch, so the handler aborts itself and libFuzzer
 * records the input. */
static void
fuzz_log_handler (const char *domain, GLogLevelFlags level, const char *message,
    gpointer data)
{
  g_log_default_handler (domain, level, message, data);
  if (level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING))
    abort ();
}

int LLVMFuzzerInitialize (int *argc, char ***argv);

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  g_log_set_default_handler (fuzz_log_handler, NULL);
  return 0;
}

/* Reads the fuzz input front to back; past the end everything is zero. */
typedef struct {
  const uint8_t *data;
  size_t size;
} FuzzInput;

static inline uint64_t
fuzz_take (FuzzInput *in, int bytes)
{
  uint64_t v = 0;
  for (int i = 0; i < bytes; i++) {
    v = v << 8;
    if (in->size) {
      v |= *in->data++;
      in->size--;
    }
  }
  return v;
}

/* An integer in [lo, hi]. */
static inline int
fuzz_int (FuzzInput *in, int lo, int hi)
{
  uint64_t span = (uint64_t) hi - (uint64_t) lo + 1;
  return lo + (int) (fuzz_take (in, span > 256 ? 2 : 1) % span);
}

#endif

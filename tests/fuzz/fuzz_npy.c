/* The .npy reader of tools/npy.c on arbitrary bytes.  npy_load reads a path,
 * so each input goes into an in-memory file (memfd) read back through
 * /proc/self/fd.  A mapping is not guarded by AddressSanitizer, so the
 * harness checks itself that an array it is given lies inside the file, and
 * reads every byte of it. */
#include "fuzz-common.h"
#include "npy.h"

#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static int memfd = -1;
static char *memfd_path;

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  if (memfd < 0) {
    memfd = memfd_create ("fuzz-npy", 0);
    FUZZ_ASSERT (memfd >= 0, "memfd_create failed");
    memfd_path = g_strdup_printf ("/proc/self/fd/%d", memfd);
  }
  FUZZ_ASSERT (ftruncate (memfd, 0) == 0 && pwrite (memfd, data, size, 0) == (ssize_t) size,
      "cannot write the memfd");

  NpyArray array;
  GError *error = NULL;
  gboolean ok = npy_load (memfd_path, &array, &error);
  fuzz_check_outcome (ok, error);
  g_clear_error (&error);
  if (!ok)
    return 0;
  gsize item = array.dtype == NPY_FLOAT32 ? 4 : 1, count = 1;
  for (int i = 0; i < array.ndim; i++) {
    FUZZ_ASSERT (array.shape[i] >= 0, "dimension %d is %" G_GINT64_FORMAT, i, array.shape[i]);
    count *= (gsize) array.shape[i];
  }
  FUZZ_ASSERT (count == array.count, "count %zu, shape says %zu", array.count, count);
  const guint8 *begin = (const guint8 *) g_mapped_file_get_contents (array.file);
  const guint8 *end = begin + g_mapped_file_get_length (array.file);
  const guint8 *p = array.data;
  /* An empty array has no bytes to point at (a copy of none is NULL). */
  if (!array.owned && count > 0)
    FUZZ_ASSERT (p >= begin && count * item <= (gsize) (end - p),
        "%zu elements of %zu bytes do not fit the %zu-byte file", count, item, size);
  FUZZ_ASSERT ((guintptr) p % item == 0, "misaligned data");
  volatile unsigned sum = 0;
  for (gsize i = 0; i < count * item; i++)
    sum += p[i];
  (void) sum;
  npy_clear (&array);
  return 0;
}

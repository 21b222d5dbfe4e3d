#include "npy.h"

#include "vmoe/vmoe.h"

#include <string.h>

static gboolean
npy_error (GError **error, const char *path, const char *what)
{
  g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
      "'%s' is not a supported .npy array: %s", path, what);
  return FALSE;
}

/* Finds `'key':` in the header dict and returns what follows it. */
static const char *
dict_value (const char *header, const char *key)
{
  char *pattern = g_strdup_printf ("'%s':", key);
  const char *p = strstr (header, pattern);
  g_free (pattern);
  if (!p)
    return NULL;
  p += strlen (key) + 3;
  while (*p == ' ')
    p++;
  return p;
}

gboolean
npy_load (const char *path, NpyArray *array, GError **error)
{
  memset (array, 0, sizeof *array);
  GError *io_error = NULL;
  GMappedFile *file = g_mapped_file_new (path, FALSE, &io_error);
  if (!file) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_IO, "cannot open '%s': %s",
        path, io_error->message);
    g_error_free (io_error);
    return FALSE;
  }
  const guint8 *bytes = (const guint8 *) g_mapped_file_get_contents (file);
  gsize size = g_mapped_file_get_length (file);
  char *header = NULL;
  gboolean ok = FALSE;

  if (size < 10 || memcmp (bytes, "\x93NUMPY", 6) != 0) {
    npy_error (error, path, "no NumPy magic");
    goto out;
  }
  gsize header_len, offset;
  if (bytes[6] == 1) {
    header_len = bytes[8] | (bytes[9] << 8);
    offset = 10;
  } else if ((bytes[6] == 2 || bytes[6] == 3) && size >= 12) {
    header_len = bytes[8] | (bytes[9] << 8) | ((gsize) bytes[10] << 16)
        | ((gsize) bytes[11] << 24);
    offset = 12;
  } else {
    npy_error (error, path, "unknown format version");
    goto out;
  }
  if (header_len > size - offset) {
    npy_error (error, path, "header runs past the end of the file");
    goto out;
  }
  header = g_strndup ((const char *) bytes + offset, header_len);
  offset += header_len;

  const char *descr = dict_value (header, "descr");
  if (descr && (g_str_has_prefix (descr, "'<f4'")))
    array->dtype = NPY_FLOAT32;
  else if (descr && (g_str_has_prefix (descr, "'|u1'") || g_str_has_prefix (descr, "'<u1'")))
    array->dtype = NPY_UINT8;
  else {
    npy_error (error, path, "dtype must be float32 ('<f4') or uint8 ('|u1')");
    goto out;
  }
  const char *order = dict_value (header, "fortran_order");
  if (!order || !g_str_has_prefix (order, "False")) {
    npy_error (error, path, "only C-order arrays are read");
    goto out;
  }
  const char *shape = dict_value (header, "shape");
  if (!shape || *shape != '(') {
    npy_error (error, path, "no shape tuple");
    goto out;
  }
  shape++;
  gsize count = 1;
  while (*shape != ')') {
    char *end;
    while (*shape == ' ' || *shape == ',')
      shape++;
    if (*shape == ')')
      break;
    gint64 dim = g_ascii_strtoll (shape, &end, 10);
    if (end == shape || dim < 0 || array->ndim == NPY_MAX_DIMS) {
      npy_error (error, path, "bad shape");
      goto out;
    }
    /* Callers take dimensions as int (image sides, the batch). */
    if (dim > G_MAXINT) {
      char *what = g_strdup_printf ("dimension %" G_GINT64_FORMAT " is over %d",
          dim, G_MAXINT);
      npy_error (error, path, what);
      g_free (what);
      goto out;
    }
    if (!g_size_checked_mul (&count, count, (gsize) dim)) {
      npy_error (error, path, "the shape's element count overflows");
      goto out;
    }
    array->shape[array->ndim++] = dim;
    shape = end;
  }
  gsize item = array->dtype == NPY_FLOAT32 ? 4 : 1, bytes_needed;
  if (!g_size_checked_mul (&bytes_needed, count, item)) {
    npy_error (error, path, "the shape's byte count overflows");
    goto out;
  }
  if (bytes_needed != size - offset) {
    char *what = g_strdup_printf ("the data is %" G_GSIZE_FORMAT " bytes, its shape "
        "says %" G_GSIZE_FORMAT " bytes", size - offset, bytes_needed);
    npy_error (error, path, what);
    g_free (what);
    goto out;
  }
  array->count = count;
  array->data = bytes + offset;
  if ((guintptr) array->data % item != 0)
    array->data = array->owned = g_memdup2 (bytes + offset, bytes_needed);
  array->file = g_mapped_file_ref (file);
  ok = TRUE;
out:
  g_free (header);
  g_mapped_file_unref (file);
  return ok;
}

void
npy_clear (NpyArray *array)
{
  if (array->file)
    g_mapped_file_unref (array->file);
  g_free (array->owned);
  memset (array, 0, sizeof *array);
}

/* A reader for NumPy .npy arrays (format versions 1-3), C order, float32 or
 * uint8: what `vmoe run` takes and what the parity tests load. */
#ifndef VMOE_NPY_H
#define VMOE_NPY_H

#include <glib.h>

#define NPY_MAX_DIMS 8

typedef enum { NPY_FLOAT32, NPY_UINT8 } NpyDtype;

typedef struct {
  NpyDtype dtype;
  int ndim;
  gint64 shape[NPY_MAX_DIMS];
  gsize count;                /* elements */
  GMappedFile *file;
  const void *data;           /* into file, or owned if it was misaligned */
  gpointer owned;
} NpyArray;

gboolean npy_load (const char *path, NpyArray *array, GError **error);
void npy_clear (NpyArray *array);

#endif

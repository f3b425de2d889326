/* protofs: a toy filesystem whose files all live in one image file. */
#ifndef PROTOFS_H
#define PROTOFS_H

#include <stddef.h>

#define PFS_MAX_FILES 16
#define PFS_NAME_MAX 32
#define PFS_FILE_MAX 1024

typedef struct protofs protofs;

/* Open the image at `path`, creating an empty one if it does not exist. */
protofs *pfs_open(const char *path);
/* Write the image back to disk and free `fs`. Returns 0 on success. */
int pfs_close(protofs *fs);

int pfs_write(protofs *fs, const char *name, const void *data, size_t len);
/* Returns the number of bytes copied into `buf`, or -1 if `name` does not exist. */
long pfs_read(protofs *fs, const char *name, void *buf, size_t cap);
int pfs_rename(protofs *fs, const char *from, const char *to);
/* Fills `names` with up to `max` file names; returns how many were written. */
int pfs_list(protofs *fs, char names[][PFS_NAME_MAX], int max);

#endif /* PROTOFS_H */

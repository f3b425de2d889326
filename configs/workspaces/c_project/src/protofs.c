#include "protofs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct entry {
    char name[PFS_NAME_MAX];
    size_t len;
    unsigned char data[PFS_FILE_MAX];
    int used;
};

struct protofs {
    char path[256];
    struct entry files[PFS_MAX_FILES];
};

static struct entry *find(protofs *fs, const char *name) {
    for (int i = 0; i < PFS_MAX_FILES; i++)
        if (fs->files[i].used && strcmp(fs->files[i].name, name) == 0)
            return &fs->files[i];
    return NULL;
}

protofs *pfs_open(const char *path) {
    protofs *fs = calloc(1, sizeof *fs);
    if (!fs || strlen(path) >= sizeof fs->path) {
        free(fs);
        return NULL;
    }
    strcpy(fs->path, path);
    FILE *f = fopen(path, "rb");
    if (f) {
        size_t n = fread(fs->files, sizeof fs->files, 1, f);
        fclose(f);
        if (n != 1) memset(fs->files, 0, sizeof fs->files); /* short or empty image */
    }
    return fs;
}

int pfs_close(protofs *fs) {
    FILE *f = fopen(fs->path, "wb");
    int ok = f && fwrite(fs->files, sizeof fs->files, 1, f) == 1;
    if (f) fclose(f);
    free(fs);
    return ok ? 0 : -1;
}

int pfs_write(protofs *fs, const char *name, const void *data, size_t len) {
    if (strlen(name) >= PFS_NAME_MAX || len > PFS_FILE_MAX) return -1;
    struct entry *e = find(fs, name);
    for (int i = 0; !e && i < PFS_MAX_FILES; i++)
        if (!fs->files[i].used) e = &fs->files[i];
    if (!e) return -1;
    strcpy(e->name, name);
    memcpy(e->data, data, len);
    e->len = len;
    e->used = 1;
    return 0;
}

long pfs_read(protofs *fs, const char *name, void *buf, size_t cap) {
    struct entry *e = find(fs, name);
    if (!e) return -1;
    size_t n = e->len < cap ? e->len : cap;
    memcpy(buf, e->data, n);
    return (long)n;
}

int pfs_rename(protofs *fs, const char *from, const char *to) {
    struct entry *e = find(fs, from);
    if (!e || strlen(to) >= PFS_NAME_MAX || find(fs, to)) return -1;
    strcpy(e->name, to);
    return 0;
}

int pfs_list(protofs *fs, char names[][PFS_NAME_MAX], int max) {
    int n = 0;
    for (int i = 0; i < PFS_MAX_FILES && n < max; i++)
        if (fs->files[i].used) strcpy(names[n++], fs->files[i].name);
    return n;
}

#include "protofs.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

int main(void) {
    const char *image = "test_filesystem.fs";
    remove(image);

    protofs *fs = pfs_open(image);
    assert(fs);
    assert(pfs_write(fs, "hello.txt", "hi", 2) == 0);
    assert(pfs_rename(fs, "hello.txt", "greeting.txt") == 0);
    assert(pfs_close(fs) == 0);

    fs = pfs_open(image); /* reopen: data must survive the round trip */
    char buf[8] = {0};
    assert(pfs_read(fs, "greeting.txt", buf, sizeof buf) == 2);
    assert(strcmp(buf, "hi") == 0);
    assert(pfs_read(fs, "hello.txt", buf, sizeof buf) == -1);

    char names[PFS_MAX_FILES][PFS_NAME_MAX];
    assert(pfs_list(fs, names, PFS_MAX_FILES) == 1);
    assert(pfs_close(fs) == 0);
    remove(image);
    puts("all protofs tests passed");
    return 0;
}

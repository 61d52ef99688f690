/* A small dynamically linked program for the test rootfs: it prints which C library the
 * dynamic loader gave it, read from its own memory map, so a test can see that the image's
 * libraries, not anything else, are the ones used. */
#include <gnu/libc-version.h>
#include <stdio.h>
#include <string.h>

int main(void) {
    char line[512];
    FILE *maps = fopen("/proc/self/maps", "r");
    const char *libc = "unknown";
    static char path[512];
    while (maps && fgets(line, sizeof line, maps)) {
        char *p = strchr(line, '/');
        if (p && strstr(p, "libc.so")) {
            p[strcspn(p, "\n")] = 0;
            snprintf(path, sizeof path, "%s", p);
            libc = path;
            break;
        }
    }
    printf("libc-hello: glibc %s from %s\n", gnu_get_libc_version(), libc);
    return 0;
}

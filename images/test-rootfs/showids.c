/* Prints the real and effective user ids, to show whether a setuid bit took effect.
 * Built static so that it runs in the busybox rootfs, which has no C library. */
#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>

int main(void)
{
	uid_t r, e, s;
	if (getresuid(&r, &e, &s) != 0) {
		perror("getresuid");
		return 1;
	}
	printf("uid=%u euid=%u\n", (unsigned)r, (unsigned)e);
	return 0;
}

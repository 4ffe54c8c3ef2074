/*
 * The classic chroot escape, run as root inside a container: chroot into a
 * subdirectory while keeping the working directory outside it, walk up with
 * "..", and chroot there. If the container were only chrooted, this would
 * reach the guest agent's initramfs (/init, /lower). Prints "contained" or
 * "escaped".
 */
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

int main(void)
{
	mkdir("/tmp/escape-dir", 0755);
	if (chroot("/tmp/escape-dir") != 0) {
		perror("chroot");
		return 2;
	}
	for (int i = 0; i < 64; i++)
		if (chdir("..") != 0)
			break;
	if (chroot(".") != 0) {
		perror("chroot .");
		return 2;
	}
	if (access("/init", F_OK) == 0 || access("/lower", F_OK) == 0) {
		puts("escaped");
		return 1;
	}
	puts("contained");
	return 0;
}

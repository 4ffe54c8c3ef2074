/*
 * The end-to-end boot test's init (PID 1 in the guest). It makes the real
 * system calls the test asserts on and prints one line per check, then
 * powers the guest off. Built static by the test harness with the host's gcc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 1)
		n = sizeof(buf) - 1;
	/* One write(2) per line: the syscall under test. */
	if (write(1, buf, n) != n)
		_exit(10);
}

static void fail(const char *what)
{
	say("husk-test: FAIL %s (errno %d)\n", what, errno);
	reboot(RB_POWER_OFF);
	_exit(1);
}

int main(void)
{
	say("husk-test: write ok\n");

	say("husk-test: getpid %d\n", (int)getpid());

	struct timespec a, b;
	if (clock_gettime(CLOCK_MONOTONIC, &a) || clock_gettime(CLOCK_MONOTONIC, &b))
		fail("clock_gettime");
	long long na = a.tv_sec * 1000000000LL + a.tv_nsec;
	long long nb = b.tv_sec * 1000000000LL + b.tv_nsec;
	say("husk-test: clock_gettime %s\n", (na > 0 && nb >= na) ? "monotonic" : "BROKEN");

	size_t len = 4 << 20;
	unsigned char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		fail("mmap");
	for (size_t i = 0; i < len; i += 4096)
		m[i] = (unsigned char)(i >> 12);
	unsigned long sum = 0;
	for (size_t i = 0; i < len; i += 4096)
		sum += m[i];
	if (munmap(m, len))
		fail("munmap");
	say("husk-test: mmap %zu pages sum %lu\n", len / 4096, sum);

	int fd = open("/etc/husk-test.txt", O_RDONLY);
	if (fd < 0)
		fail("open");
	char text[128] = { 0 };
	ssize_t n = read(fd, text, sizeof(text) - 1);
	if (n < 0)
		fail("read");
	close(fd);
	text[strcspn(text, "\n")] = 0;
	say("husk-test: read \"%s\"\n", text);

	pid_t child = fork();
	if (child < 0)
		fail("fork");
	if (child == 0)
		_exit(3);
	int status = 0;
	if (waitpid(child, &status, 0) != child)
		fail("waitpid");
	say("husk-test: child %s %d\n", WIFEXITED(status) ? "exited" : "died",
	    WIFEXITED(status) ? WEXITSTATUS(status) : -1);

	say("husk-test: done\n");
	reboot(RB_POWER_OFF);
	fail("reboot");
	return 1;
}

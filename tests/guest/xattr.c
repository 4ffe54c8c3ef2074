/* Extended attributes through virtio-fs, run as root in the container:
 * for each path, set and read back user.husk, then try trusted.* (needs
 * CAP_SYS_ADMIN on the host, which the virtio-fs server does not keep)
 * and security.capability (file capabilities, refused by the server). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/xattr.h>

int main(int argc, char **argv) {
    static const char cap[20] = {1, 0, 0, 2};
    for (int i = 1; i < argc; i++) {
        const char *p = argv[i];
        char buf[64];
        if (setxattr(p, "user.husk", "hello", 5, 0) != 0) {
            printf("%s user: %s\n", p, strerror(errno));
            continue;
        }
        ssize_t n = getxattr(p, "user.husk", buf, sizeof buf);
        printf("%s user: %.*s\n", p, n < 0 ? 0 : (int)n, buf);
        printf("%s trusted: %s\n", p,
               setxattr(p, "trusted.husk", "x", 1, 0) == 0 ? "set" : strerror(errno));
        printf("%s security: %s\n", p,
               setxattr(p, "security.capability", cap, sizeof cap, 0) == 0 ? "set"
                                                                         : strerror(errno));
    }
    return 0;
}

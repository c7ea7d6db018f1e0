/* A plain C epoll echo server: the baseline that shows what any event loop on
 * this machine can do (issue 20). Level-triggered, one thread, nothing pooled.
 *
 *   epoll_echo [--addr 127.0.0.1:PORT]   (port 0 picks a free one)
 *
 * Prints "listening on ADDR" and echoes every byte back until killed. A reply the
 * socket cannot take at once is kept (per connection) and finished on EPOLLOUT.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 65536
#define MAX_FD 65536

struct conn {
    char *pending; /* bytes read but not yet written back */
    size_t len, off;
};

static struct conn conns[MAX_FD];
static char buf[BUF];

static void drop(int ep, int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    free(conns[fd].pending);
    memset(&conns[fd], 0, sizeof conns[fd]);
}

/* Writes what is pending; returns 0 when all is out, 1 to wait for EPOLLOUT, -1 on error. */
static int flush(int fd) {
    struct conn *c = &conns[fd];
    while (c->off < c->len) {
        ssize_t n = send(fd, c->pending + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (n < 0) return errno == EAGAIN ? 1 : -1;
        c->off += (size_t)n;
    }
    c->len = c->off = 0;
    return 0;
}

int main(int argc, char **argv) {
    const char *addr = "127.0.0.1:0";
    for (int i = 1; i + 1 < argc; i += 2)
        if (!strcmp(argv[i], "--addr")) addr = argv[i + 1];
    char host[64];
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= sizeof host) { fprintf(stderr, "bad --addr %s\n", addr); return 2; }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = 0;
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(colon + 1)) };
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) { fprintf(stderr, "bad host %s\n", host); return 2; }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) || listen(lfd, 4096)) { perror("listen"); return 1; }
    socklen_t sl = sizeof sa;
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    printf("listening on %s:%d\n", host, ntohs(sa.sin_port));
    fflush(stdout);
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = lfd }, events[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); return 1; }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int c;
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (c >= MAX_FD) { close(c); continue; }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = { .events = EPOLLIN, .data.fd = c };
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            if (events[i].events & EPOLLOUT) {
                int r = flush(fd);
                if (r < 0) { drop(ep, fd); continue; }
                if (r == 0) {
                    struct epoll_event cev = { .events = EPOLLIN, .data.fd = fd };
                    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &cev);
                }
                continue;
            }
            ssize_t got = recv(fd, buf, BUF, 0);
            if (got == 0 || (got < 0 && errno != EAGAIN)) { drop(ep, fd); continue; }
            if (got < 0) continue;
            ssize_t sent = send(fd, buf, (size_t)got, MSG_NOSIGNAL);
            if (sent < 0 && errno != EAGAIN) { drop(ep, fd); continue; }
            if (sent < 0) sent = 0;
            if (sent < got) {
                /* Keep the rest and stop reading until it is out. */
                struct conn *c = &conns[fd];
                c->pending = realloc(c->pending, (size_t)(got - sent));
                if (!c->pending) { drop(ep, fd); continue; }
                memcpy(c->pending, buf + sent, (size_t)(got - sent));
                c->len = (size_t)(got - sent);
                c->off = 0;
                struct epoll_event cev = { .events = EPOLLOUT, .data.fd = fd };
                epoll_ctl(ep, EPOLL_CTL_MOD, fd, &cev);
            }
        }
    }
}

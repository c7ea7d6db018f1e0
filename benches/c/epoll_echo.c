/* A plain C epoll echo server: the baseline that shows what any event loop on
 * this machine can do (issue 20). Level-triggered, one thread, nothing pooled.
 *
 *   epoll_echo [--addr 127.0.0.1:PORT] [--hop]   (port 0 picks a free one)
 *   epoll_echo --handoff N
 *
 * Prints "listening on ADDR" and echoes every byte back until killed. A reply the
 * socket cannot take at once is kept (per connection) and finished on EPOLLOUT.
 *
 * --hop: every chunk read goes to a child process and back through shared memory
 * before it is written, each side asleep on a futex while the other works and
 * woken only when it sleeps (issue 18): the floor of a relay with a backend
 * process, with no ring, framing or event loop of its own. The child shares the
 * parent's CPUs (relay_bench pins both to the servers' core, as the relay and its
 * backend are) and dies with it.
 *
 * --handoff N: no sockets; the hop's hand-off alone, N times: a 64-byte message to
 * the same child and back through the same lanes. Prints "handoff X us" (the mean
 * round trip) and exits: what any relay with a backend process on this core pays
 * per request before it touches a socket.
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
#include <linux/futex.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
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

/* --hop: one direction between the processes: the sequence number of the last
 * message, whether its reader sleeps (then the writer wakes it), the message. */
struct lane {
    _Atomic unsigned seq;
    _Atomic unsigned sleeping;
    size_t len;
    char msg[BUF];
};

static void put(struct lane *l, unsigned seq) {
    atomic_store(&l->seq, seq);
    if (atomic_exchange(&l->sleeping, 0)) syscall(SYS_futex, &l->seq, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void take(struct lane *l, unsigned seq) {
    while (atomic_load(&l->seq) != seq) {
        atomic_store(&l->sleeping, 1);
        if (atomic_load(&l->seq) != seq) syscall(SYS_futex, &l->seq, FUTEX_WAIT, seq - 1, NULL, NULL, 0);
        atomic_store(&l->sleeping, 0);
    }
}

/* The backend: each message straight back, copied as a backend copies its reply. */
static void backend(struct lane *in, struct lane *out, pid_t parent) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* The parent may have died before the line above. */
    if (getppid() != parent) _exit(0);
    for (unsigned s = 1;; s++) {
        take(in, s);
        memcpy(out->msg, in->msg, in->len);
        out->len = in->len;
        put(out, s);
    }
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
    /* A benchmark's server must not outlive the benchmark. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    const char *addr = "127.0.0.1:0";
    int hop = 0;
    long handoffs = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--hop")) hop = 1;
        else if (!strcmp(argv[i], "--addr") && i + 1 < argc) addr = argv[++i];
        else if (!strcmp(argv[i], "--handoff") && i + 1 < argc) {
            handoffs = atol(argv[++i]);
            if (handoffs <= 0) { fprintf(stderr, "bad --handoff %s\n", argv[i]); return 2; }
            hop = 1;
        }
    }
    /* A child that never answers must not hang the benchmark. */
    if (handoffs) alarm(60);
    struct lane *lanes = NULL;
    unsigned seq = 0;
    if (hop) {
        lanes = mmap(NULL, 2 * sizeof *lanes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (lanes == MAP_FAILED) { perror("mmap"); return 1; }
        pid_t parent = getpid();
        pid_t child = fork();
        if (child < 0) { perror("fork"); return 1; }
        if (child == 0) backend(&lanes[0], &lanes[1], parent);
        if (handoffs) {
            memset(lanes[0].msg, 42, 64);
            struct timespec a, b;
            clock_gettime(CLOCK_MONOTONIC, &a);
            for (long i = 0; i < handoffs; i++) {
                lanes[0].len = 64;
                put(&lanes[0], ++seq);
                take(&lanes[1], seq);
                if (lanes[1].len != 64 || lanes[1].msg[63] != 42) { fprintf(stderr, "bad reply\n"); return 1; }
            }
            clock_gettime(CLOCK_MONOTONIC, &b);
            double ns = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
            printf("handoff %.4f us\n", ns / 1e3 / (double)handoffs);
            return 0;
        }
    }
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
            char *data = hop ? lanes[0].msg : buf;
            ssize_t got = recv(fd, data, BUF, 0);
            if (got == 0 || (got < 0 && errno != EAGAIN)) { drop(ep, fd); continue; }
            if (got < 0) continue;
            if (hop) {
                lanes[0].len = (size_t)got;
                put(&lanes[0], ++seq);
                take(&lanes[1], seq);
                data = lanes[1].msg;
            }
            ssize_t sent = send(fd, data, (size_t)got, MSG_NOSIGNAL);
            if (sent < 0 && errno != EAGAIN) { drop(ep, fd); continue; }
            if (sent < 0) sent = 0;
            if (sent < got) {
                /* Keep the rest and stop reading until it is out. */
                struct conn *c = &conns[fd];
                c->pending = realloc(c->pending, (size_t)(got - sent));
                if (!c->pending) { drop(ep, fd); continue; }
                memcpy(c->pending, data + sent, (size_t)(got - sent));
                c->len = (size_t)(got - sent);
                c->off = 0;
                struct epoll_event cev = { .events = EPOLLOUT, .data.fd = fd };
                epoll_ctl(ep, EPOLL_CTL_MOD, fd, &cev);
            }
        }
    }
}

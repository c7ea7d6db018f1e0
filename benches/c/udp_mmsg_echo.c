/* A plain C UDP echo server batched as far as the syscalls go: the floor that
 * shows what any UDP server on this machine can do (issue 15). One thread, one
 * socket, blocking: recvmmsg(MSG_WAITFORONE) takes up to 64 datagrams per call,
 * sendmmsg sends each back to its sender in one call. No event loop, no pooling.
 *
 *   udp_mmsg_echo [--addr 127.0.0.1:PORT] [--epoll] [--gso]   (port 0 picks a free one)
 *
 * --epoll: the socket is non-blocking and waited on with an edge-triggered epoll,
 * each edge drained with recvmmsg until EAGAIN: the same loop, as an event loop
 * must run it (an epoll entry on the socket's wait queue, an epoll_wait per
 * drain). The floor of any readiness-based UDP server here.
 *
 * --gso: consecutive replies to one sender with one length go out as one message
 * with UDP_SEGMENT (UDP GSO), as berth's batches send them: the same floor for a
 * server that groups its sends.
 *
 * Prints "listening on ADDR" and echoes every datagram until killed. The socket's
 * SO_RCVBUF is 4 MiB (capped by net.core.rmem_max), as berth's and tokio's get.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>
#include <stdint.h>
#include <netinet/udp.h>
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

#define BATCH 64
#define SIZE 2048

static char bufs[BATCH][SIZE];
static struct sockaddr_in peers[BATCH];
static struct iovec iov[BATCH];
static struct mmsghdr in[BATCH], out[BATCH], groups[BATCH];
/* A UDP_SEGMENT control message per group. */
static union { struct cmsghdr align; char bytes[CMSG_SPACE(sizeof(uint16_t))]; } control[BATCH];

/* Groups the n replies in out[] (consecutive, one peer, one length; the last of a
 * group may be shorter) into groups[]; returns how many messages. */
static int group(int n) {
    int k = 0;
    for (int i = 0; i < n; k++) {
        size_t seg = iov[i].iov_len, total = seg;
        int j = i + 1;
        while (j < n && j - i < 64 && iov[j].iov_len <= seg && iov[j].iov_len > 0 && total + iov[j].iov_len <= 65000
               && out[j].msg_hdr.msg_namelen == out[i].msg_hdr.msg_namelen
               && !memcmp(&peers[j], &peers[i], out[i].msg_hdr.msg_namelen)) {
            total += iov[j].iov_len;
            if (iov[j++].iov_len < seg) break;
        }
        groups[k].msg_hdr = out[i].msg_hdr;
        groups[k].msg_hdr.msg_iovlen = (size_t)(j - i);
        if (j - i > 1) {
            struct cmsghdr *cm = &control[k].align;
            cm->cmsg_level = SOL_UDP;
            cm->cmsg_type = UDP_SEGMENT;
            cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t s = (uint16_t)seg;
            memcpy(CMSG_DATA(cm), &s, sizeof s);
            groups[k].msg_hdr.msg_control = control[k].bytes;
            groups[k].msg_hdr.msg_controllen = sizeof control[k].bytes;
        } else {
            groups[k].msg_hdr.msg_control = NULL;
            groups[k].msg_hdr.msg_controllen = 0;
        }
        i = j;
    }
    return k;
}

int main(int argc, char **argv) {
    /* A benchmark's server must not outlive the benchmark. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    const char *addr = "127.0.0.1:0";
    int use_epoll = 0, gso = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--epoll")) use_epoll = 1;
        else if (!strcmp(argv[i], "--gso")) gso = 1;
        else if (!strcmp(argv[i], "--addr") && i + 1 < argc) addr = argv[++i];
    }
    char host[64];
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= sizeof host) { fprintf(stderr, "bad --addr %s\n", addr); return 2; }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = 0;
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(colon + 1)) };
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) { fprintf(stderr, "bad host %s\n", host); return 2; }
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | (use_epoll ? SOCK_NONBLOCK : 0), 0);
    int rcvbuf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa)) { perror("bind"); return 1; }
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    printf("listening on %s:%d\n", host, ntohs(sa.sin_port));
    fflush(stdout);
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = SIZE;
        in[i].msg_hdr.msg_iov = &iov[i];
        in[i].msg_hdr.msg_iovlen = 1;
        in[i].msg_hdr.msg_name = &peers[i];
        out[i].msg_hdr = in[i].msg_hdr;
    }
    int ep = -1;
    if (use_epoll) {
        struct epoll_event ev = { .events = EPOLLIN | EPOLLET, .data.fd = fd };
        ep = epoll_create1(EPOLL_CLOEXEC);
        if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev)) { perror("epoll"); return 1; }
    }
    for (;;) {
        for (int i = 0; i < BATCH; i++) in[i].msg_hdr.msg_namelen = sizeof peers[i];
        int n = recvmmsg(fd, in, BATCH, use_epoll ? 0 : MSG_WAITFORONE, NULL);
        if (n < 0 && use_epoll && errno == EAGAIN) {
            /* Drained: wait for the next edge. */
            struct epoll_event ev;
            if (epoll_wait(ep, &ev, 1, -1) < 0 && errno != EINTR) { perror("epoll_wait"); return 1; }
            continue;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("recvmmsg");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            out[i].msg_hdr.msg_namelen = in[i].msg_hdr.msg_namelen;
            iov[i].iov_len = in[i].msg_len;
        }
        struct mmsghdr *msgs = gso ? groups : out;
        int count = gso ? group(n) : n;
        for (int done = 0; done < count;) {
            int m = sendmmsg(fd, msgs + done, (unsigned)(count - done), 0);
            if (m < 0) {
                if (errno == EINTR) continue;
                /* A datagram the kernel refused (an ICMP error queued for us, say): skip it
                 * (with --gso, the whole group: enough for a floor on loopback). */
                done++;
                continue;
            }
            done += m;
        }
        for (int i = 0; i < n; i++) iov[i].iov_len = SIZE;
        if (use_epoll && n < BATCH) {
            /* A short batch emptied the queue: every datagram that comes after it
             * raises a new edge, so wait for that instead of paying an EAGAIN. */
            struct epoll_event ev;
            if (epoll_wait(ep, &ev, 1, -1) < 0 && errno != EINTR) { perror("epoll_wait"); return 1; }
        }
    }
}

/*
 * The C test program of berth-ipc-ffi, run by tests/interop.rs against a Rust
 * echo process that created the named duplex NAME (NAME.a2b: Rust -> C,
 * NAME.b2a: C -> Rust).
 *
 *   exchange NAME COUNT
 *
 * 1. Bad input: NULL, a closed handle, a length over the maximum, calls out of
 *    order: each must be its error code.
 * 2. COUNT messages each way: a sender thread writes them (reserve/commit and
 *    send, alternately), the main thread checks every echo (lent in place, and
 *    copied out).
 * 3. Two threads on one end: the second gets BERTH_IPC_BUSY.
 * 4. Prints WAITING and blocks in a receive: the harness SIGKILLs the Rust side
 *    and times how long until this prints "RESULT <code>" (it must be
 *    BERTH_IPC_PEER_DEAD).
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "berth_ipc.h"

static BerthIpcSender tx;
static BerthIpcReceiver rx;
static long count;

#define CHECK(call, want)                                                          \
    do {                                                                           \
        int32_t rc_ = (call);                                                      \
        if (rc_ != (want)) {                                                       \
            fprintf(stderr, "%s:%d: %s = %d (%s), want %d\n", __FILE__, __LINE__, \
                    #call, rc_, berth_ipc_error_message(rc_), (want));             \
            exit(2);                                                               \
        }                                                                          \
    } while (0)

/* Message i: its 8-byte sequence number, then bytes that follow from it. */
static size_t message(long i, uint8_t *buf) {
    size_t len = 8 + (size_t)((i * 37) % 120);
    memcpy(buf, &i, 8);
    for (size_t k = 8; k < len; k++) buf[k] = (uint8_t)(i + (long)k);
    return len;
}

static void check(long i, const uint8_t *got, size_t len) {
    uint8_t want[256];
    size_t n = message(i, want);
    if (len != n || memcmp(got, want, n) != 0) {
        long seq;
        memcpy(&seq, got, 8);
        fprintf(stderr, "message %ld: got %zu bytes (sequence %ld), want %zu\n", i, len, seq, n);
        exit(3);
    }
}

static void *send_all(void *arg) {
    (void)arg;
    uint8_t buf[256];
    for (long i = 0; i < count; i++) {
        size_t len = message(i, buf);
        if (i % 2 == 0) {
            uint8_t *room;
            CHECK(berth_ipc_reserve(tx, len, -1, &room), BERTH_IPC_OK);
            memcpy(room, buf, len);
            CHECK(berth_ipc_commit(tx, len), BERTH_IPC_OK);
        } else {
            CHECK(berth_ipc_send(tx, buf, len, -1), BERTH_IPC_OK);
        }
    }
    return NULL;
}

static int32_t blocked_result;

static void *block_in_recv(void *arg) {
    (void)arg;
    const uint8_t *p;
    size_t len;
    blocked_result = berth_ipc_recv(rx, 400, &p, &len);
    return NULL;
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: exchange NAME COUNT\n");
        return 64;
    }
    count = atol(argv[2]);
    char a2b[256], b2a[256];
    snprintf(a2b, sizeof a2b, "%s.a2b", argv[1]);
    snprintf(b2a, sizeof b2a, "%s.b2a", argv[1]);

    BerthIpcChannel in, out;
    CHECK(berth_ipc_channel_open_named(a2b, &in), BERTH_IPC_OK);
    CHECK(berth_ipc_channel_open_named(b2a, &out), BERTH_IPC_OK);
    CHECK(berth_ipc_receiver_open(in, &rx), BERTH_IPC_OK);
    CHECK(berth_ipc_sender_open(out, &tx), BERTH_IPC_OK);

    /* 1. Bad input. */
    uint64_t max;
    CHECK(berth_ipc_channel_max_message(out, &max), BERTH_IPC_OK);
    static uint8_t big[1 << 17];
    CHECK(berth_ipc_try_send(tx, big, (size_t)max + 1), BERTH_IPC_TOO_LARGE);
    CHECK(berth_ipc_send(tx, big, sizeof big, 10), BERTH_IPC_TOO_LARGE);
    CHECK(berth_ipc_try_send(tx, NULL, 5), BERTH_IPC_NULL);
    CHECK(berth_ipc_recv(rx, 0, NULL, NULL), BERTH_IPC_NULL);
    CHECK(berth_ipc_release(rx), BERTH_IPC_STATE);
    CHECK(berth_ipc_commit(tx, 1), BERTH_IPC_STATE);
    CHECK(berth_ipc_try_send(0, big, 1), BERTH_IPC_BAD_HANDLE);
    CHECK(berth_ipc_try_send(in, big, 1), BERTH_IPC_BAD_HANDLE); /* a channel is not a sender */
    BerthIpcChannel gone;
    CHECK(berth_ipc_channel_create(4096, 0, 0, &gone), BERTH_IPC_OK);
    CHECK(berth_ipc_channel_close(gone), BERTH_IPC_OK);
    BerthIpcSender none;
    CHECK(berth_ipc_sender_open(gone, &none), BERTH_IPC_BAD_HANDLE);
    CHECK(berth_ipc_channel_close(gone), BERTH_IPC_BAD_HANDLE);
    CHECK(berth_ipc_channel_open_named("../etc", &gone), BERTH_IPC_INVALID);

    /* 2. COUNT messages each way. */
    pthread_t sender;
    if (pthread_create(&sender, NULL, send_all, NULL) != 0) return 4;
    uint8_t copy[256];
    for (long i = 0; i < count; i++) {
        size_t len;
        if (i % 3 == 0) {
            CHECK(berth_ipc_recv_copy(rx, copy, sizeof copy, &len, 10000), BERTH_IPC_OK);
            check(i, copy, len);
        } else {
            const uint8_t *p;
            CHECK(berth_ipc_recv(rx, 10000, &p, &len), BERTH_IPC_OK);
            check(i, p, len);
            CHECK(berth_ipc_release(rx), BERTH_IPC_OK);
        }
    }
    pthread_join(sender, NULL);
    printf("EXCHANGED %ld\n", count);

    /* 3. Two threads on one end. */
    pthread_t blocker;
    if (pthread_create(&blocker, NULL, block_in_recv, NULL) != 0) return 4;
    sleep_ms(100);
    const uint8_t *p;
    size_t len;
    CHECK(berth_ipc_try_recv(rx, &p, &len), BERTH_IPC_BUSY);
    CHECK(berth_ipc_receiver_close(rx), BERTH_IPC_BUSY);
    pthread_join(blocker, NULL);
    CHECK(blocked_result, BERTH_IPC_TIMED_OUT);

    /* 4. The peer's death, while blocked. */
    printf("WAITING\n");
    fflush(stdout);
    int32_t rc = berth_ipc_recv(rx, 10000, &p, &len);
    printf("RESULT %d %s\n", rc, berth_ipc_error_message(rc));
    fflush(stdout);
    CHECK(berth_ipc_sender_close(tx), BERTH_IPC_OK);
    CHECK(berth_ipc_receiver_close(rx), BERTH_IPC_OK);
    CHECK(berth_ipc_channel_close(in), BERTH_IPC_OK);
    CHECK(berth_ipc_channel_close(out), BERTH_IPC_OK);
    return rc == BERTH_IPC_PEER_DEAD ? 0 : 1;
}

/*
 * berth-ipc from C: one thread, one poll(2) loop over both wake descriptors.
 *
 * Talks to a Rust echo peer that created the named duplex NAME with wake
 * descriptors (NAME.a2b: peer -> us, NAME.b2a: us -> peer): sends COUNT
 * messages and checks that each comes back, never blocking in the library.
 *
 *   cc -I crates/berth-ipc-ffi/include echo_poll.c -L target/debug -lberth_ipc_ffi
 *   ./a.out NAME COUNT
 */
#define _POSIX_C_SOURCE 200809L
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "berth_ipc.h"

static int fail(const char *what, int32_t rc) {
    char detail[256];
    berth_ipc_last_error(detail, sizeof detail);
    fprintf(stderr, "%s: %s (%s)\n", what, berth_ipc_error_message(rc), detail);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: echo_poll NAME COUNT\n");
        return 64;
    }
    long count = atol(argv[2]);
    char a2b[256], b2a[256];
    snprintf(a2b, sizeof a2b, "%s.a2b", argv[1]);
    snprintf(b2a, sizeof b2a, "%s.b2a", argv[1]);

    // ANCHOR: open
    BerthIpcChannel in, out;
    BerthIpcReceiver rx;
    BerthIpcSender tx;
    int32_t rc;
    if ((rc = berth_ipc_channel_open_named(a2b, &in)) != BERTH_IPC_OK) return fail("open a2b", rc);
    if ((rc = berth_ipc_channel_open_named(b2a, &out)) != BERTH_IPC_OK) return fail("open b2a", rc);
    if ((rc = berth_ipc_receiver_open(in, &rx)) != BERTH_IPC_OK) return fail("receiver", rc);
    if ((rc = berth_ipc_sender_open(out, &tx)) != BERTH_IPC_OK) return fail("sender", rc);
    struct pollfd fds[2] = {{.events = POLLIN}, {.events = POLLIN}};
    if ((rc = berth_ipc_receiver_wake_fd(rx, &fds[0].fd)) != BERTH_IPC_OK) return fail("rx wake fd", rc);
    if ((rc = berth_ipc_sender_wake_fd(tx, &fds[1].fd)) != BERTH_IPC_OK) return fail("tx wake fd", rc);
    // ANCHOR_END: open

    // ANCHOR: loop
    long sent = 0, got = 0;
    while (got < count) {
        int progress = 0;
        while (sent < count) {
            char msg[32];
            int len = snprintf(msg, sizeof msg, "message %ld", sent);
            rc = berth_ipc_try_send(tx, (const uint8_t *)msg, (size_t)len);
            if (rc == BERTH_IPC_FULL) break;
            if (rc != BERTH_IPC_OK) return fail("send", rc);
            sent++;
            progress = 1;
        }
        for (;;) {
            const uint8_t *data;
            size_t len;
            rc = berth_ipc_try_recv(rx, &data, &len);
            if (rc == BERTH_IPC_EMPTY) break;
            if (rc != BERTH_IPC_OK) return fail("receive", rc);
            char want[32];
            int n = snprintf(want, sizeof want, "message %ld", got);
            if (len != (size_t)n || memcmp(data, want, len) != 0) {
                fprintf(stderr, "echo %ld is wrong\n", got);
                return 1;
            }
            berth_ipc_release(rx);
            got++;
            progress = 1;
        }
        if (progress) continue;
        // Nothing to do: say we sleep (each arm re-checks its ring), then poll.
        int rx_sleeps = 0, tx_sleeps = 1;
        if ((rc = berth_ipc_receiver_arm(rx, &rx_sleeps)) != BERTH_IPC_OK) return fail("arm rx", rc);
        if (sent < count && (rc = berth_ipc_sender_arm(tx, 32, &tx_sleeps)) != BERTH_IPC_OK) return fail("arm tx", rc);
        if (!rx_sleeps || !tx_sleeps) continue;
        // Wait until a descriptor turns readable, or at most as long as the ends
        // allow before they must look at their peer themselves (-1: no bound, a
        // peer's death writes the descriptor too); 10 s at most here.
        int rx_ms = -1, tx_ms = -1, wait_ms = 10000;
        if ((rc = berth_ipc_receiver_max_sleep_ms(rx, &rx_ms)) != BERTH_IPC_OK) return fail("max sleep rx", rc);
        if (sent < count && (rc = berth_ipc_sender_max_sleep_ms(tx, &tx_ms)) != BERTH_IPC_OK) return fail("max sleep tx", rc);
        if (rx_ms >= 0 && rx_ms < wait_ms) wait_ms = rx_ms;
        if (tx_ms >= 0 && tx_ms < wait_ms) wait_ms = tx_ms;
        int ready = poll(fds, sent < count ? 2 : 1, wait_ms);
        if (ready < 0 || (ready == 0 && wait_ms == 10000)) {
            fprintf(stderr, "no wake-up in 10 s\n");
            return 1;
        }
    }
    // ANCHOR_END: loop
    printf("echoed %ld messages\n", got);
    berth_ipc_sender_close(tx);
    berth_ipc_receiver_close(rx);
    berth_ipc_channel_close(in);
    berth_ipc_channel_close(out);
    return 0;
}

"""Talks to a Rust echo peer over berth-ipc, from Python with ctypes.

    python3 echo_client.py path/to/libberth_ipc_ffi.so NAME COUNT

The peer created the named duplex NAME (NAME.a2b: peer -> us, NAME.b2a: us ->
peer) and echoes every message until our sender closes. Exits 0 and prints "ok"
when every echo matched and each error came back as its exception.
"""

import sys

from berth_ipc import Channel, Closed, Empty, Lib, OpenFailed, TooLarge

# ANCHOR: main
def main(lib_path, name, count):
    lib = Lib(lib_path)
    inbound = Channel.open_named(f"{name}.a2b", lib)
    outbound = Channel.open_named(f"{name}.b2a", lib)
    rx, tx = inbound.receiver(), outbound.sender()

    for i in range(count):
        msg = f"message {i}".encode() * (1 + i % 7)
        tx.send(msg, timeout_ms=10_000)
        echo = rx.recv(timeout_ms=10_000)
        assert echo == msg, (i, echo, msg)

    # Errors arrive as exceptions named after their codes.
    try:
        rx.recv(timeout_ms=0)
        raise AssertionError("an empty ring gave a message")
    except Empty:
        pass
    try:
        tx.send(b"x" * (outbound.max_message() + 1))
        raise AssertionError("an oversized message was sent")
    except TooLarge as e:
        assert e.code == 6
    try:
        Channel.open_named("no-such-berth-channel", lib)
        raise AssertionError("opened a channel that does not exist")
    except OpenFailed as e:
        assert "No such file" in str(e), e

    # Our close ends the peer's loop; it closes its side, and we see that.
    tx.close()
    try:
        rx.recv(timeout_ms=10_000)
        raise AssertionError("a message after the peer closed")
    except Closed:
        pass
    rx.close()
    inbound.close()
    outbound.close()
    print("ok")
# ANCHOR_END: main


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))

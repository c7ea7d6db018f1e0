"""berth-ipc from Python, over its C ABI with ctypes (standard library only).

    ch = Channel.open_named("name.a2b", lib)
    rx = ch.receiver()
    msg = rx.recv(timeout_ms=1000)   # bytes, copied out of the ring

Every status code but BERTH_IPC_OK raises the BerthIpcError subclass named after
it (Empty, Full, TimedOut, Closed, PeerDead, TooLarge, ...), carrying the code
and the library's message.
"""

import ctypes

# ANCHOR: errors
class BerthIpcError(Exception):
    """A berth-ipc status code other than BERTH_IPC_OK."""

    code = None

    def __init__(self, code, message):
        super().__init__(f"{message} (code {code})")
        self.code = code


class Empty(BerthIpcError): code = 1
class Full(BerthIpcError): code = 2
class TimedOut(BerthIpcError): code = 3
class Closed(BerthIpcError): code = 4
class PeerDead(BerthIpcError): code = 5
class TooLarge(BerthIpcError): code = 6
class Corrupted(BerthIpcError): code = 7
class NullPointer(BerthIpcError): code = 8
class BadHandle(BerthIpcError): code = 9
class Busy(BerthIpcError): code = 10
class OutOfOrder(BerthIpcError): code = 11
class InvalidArgument(BerthIpcError): code = 12
class OpenFailed(BerthIpcError): code = 13
class RoleTaken(BerthIpcError): code = 14
class NoWakeFd(BerthIpcError): code = 15
class NoHandles(BerthIpcError): code = 16
class Panic(BerthIpcError): code = 17
class BufferTooSmall(BerthIpcError): code = 18

_BY_CODE = {cls.code: cls for cls in BerthIpcError.__subclasses__()}
# ANCHOR_END: errors


class Lib:
    """The loaded libberth_ipc_ffi.so with its functions' signatures."""

    def __init__(self, path):
        self.c = ctypes.CDLL(path)
        u64, i32, i64, size = ctypes.c_uint64, ctypes.c_int32, ctypes.c_int64, ctypes.c_size_t
        sigs = {
            "berth_ipc_error_message": (ctypes.c_char_p, [i32]),
            "berth_ipc_last_error": (size, [ctypes.c_char_p, size]),
            "berth_ipc_channel_open_named": (i32, [ctypes.c_char_p, ctypes.POINTER(u64)]),
            "berth_ipc_channel_max_message": (i32, [u64, ctypes.POINTER(u64)]),
            "berth_ipc_channel_close": (i32, [u64]),
            "berth_ipc_sender_open": (i32, [u64, ctypes.POINTER(u64)]),
            "berth_ipc_receiver_open": (i32, [u64, ctypes.POINTER(u64)]),
            "berth_ipc_send": (i32, [u64, ctypes.c_char_p, size, i64]),
            "berth_ipc_try_send": (i32, [u64, ctypes.c_char_p, size]),
            "berth_ipc_recv_copy": (i32, [u64, ctypes.c_void_p, size, ctypes.POINTER(size), i64]),
            "berth_ipc_sender_close": (i32, [u64]),
            "berth_ipc_receiver_close": (i32, [u64]),
        }
        for name, (restype, argtypes) in sigs.items():
            f = getattr(self.c, name)
            f.restype, f.argtypes = restype, argtypes

    def check(self, code):
        """Raises the exception for a status code other than BERTH_IPC_OK."""
        if code != 0:
            message = self.c.berth_ipc_error_message(code).decode()
            detail = ctypes.create_string_buffer(256)
            if self.c.berth_ipc_last_error(detail, len(detail)) and code in (12, 13):
                message = f"{message}: {detail.value.decode(errors='replace')}"
            raise _BY_CODE.get(code, BerthIpcError)(code, message)


class Channel:
    def __init__(self, lib, handle):
        self.lib, self.handle = lib, handle

    @classmethod
    def open_named(cls, name, lib):
        h = ctypes.c_uint64()
        lib.check(lib.c.berth_ipc_channel_open_named(name.encode(), ctypes.byref(h)))
        return cls(lib, h.value)

    def max_message(self):
        m = ctypes.c_uint64()
        self.lib.check(self.lib.c.berth_ipc_channel_max_message(self.handle, ctypes.byref(m)))
        return m.value

    def sender(self):
        h = ctypes.c_uint64()
        self.lib.check(self.lib.c.berth_ipc_sender_open(self.handle, ctypes.byref(h)))
        return Sender(self.lib, h.value)

    def receiver(self):
        h = ctypes.c_uint64()
        self.lib.check(self.lib.c.berth_ipc_receiver_open(self.handle, ctypes.byref(h)))
        return Receiver(self.lib, h.value, self.max_message())

    def close(self):
        self.lib.check(self.lib.c.berth_ipc_channel_close(self.handle))


class Sender:
    def __init__(self, lib, handle):
        self.lib, self.handle = lib, handle

    def send(self, data, timeout_ms=-1):
        self.lib.check(self.lib.c.berth_ipc_send(self.handle, data, len(data), timeout_ms))

    def try_send(self, data):
        self.lib.check(self.lib.c.berth_ipc_try_send(self.handle, data, len(data)))

    def close(self):
        self.lib.check(self.lib.c.berth_ipc_sender_close(self.handle))


class Receiver:
    def __init__(self, lib, handle, max_message):
        self.lib, self.handle = lib, handle
        self.buf = ctypes.create_string_buffer(max_message)

    def recv(self, timeout_ms=-1):
        """The next message as bytes (timeout_ms 0: raise Empty at once)."""
        n = ctypes.c_size_t()
        code = self.lib.c.berth_ipc_recv_copy(self.handle, self.buf, len(self.buf), ctypes.byref(n), timeout_ms)
        self.lib.check(code)
        return self.buf.raw[: n.value]

    def close(self):
        self.lib.check(self.lib.c.berth_ipc_receiver_close(self.handle))

//! Loopback sends compared byte for byte with the file: whole files, ranges, headers,
//! a sparse file beyond 4 GiB, non-blocking sockets with a slow reader, and every way
//! into the copy fallback.

mod common;

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use berth_sendfile::{ByteRange, FileSend, Method, SendFileError, send_file};
use common::*;

#[test]
fn whole_file_blocking_bytes_identical() {
    let data = pattern((5 << 20) + 123, 1);
    let tmp = TempFile::with_contents("whole", &data);
    let file = tmp.open();
    let (sender, receiver) = pair();
    let reader = drain(receiver, 64 << 10);
    let mut send = FileSend::whole(&file).unwrap();
    assert_eq!(send.send_all(&sender, &mut []).unwrap(), data.len() as u64);
    assert_eq!(send.method(), Method::Sendfile);
    drop(sender);
    assert!(join(reader) == data, "received bytes differ");
}

#[test]
fn ranges_match_the_slice() {
    let data = pattern(3 << 20, 2);
    let tmp = TempFile::with_contents("ranges", &data);
    let file = tmp.open();
    let size = data.len() as u64;
    let cases =
        [(0, 0), (0, 1), (1, 1), (4095, 2), (4096, 4096), (12345, 1 << 20), (size - 1, 1), (size, 0), (7, size - 7)];
    for (i, &(offset, len)) in cases.iter().enumerate() {
        for fallback in [false, true] {
            let (sender, receiver) = pair();
            let reader = drain(receiver, 8192);
            // A small, odd chunk cap crosses page and chunk boundaries many times.
            let mut send = FileSend::checked(&file, offset, len).unwrap().chunk_cap(100_003).force_fallback(fallback);
            let mut scratch = vec![0u8; 7777];
            assert_eq!(send.send_all(&sender, &mut scratch).unwrap(), len, "case {i}");
            drop(sender);
            let got = join(reader);
            assert!(
                got == data[offset as usize..(offset + len) as usize],
                "case {i} fallback {fallback}: bytes differ"
            );
        }
    }
}

#[test]
fn send_file_convenience_with_rust_ranges() {
    let data = pattern(300_000, 3);
    let tmp = TempFile::with_contents("convenience", &data);
    let file = tmp.open();
    for (range, expect) in [
        ((std::ops::Bound::Unbounded, std::ops::Bound::Unbounded), &data[..]),
        ((std::ops::Bound::Included(10), std::ops::Bound::Excluded(20_000)), &data[10..20_000]),
        ((std::ops::Bound::Included(299_990), std::ops::Bound::Unbounded), &data[299_990..]),
    ] {
        let (sender, receiver) = pair();
        let reader = drain(receiver, 8192);
        assert_eq!(send_file(&sender, &file, range).unwrap(), expect.len() as u64);
        drop(sender);
        assert!(join(reader) == expect);
    }
}

#[test]
fn header_then_body() {
    let data = pattern(1 << 20, 4);
    let tmp = TempFile::with_contents("header", &data);
    let file = tmp.open();
    let header = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
    for fallback in [false, true] {
        let (sender, receiver) = pair();
        let reader = drain(receiver, 8192);
        let mut send = FileSend::whole(&file).unwrap().force_fallback(fallback);
        let mut rest = &header[..];
        while !rest.is_empty() {
            rest = &rest[send.send_header(&sender, rest).unwrap()..];
        }
        send.send_all(&sender, &mut [0u8; 4096]).unwrap();
        drop(sender);
        let got = join(reader);
        assert_eq!(&got[..header.len()], header);
        assert!(got[header.len()..] == data[..]);
    }
}

/// A 5 GiB sparse file with data just past 4 GiB: offsets must be 64-bit all the way.
#[test]
fn sparse_file_offset_beyond_4gib() {
    let tmp = TempFile::new("sparse");
    let file = OpenOptions::new().create_new(true).read(true).write(true).open(&tmp.path).unwrap();
    let four_gib = 4u64 << 30;
    file.set_len(5u64 << 30).unwrap();
    let marker = pattern(10_000, 5);
    file.write_all_at(&marker, four_gib + 100).unwrap();
    let mut expect = vec![0u8; 100];
    expect.extend_from_slice(&marker);
    expect.resize(expect.len() + 50, 0);
    for fallback in [false, true] {
        let (sender, receiver) = pair();
        let reader = drain(receiver, 8192);
        let mut send = FileSend::checked(&file, four_gib, expect.len() as u64).unwrap().force_fallback(fallback);
        assert_eq!(send.send_all(&sender, &mut [0u8; 3000]).unwrap(), expect.len() as u64);
        drop(sender);
        assert!(join(reader) == expect, "fallback {fallback}");
    }
    // The very end of the file, too.
    let (sender, receiver) = pair();
    let reader = drain(receiver, 8192);
    assert_eq!(send_file(&sender, &file, (5u64 << 30) - 10..).unwrap(), 10);
    drop(sender);
    assert_eq!(join(reader), vec![0u8; 10]);
}

#[test]
fn nonblocking_slow_reader_resumes_many_times() {
    let data = pattern(1 << 20, 6);
    let tmp = TempFile::with_contents("slow", &data);
    let file = tmp.open();
    for fallback in [false, true] {
        let (sender, receiver) = pair();
        shrink_buffers(&sender, &receiver);
        let mut send = FileSend::whole(&file).unwrap().force_fallback(fallback);
        let (got, would_block) =
            drive_with_slow_reader(&mut send, sender, receiver, &mut [0u8; 16 << 10], 4096).unwrap();
        assert!(got == data, "fallback {fallback}: bytes differ");
        // 1 MiB through ~100 KiB of socket buffers, 4 KiB read per block: >= ~230 resumes.
        assert!(would_block >= 100, "fallback {fallback}: only {would_block} WouldBlock resumes");
        let p = send.progress();
        assert!(p.done && p.sent_total == data.len() as u64 && p.remaining == 0);
    }
}

#[test]
fn forced_fallback_uses_the_copy_path() {
    let data = pattern(200_000, 7);
    let tmp = TempFile::with_contents("forced", &data);
    let file = tmp.open();
    let (sender, receiver) = pair();
    let reader = drain(receiver, 8192);
    let mut send = FileSend::whole(&file).unwrap().force_fallback(true);
    assert_eq!(send.method(), Method::Copy);
    // Without a scratch buffer the copy path refuses, sending nothing.
    assert!(matches!(send.send_some(&sender, &mut []), Err(SendFileError::ScratchRequired)));
    assert_eq!(send.progress().sent_total, 0);
    // A tiny buffer still gets every byte across.
    let mut scratch = [0u8; 333];
    let p = send.send_some(&sender, &mut scratch).unwrap();
    assert!(p.sent > 0 && p.sent <= 333);
    send.send_all(&sender, &mut scratch).unwrap();
    drop(sender);
    assert!(join(reader) == data);
}

/// A pipe is not seekable: sendfile says ESPIPE, pread too, and the send reads it as a
/// stream. A non-blocking socket with a slow reader exercises the bytes held in scratch.
#[test]
fn pipe_source_falls_back_to_stream_copy() {
    let data = pattern(600_000, 8);
    let (pipe_r, pipe_w) = rustix::pipe::pipe().unwrap();
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || std::fs::File::from(pipe_w).write_all(&data))
    };
    let (sender, receiver) = pair();
    shrink_buffers(&sender, &receiver);
    sender.set_nonblocking(true).unwrap();
    let mut send = FileSend::new(pipe_r, ByteRange::new(0, data.len() as u64).unwrap());
    let mut scratch = vec![0u8; 64 << 10];
    // Fails first without a buffer (sendfile refused), then carries on with one.
    assert!(matches!(send.send_some(&sender, &mut []), Err(SendFileError::ScratchRequired)));
    assert_eq!(send.method(), Method::Copy);
    let (got, would_block) = drive_with_slow_reader(&mut send, sender, receiver, &mut scratch, 4096).unwrap();
    writer.join().unwrap().unwrap();
    assert!(got == data);
    assert!(would_block >= 50, "only {would_block} WouldBlock resumes");
}

#[test]
fn pipe_source_with_offset_is_refused() {
    let (pipe_r, pipe_w) = rustix::pipe::pipe().unwrap();
    std::fs::File::from(pipe_w).write_all(b"0123456789").unwrap();
    let (sender, _receiver) = pair();
    let mut send = FileSend::new(pipe_r, ByteRange::new(5, 5).unwrap());
    assert!(matches!(send.send_some(&sender, &mut [0u8; 64]), Err(SendFileError::NotSeekable { offset: 5 })));
}

/// sendfile(2) refuses an O_APPEND output with EINVAL; the fallback then finds that the
/// output is not a socket (ENOTSOCK) and uses write(2). Same bytes.
#[test]
fn append_output_falls_back_to_write() {
    let data = pattern(300_000, 9);
    let src = TempFile::with_contents("append-src", &data);
    let dst = TempFile::new("append-dst");
    let out = OpenOptions::new().create_new(true).append(true).open(&dst.path).unwrap();
    let file = src.open();
    let mut send = FileSend::checked(&file, 1000, 250_000).unwrap();
    let mut scratch = vec![0u8; 10_000];
    assert_eq!(send.send_all(&out, &mut scratch).unwrap(), 250_000);
    assert_eq!(send.method(), Method::Copy);
    let mut got = Vec::new();
    dst.open().read_to_end(&mut got).unwrap();
    assert!(got == data[1000..251_000]);
}

/// An owned handle (`Arc<File>`) works the same, so a reactor can store the send.
#[test]
fn owned_handles() {
    let data = pattern(50_000, 10);
    let tmp = TempFile::with_contents("owned", &data);
    let file = std::sync::Arc::new(tmp.open());
    let (sender, receiver) = pair();
    let reader = drain(receiver, 8192);
    let mut send = FileSend::whole(file.clone()).unwrap();
    send.send_all(&sender, &mut []).unwrap();
    let mut send = FileSend::whole(std::os::fd::OwnedFd::from(tmp.open())).unwrap();
    send.send_all(&sender, &mut []).unwrap();
    drop(sender);
    let got = join(reader);
    assert!(got[..data.len()] == data[..] && got[data.len()..] == data[..]);
}

//! The built `berth` binary as relay and as backend, in two processes: frames
//! round-trip; a backend killed with SIGKILL mid-request gets its client a clean
//! close; a new backend is taken; SIGINT stops both and the channel files are gone.
//! The relay runs two workers, so the backend serves two lanes.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use rustix::process::Signal;

mod common;

use common::{TIMEOUT, banner_addr, signal, start, wait_exit};

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

fn read_frame(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut payload = vec![0; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut payload)?;
    Ok(payload)
}

fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// A connection that gets an echo: until the relay has taken the backend's hello,
/// a frame is answered by a clean close, so try again on a new connection (bounded).
fn echoing_client(addr: SocketAddr) -> TcpStream {
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < TIMEOUT, "the relay never took the backend");
        let mut s = client(addr);
        s.write_all(&frame(b"ready?")).unwrap();
        match read_frame(&mut s) {
            Ok(p) => {
                assert_eq!(p, b"ready?");
                return s;
            }
            Err(_) => std::thread::yield_now(),
        }
    }
}

fn payload(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(167) ^ seed.wrapping_mul(29) ^ (i >> 9)) as u8).collect()
}

#[test]
fn relay_and_backend_processes_survive_a_killed_backend() {
    let channel = format!("berth-cli-relay-{}", std::process::id());
    let (relay, banner) =
        start(&["relay", "--channel", &channel, "--addr", "127.0.0.1:0", "--workers", "2", "--log", "warn"]);
    let prefix = format!("berth: relaying to backend channel {channel} on ");
    assert!(banner.starts_with(&prefix), "banner: {banner:?}");
    let addr = banner_addr(&banner);

    let (backend, banner) = start(&["backend-echo", "--channel", &channel, "--log", "warn"]);
    assert!(banner.starts_with("berth: echo backend"), "banner: {banner:?}");
    let mut s = echoing_client(addr);
    for (n, len) in [0usize, 1, 100, 4096, 65_536].into_iter().enumerate() {
        let p = payload(n, len);
        s.write_all(&frame(&p)).unwrap();
        assert_eq!(read_frame(&mut s).unwrap(), p, "frame {n}");
    }

    // Stop the backend, leave a request with it, kill it: the client is closed
    // cleanly instead of waiting forever.
    signal(&backend, Signal::STOP);
    s.write_all(&frame(b"never answered")).unwrap();
    signal(&backend, Signal::KILL);
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).expect("a clean close, not a timeout"), 0);
    let _ = wait_exit(backend);

    // A new backend process is taken once the relay has recreated the channel.
    let (backend, _) = start(&["backend-echo", "--channel", &channel, "--log", "warn"]);
    let mut s = echoing_client(addr);
    let p = payload(7, 30_000);
    s.write_all(&frame(&p)).unwrap();
    assert_eq!(read_frame(&mut s).unwrap(), p);
    drop(s);

    signal(&relay, Signal::INT);
    assert!(wait_exit(relay).success());
    signal(&backend, Signal::INT);
    assert!(wait_exit(backend).success());
    // Each worker's lane: its two rings and their wake FIFOs.
    for lane in 0..2 {
        for dir in ["a2b", "b2a"] {
            let ring = format!("/dev/shm/berth-ipc.{channel}.{lane}.{dir}");
            let fifos = ["rx", "tx"].map(|end| format!("/dev/shm/berth-ipc-wake.{channel}.{lane}.{dir}.{end}"));
            for path in std::iter::once(ring).chain(fifos) {
                assert!(!std::path::Path::new(&path).exists(), "{path} left behind");
            }
        }
    }
}

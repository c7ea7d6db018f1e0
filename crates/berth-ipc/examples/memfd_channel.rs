//! The seed's `MemoryMappedFileComms`, on berth-ipc: a parent process and the child it
//! starts share a ring in a memfd. The child writes records in place (reserve, write,
//! commit), the parent reads each one, in order, exactly once; when the child is killed
//! mid-record, the parent hears `PeerDead` instead of waiting forever, and never sees
//! the half-written record.
//!
//! Run it with `cargo run -p berth-ipc --example memfd_channel`; it ends by itself.
//! `cargo test -p berth-ipc` runs it too (`[[example]] test = true`). The child is this
//! same program, started again with `BERTH_IPC_EXAMPLE_FD` set.

use std::error::Error;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_ipc::{Channel, Config, RecvError};

/// The environment variable that makes this program the child, and names its descriptor.
const CHILD_FD: &str = "BERTH_IPC_EXAMPLE_FD";
/// Records the child sends: far more than the ring holds at once.
const MESSAGES: u32 = 2000;
/// No call in this example waits longer than this.
const WAIT: Option<Duration> = Some(Duration::from_secs(10));

fn main() -> Result<(), Box<dyn Error>> {
    match std::env::var(CHILD_FD) {
        Ok(fd) => child(fd.parse()?),
        Err(_) => parent(),
    }
}

fn parent() -> Result<(), Box<dyn Error>> {
    // ANCHOR: create
    // 64 KiB of ring, records up to 4 KiB: the sender waits for room many times.
    let chan = Channel::create_memfd(&Config::new(64 * 1024).max_message(4096))?;
    let mut rx = chan.receiver()?;
    // The child inherits the descriptor (close-on-exec off for the spawn only) and
    // learns its number from the environment.
    chan.set_inheritable(true)?;
    let spawned = Command::new(std::env::current_exe()?)
        .env(CHILD_FD, chan.as_fd().as_raw_fd().to_string())
        .stdout(Stdio::null())
        .spawn();
    chan.set_inheritable(false)?;
    let mut child = KillOnDrop(spawned?);
    // ANCHOR_END: create

    // ANCHOR: receive
    let mut bytes = 0;
    for expected in 0..MESSAGES {
        let record = rx.recv(WAIT)?; // lent in place: no copy, released on drop
        let (seq, body) = record.split_at(4);
        assert_eq!(u32::from_le_bytes(seq.try_into()?), expected, "in order, each once");
        assert!(body.iter().all(|&b| b == expected as u8));
        bytes += record.len();
    }
    println!("received {MESSAGES} records, {bytes} bytes, through a 64 KiB ring");
    // ANCHOR_END: receive

    // ANCHOR: peer_dead
    // The child is now sitting on a record it reserved and half wrote. Kill it, as a
    // crash would: the next receive reports it within milliseconds, not never.
    child.0.kill()?;
    child.0.wait()?;
    let killed = Instant::now();
    match rx.recv(WAIT) {
        Err(RecvError::PeerDead) => println!("PeerDead after {:?}; nothing half-written was seen", killed.elapsed()),
        Err(RecvError::Closed) => println!("the child closed its end cleanly"),
        Err(e) => return Err(e.into()),
        Ok(record) => return Err(format!("a record of {} bytes after the kill", record.len()).into()),
    }
    // ANCHOR_END: peer_dead
    Ok(())
}

fn child(fd: i32) -> Result<(), Box<dyn Error>> {
    // SAFETY: the parent cleared close-on-exec on this descriptor for us and put its
    // number in the environment; nothing else in this process owns it.
    let chan = Channel::from_fd(unsafe { OwnedFd::from_raw_fd(fd) })?;
    let mut tx = chan.sender()?;
    // ANCHOR: send
    for seq in 0..MESSAGES {
        let len = 4 + 16 + (seq as usize * 7) % 3000;
        // Room for the whole record, waiting while the ring is full.
        let mut grant = tx.reserve(len, WAIT)?;
        grant[..4].copy_from_slice(&seq.to_le_bytes());
        grant[4..].fill(seq as u8); // written in place, straight into shared memory
        grant.commit(); // one release store publishes it; dropping instead aborts it
    }
    // ANCHOR_END: send
    // Reserved, half written, never committed: the parent kills us here.
    let mut grant = tx.reserve(1000, WAIT)?;
    grant[..500].fill(0xee);
    std::thread::sleep(Duration::from_secs(30)); // bounded, in case the parent is gone
    Ok(())
}

/// Kills and reaps the child if the parent returns early, so no process outlives us.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn example_runs() {
        super::main().unwrap();
    }
}

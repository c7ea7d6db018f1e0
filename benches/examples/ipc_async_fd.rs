//! A berth-ipc channel in a tokio task: both ends of the task wait in tokio's
//! reactor (`AsyncFd`) on the channel's wake descriptors, "data ready" for the
//! receiver and "room ready" for the sender, while a plain thread on the other
//! side echoes through a ring small enough that the task often waits for room.
//!
//! Here rather than in berth-ipc: berth-ipc has no tokio dependency, and the
//! benches crate already has one. `cargo test -p berth-benches --examples` runs it.

use std::error::Error;
use std::time::Duration;

use berth_ipc::{Channel, Config, Receiver, RecvError, SendError, Sender};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

// ANCHOR: recv
/// Receives the next message, waiting in the tokio reactor when the ring is empty.
async fn recv(rx: &mut AsyncFd<Receiver>) -> Result<Vec<u8>, Box<dyn Error>> {
    loop {
        match rx.get_mut().try_recv() {
            Ok(msg) => return Ok(msg.to_vec()),
            Err(RecvError::Empty) => {}
            Err(e) => return Err(e.into()),
        }
        // Raise the waiter flag (the sender writes the descriptor only for an
        // armed receiver) and re-check; sleep only if the ring is still empty.
        if rx.get_mut().arm_wake()? {
            // `max_sleep`: `None` when a wake is sure to come (the sender's death
            // too); else arm again after that long, which looks at the sender.
            match rx.get_ref().max_sleep() {
                None => rx.readable().await?.clear_ready(),
                Some(bound) => {
                    if let Ok(ready) = tokio::time::timeout(bound, rx.readable()).await {
                        ready?.clear_ready();
                    }
                }
            }
        }
    }
}
// ANCHOR_END: recv

// ANCHOR: send
/// Sends a message, waiting in the tokio reactor while the ring is full.
async fn send(tx: &mut AsyncFd<Sender>, msg: &[u8]) -> Result<(), Box<dyn Error>> {
    loop {
        match tx.get_mut().try_send(msg) {
            Ok(()) => return Ok(()),
            Err(SendError::Full) => {}
            Err(e) => return Err(e.into()),
        }
        if tx.get_mut().arm_wake(msg.len())? {
            match tx.get_ref().max_sleep() {
                None => tx.readable().await?.clear_ready(),
                Some(bound) => {
                    if let Ok(ready) = tokio::time::timeout(bound, tx.readable()).await {
                        ready?.clear_ready();
                    }
                }
            }
        }
    }
}
// ANCHOR_END: send

fn main() -> Result<(), Box<dyn Error>> {
    // ANCHOR: setup
    let cfg = Config::new(256).wake_fds(true);
    let (out, back) = (Channel::create_memfd(&cfg)?, Channel::create_memfd(&cfg)?);
    let (mut peer_rx, mut peer_tx) = (out.receiver()?, back.sender()?);
    // The other side (another process, in real use): echo until closed.
    let echo = std::thread::spawn(move || {
        while let Ok(msg) = peer_rx.recv(Some(Duration::from_secs(10))) {
            peer_tx.send(&msg, Some(Duration::from_secs(10))).unwrap();
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    rt.block_on(async {
        // SAFETY: an end keeps its channel's wake descriptor open for as long as
        // it lives, and `as_raw_fd` always answers that same descriptor.
        let mut tx = unsafe { AsyncFd::register_with_interest(out.sender()?, Interest::READABLE) }?;
        // SAFETY: as for the sender.
        let mut rx = unsafe { AsyncFd::register_with_interest(back.receiver()?, Interest::READABLE) }?;
        // ANCHOR_END: setup
        let mut echoed = 0;
        let writer_done = async {
            for i in 0..2000u32 {
                send(&mut tx, format!("message {i:04}").as_bytes()).await?;
            }
            drop(tx);
            Ok::<_, Box<dyn Error>>(())
        };
        let reader = async {
            for i in 0..2000u32 {
                let msg = recv(&mut rx).await?;
                assert_eq!(msg, format!("message {i:04}").as_bytes());
                echoed += 1;
            }
            Ok::<_, Box<dyn Error>>(())
        };
        tokio::try_join!(writer_done, reader)?;
        println!("echoed {echoed} messages through tokio's reactor");
        Ok::<_, Box<dyn Error>>(())
    })?;
    echo.join().map_err(|_| "echo thread panicked")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// `cargo test` runs the example (the book includes it, so it must keep working).
    #[test]
    fn example_runs() {
        super::main().unwrap();
    }
}

//! `relay_frames`: an arbitrary byte stream as relay input (issue #16, target 6).
//!
//! One `IpcRelay` (max frame 1024), its worker 0's lane made without a port
//! (`berth_server::fuzzing::relay_lane`) and a `RelayBackend` attached to it in this
//! process; each input is one client connection of that worker, driven by
//! `berth_server::fuzzing::Connection` with the bytes split at arbitrary points. Input: one byte choosing the request
//! head limit, one byte counting split points (low 3 bits), two bytes per split
//! point, then the stream.
//!
//! Checked against a model that reads the stream as frames (4-byte big-endian
//! length, payload): every frame that fits is forwarded whole — the backend receives
//! exactly its payload, tagged with the connection's id — in order; a frame longer
//! than the maximum, or than the server buffers, closes the connection with an
//! empty reply, and the relay counts it as refused; a partial frame at the end waits;
//! nothing else happens, and nothing panics.

#![no_main]

use std::any::Any;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Duration;

use berth_server::fuzzing::{Connection, Event};
use berth_server::{IpcRelay, RelayBackend, RelayConfig};
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: usize = 1024;

struct Rig {
    relay: IpcRelay,
    lane: Mutex<Box<dyn Any + Send>>,
    backend: Mutex<RelayBackend>,
}

fn rig() -> &'static Rig {
    static R: OnceLock<Rig> = OnceLock::new();
    R.get_or_init(|| {
        let name = format!("berth-fuzz-relay-{}", std::process::id());
        let relay = IpcRelay::start(RelayConfig::new(&name).max_frame(MAX_FRAME).ring_capacity(1 << 16)).unwrap();
        let lane = berth_server::fuzzing::relay_lane(&relay).unwrap();
        let backend = RelayBackend::attach_retrying(&name, Duration::from_secs(10)).unwrap();
        assert!(relay.handle().wait_attached(Duration::from_secs(10)), "backend did not attach");
        Rig { relay, lane: Mutex::new(lane), backend: Mutex::new(backend) }
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Forward(Vec<u8>),
    Refuse,
}

/// What the relay must do with `stream` when it buffers at most `limit` bytes.
fn model(stream: &[u8], limit: usize) -> Vec<Expect> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(h) = stream.get(at..at + 4) {
        let len = u32::from_be_bytes(h.try_into().unwrap()) as usize;
        if len > MAX_FRAME {
            out.push(Expect::Refuse);
            break;
        }
        if 4 + len > limit {
            // Refused once the buffer fills up; until then it waits for more.
            if stream.len() - at >= limit {
                out.push(Expect::Refuse);
            }
            break;
        }
        let Some(frame) = stream.get(at..at + 4 + len) else { break };
        out.push(Expect::Forward(frame.to_vec()));
        at += 4 + len;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [limit, splits, rest @ ..] = data else { return };
    let n = usize::from(splits & 7);
    if rest.len() < 2 * n {
        return;
    }
    let (points, stream) = rest.split_at(2 * n);
    let limit = [16, 64, 600, 4096][usize::from(limit % 4)];
    let rig = rig();
    let before = rig.relay.handle().stats();
    let mut cuts: Vec<usize> =
        points.chunks(2).map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1)).collect();
    cuts.sort_unstable();

    let mut lane = rig.lane.lock().unwrap();
    let mut conn = Connection::new(&rig.relay, 4096, limit).expect("connection").with_worker_state(&mut **lane);
    let id = conn.id().to_u64();
    let mut events = Vec::new();
    let mut from = 0;
    for cut in cuts.into_iter().chain([stream.len()]) {
        conn.receive(&stream[from..cut], &mut events);
        from = cut;
    }
    let expected = model(stream, limit);
    assert_eq!(events.len(), expected.len(), "events {events:?}, model {expected:?}");
    let mut backend = rig.backend.lock().unwrap();
    for (e, x) in events.iter().zip(&expected) {
        match (e, x) {
            (Event::Later { request }, Expect::Forward(frame)) => {
                assert_eq!(request, frame, "consumed another frame than the model's");
                let got = backend.recv(Some(Duration::from_secs(5))).expect("the backend gets the frame");
                assert_eq!(got.conn(), id, "frame tagged with another connection");
                assert_eq!(got.payload(), &frame[4..], "payload changed on the way");
            }
            (Event::Reply { response, close: true, .. }, Expect::Refuse) => {
                assert!(response.is_empty(), "a refusal with bytes: {response:?}");
            }
            (e, x) => panic!("relay did {e:?}, the model expects {x:?}"),
        }
    }
    // Nothing more reached the backend.
    assert!(backend.recv(Some(Duration::ZERO)).is_err(), "the backend got a frame the model did not forward");
    let after = rig.relay.handle().stats();
    let forwarded = expected.iter().filter(|x| matches!(x, Expect::Forward(_))).count() as u64;
    let refused = expected.len() as u64 - forwarded;
    assert_eq!(after.frames_in - before.frames_in, forwarded, "frames_in");
    assert_eq!(after.frames_refused - before.frames_refused, refused, "frames_refused");
});

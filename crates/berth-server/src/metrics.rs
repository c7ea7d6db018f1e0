//! [`Metrics`]: a snapshot of a running server's counters.
//!
//! Each worker counts in plain integers on its own thread and publishes them after
//! every batch of completions into its own row of atomics (one writer per row, relaxed
//! stores), so counting costs the hot path nothing shared; a snapshot sums the rows.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use berth_buf::BufferStats;
use berth_reactor::Driver;

/// A snapshot of a [`Server`](crate::Server)'s counters, from
/// [`Server::metrics`](crate::Server::metrics) or
/// [`ShutdownHandle::metrics`](crate::ShutdownHandle::metrics). Counters are totals
/// since start; fields from different workers are each accurate but not necessarily
/// from the same instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Connections open now.
    pub connections_open: u64,
    /// Connections accepted and handed to the service.
    pub connections_accepted: u64,
    /// Connections closed at once on arrival: connection limit reached, or no op
    /// left for them.
    pub connections_refused: u64,
    /// Connections closed because a read deadline passed (header or idle timeout).
    pub timeouts: u64,
    /// Connections closed because the answer the service promised
    /// ([`Reply::answer_later`](crate::Reply::answer_later)) did not come within the
    /// [answer timeout](crate::ServerBuilder::answer_timeout).
    pub answer_timeouts: u64,
    /// Replies sent in full.
    pub replies: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent (reply bytes and file bodies).
    pub bytes_out: u64,
    /// The driver the workers' completion ports run on ([`Driver::Auto`] only if
    /// they differ, which one build never makes them).
    pub driver: Driver,
    /// Times a worker's io_uring completion queue overflowed into the kernel's
    /// backlog (nothing lost; the queue is sized so this stays 0).
    pub cq_overflows: u64,
    /// Replies and file bodies that found a socket's send buffer full and waited for
    /// room (slow clients, or replies larger than the buffer).
    pub send_waits: u64,
    /// Time the workers spent asleep in their ports, all together: a worker's idle
    /// share is its part of this over the wall time.
    pub asleep: std::time::Duration,
    /// Operations that completed at submit, without waiting for epoll.
    pub ops_inline: u64,
    /// Operations that completed after waiting for readiness.
    pub ops_queued: u64,
    /// Ops in the workers' pools, all together.
    pub ops_capacity: u64,
    /// Ops taken now.
    pub ops_in_use: u64,
    /// Sum over workers of the most ops taken at once.
    pub ops_high_water: u64,
    /// Times a worker found its op pool empty.
    pub ops_exhausted: u64,
    /// The buffer arena.
    pub buffers: BufferStats,
}

impl fmt::Display for Metrics {
    /// One line, for logs and `berth serve --stats-interval`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conns open={} accepted={} refused={} timeouts={} answer_timeouts={} replies={} bytes in={} out={} \
             driver={} ops inline={} queued={} in_use={}/{} send_waits={} asleep={:.3}s buffers in_use={}/{} high_water={} \
             exhausted={}",
            self.connections_open,
            self.connections_accepted,
            self.connections_refused,
            self.timeouts,
            self.answer_timeouts,
            self.replies,
            self.bytes_in,
            self.bytes_out,
            self.driver,
            self.ops_inline,
            self.ops_queued,
            self.ops_in_use,
            self.ops_capacity,
            self.send_waits,
            self.asleep.as_secs_f64(),
            self.buffers.in_use,
            self.buffers.total,
            self.buffers.high_water,
            self.buffers.exhausted,
        )
    }
}

/// What a worker counts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    Accepted,
    Closed,
    Refused,
    Timeouts,
    AnswerTimeouts,
    Replies,
    BytesIn,
    BytesOut,
    OpsInline,
    OpsQueued,
    OpsCapacity,
    OpsInUse,
    OpsHighWater,
    OpsExhausted,
    /// 1 if the worker's port runs on io_uring.
    Uring,
    CqOverflows,
    SendWaits,
    /// Microseconds asleep in the port.
    AsleepUs,
}

const COUNTERS: usize = 18;

/// A worker's plain counters.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Local([u64; COUNTERS]);

impl Local {
    pub(crate) fn add(&mut self, c: Counter, n: u64) {
        self.0[c as usize] = self.0[c as usize].wrapping_add(n);
    }

    pub(crate) fn set(&mut self, c: Counter, n: u64) {
        self.0[c as usize] = n;
    }
}

/// One worker's published row.
#[derive(Debug, Default)]
pub(crate) struct Row([AtomicU64; COUNTERS]);

impl Row {
    pub(crate) fn publish(&self, local: &Local) {
        for (cell, &v) in self.0.iter().zip(local.0.iter()) {
            cell.store(v, Ordering::Relaxed);
        }
    }

    fn get(&self, c: Counter) -> u64 {
        self.0[c as usize].load(Ordering::Relaxed)
    }
}

/// Sums the rows into a snapshot.
pub(crate) fn snapshot(rows: &[Row], buffers: BufferStats) -> Metrics {
    let sum = |c| rows.iter().map(|r| r.get(c)).fold(0u64, u64::wrapping_add);
    let accepted = sum(Counter::Accepted);
    Metrics {
        connections_open: accepted.saturating_sub(sum(Counter::Closed)),
        connections_accepted: accepted,
        connections_refused: sum(Counter::Refused),
        timeouts: sum(Counter::Timeouts),
        answer_timeouts: sum(Counter::AnswerTimeouts),
        replies: sum(Counter::Replies),
        bytes_in: sum(Counter::BytesIn),
        bytes_out: sum(Counter::BytesOut),
        driver: match sum(Counter::Uring) {
            0 => Driver::Epoll,
            n if n == rows.len() as u64 => Driver::Uring,
            _ => Driver::Auto,
        },
        cq_overflows: sum(Counter::CqOverflows),
        send_waits: sum(Counter::SendWaits),
        asleep: std::time::Duration::from_micros(sum(Counter::AsleepUs)),
        ops_inline: sum(Counter::OpsInline),
        ops_queued: sum(Counter::OpsQueued),
        ops_capacity: sum(Counter::OpsCapacity),
        ops_in_use: sum(Counter::OpsInUse),
        ops_high_water: sum(Counter::OpsHighWater),
        ops_exhausted: sum(Counter::OpsExhausted),
        buffers,
    }
}

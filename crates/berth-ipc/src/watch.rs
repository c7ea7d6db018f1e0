//! Wake-ups for ends asleep on a peer that dies.
//!
//! A blocked end sleeps on a futex word that only its peer writes to. If the peer is
//! killed, nobody would wake it, so without help it must wake now and then to look
//! (which is what it does when this module is unavailable: every 10–50 ms). Instead,
//! each process has one watcher thread, started at the first sleep, blocked in
//! `epoll_wait` on the pidfds of the peers its ends sleep on. When a peer exits,
//! its pidfd turns readable and the watcher clears the sleeping end's waiter flag
//! and wakes it, as a commit would. A blocked end then needs no timer of its own to
//! notice a death (see `Wait::pause` for when it sleeps with none, and up to a
//! second at a time otherwise) instead of 50 ms slices, and still learns of a death
//! at once.
//!
//! No wake-up is lost: a sleeping end raises its flag, then checks the peer, then
//! sleeps on the flag. A death after the check clears the flag (the futex wait then
//! returns at once) or wakes the sleep; a death before it is seen by the check.
//!
//! The watcher also records the death for good ([`Registration::fired`]): once an
//! end is registered, its check before each sleep reads that flag instead of
//! polling the pidfd (a syscall per sleep). The watcher stores it before it clears
//! the sleeper's waiter flag and wakes it, with a `SeqCst` fence between, and the
//! sleeper raises its waiter flag and fences before it reads `fired`: so either the
//! check sees the death, or the clearing and the wake come after the sleeper's
//! flag and end its sleep. The wake is written unconditionally, also to an end that
//! is awake; an end that then drains its descriptor before raising its flag (see
//! `Receiver::arm_wake`) has read the watcher's write, which came after `fired`,
//! and so sees `fired` in its check.
//!
//! The watcher belongs to the process that started it: after a `fork` the child has
//! the state but not the thread, so it does not register and falls back to timed
//! sleeps. A registration it inherited is no longer trusted
//! ([`Registration::trusted`]): a word in a wipe-on-fork page reads 0 in the child.
//! Should the thread ever stop, it marks itself down and wakes every registered
//! sleeper (without recording a death), and their checks go back to the pidfd.
//! `BERTH_IPC_WATCHER=off` in the environment keeps it from starting at all.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rustix::event::epoll;

use crate::channel::Shared;
use crate::sys;

/// `BERTH_IPC_WATCHER=off` in the environment: no watcher thread in this process.
pub(crate) const WATCHER_ENV: &str = "BERTH_IPC_WATCHER";

/// Room reserved in the registry up front, so that registering an end does not
/// allocate until this many sleep on different peers at once.
const PRESIZED: usize = 64;

/// One sleeping end: wake the word at `word_at` of `sh` when `pidfd` turns readable.
struct Entry {
    id: u64,
    pidfd: OwnedFd,
    sh: Arc<Shared>,
    word_at: usize,
    /// Shared with the [`Registration`]: set when the process exits.
    fired: Arc<AtomicBool>,
}

struct Watcher {
    /// The process that started the thread.
    pid: u32,
    /// Reads 1 in that process and 0 in a child it forks (`MADV_WIPEONFORK`);
    /// `None` where the kernel lacks it (before 4.14): then `pid` is compared.
    here: Option<&'static AtomicU32>,
    epoll: OwnedFd,
    entries: Mutex<Vec<Entry>>,
    next_id: AtomicU64,
}

static WATCHER: OnceLock<Option<Watcher>> = OnceLock::new();

/// Set for good when the watcher thread stops (it is not restarted).
static DOWN: AtomicBool = AtomicBool::new(false);

/// The process's watcher, started on first use; `None` if it cannot run here (no
/// epoll, no thread), it stopped, or this process is a fork of the one that
/// started it.
fn watcher() -> Option<&'static Watcher> {
    let w = WATCHER.get_or_init(start).as_ref()?;
    (w.pid == sys::getpid() && !DOWN.load(Ordering::Acquire)).then_some(w)
}

fn start() -> Option<Watcher> {
    // For a process that must not start a thread of its own (and to test how the
    // ends do without one): read once, at the first sleep.
    if std::env::var_os(WATCHER_ENV).is_some_and(|v| v == "off") {
        return None;
    }
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).ok()?;
    let theirs = ep.try_clone().ok()?;
    std::thread::Builder::new().name("berth-ipc-watch".into()).spawn(move || run(theirs)).ok()?;
    Some(Watcher {
        pid: sys::getpid(),
        here: wipe_on_fork_word(),
        epoll: ep,
        entries: Mutex::new(Vec::with_capacity(PRESIZED)),
        next_id: AtomicU64::new(1),
    })
}

/// A word set to 1 in a page of its own that a forked child sees zeroed, so that a
/// fork is noticed without a `getpid` syscall per check. Mapped once per process,
/// never unmapped.
fn wipe_on_fork_word() -> Option<&'static AtomicU32> {
    use rustix::mm::{Advice, MapFlags, ProtFlags};
    // The kernel rounds a mapping and an advice up to whole pages, whatever their size.
    let len = 4096;
    // SAFETY: a fresh private anonymous mapping, placed by the kernel (null hint):
    // it overlaps nothing of ours.
    let page = unsafe {
        rustix::mm::mmap_anonymous(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::PRIVATE)
    }
    .ok()?;
    // SAFETY: `page` is the whole mapping made above, used by nobody else yet.
    if unsafe { rustix::mm::madvise(page, len, Advice::LinuxWipeOnFork) }.is_err() {
        // SAFETY: the same mapping, still unused; unmapping it cannot fail here in a
        // way that matters (the page would only leak).
        let _ = unsafe { rustix::mm::munmap(page, len) };
        return None;
    }
    // SAFETY: the mapping is page-aligned (so aligned for a u32), readable and
    // writable, zero-filled (a valid `AtomicU32`), and never unmapped: a `'static`
    // shared reference to its first word is sound. Only atomics touch it.
    let word = unsafe { &*page.cast::<AtomicU32>() };
    word.store(1, Ordering::Relaxed);
    Some(word)
}

/// On the watcher thread's way out, whichever way it leaves: marks the watcher
/// down, then drops every entry and wakes its sleeper, so that its next check polls
/// the pidfd itself (the registration no longer being trusted).
struct DownOnExit;

impl Drop for DownOnExit {
    fn drop(&mut self) {
        DOWN.store(true, Ordering::Release);
        // Orders the mark before the flags' clearing against a sleeper's flag store,
        // fence and load of `DOWN` (in `Registration::trusted`), as for `fired`.
        std::sync::atomic::fence(Ordering::SeqCst);
        let Some(Some(w)) = WATCHER.get() else { return };
        let list = std::mem::take(&mut *w.entries.lock().unwrap_or_else(|e| e.into_inner()));
        for entry in &list {
            entry.sh.u32_at(entry.word_at).store(0, Ordering::Relaxed);
            entry.sh.wake_sleeper(entry.word_at);
        }
    }
}

/// The watcher thread: waits for pidfds to turn readable, forever.
fn run(ep: OwnedFd) {
    let _down = DownOnExit;
    let mut events = Vec::with_capacity(16);
    loop {
        events.clear();
        match epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            // Nothing sensible is left to do: `DownOnExit` hands every sleeper back
            // to its own checks.
            Err(_) => return,
        }
        #[cfg(test)]
        if events.iter().any(|ev| ev.data.u64() == tests::STOP) {
            return;
        }
        // Events only come from registrations, made after the watcher was stored.
        let Some(Some(w)) = WATCHER.get() else { return };
        for ev in &events {
            w.fire(ev.data.u64());
        }
    }
}

impl Watcher {
    /// The peer behind registration `id` exited: wake its sleeper, drop the entry.
    fn fire(&self, id: u64) {
        let Some(entry) = self.take(id) else { return };
        // The death first, for the end's later checks (see the module docs); the
        // fence orders it before the flag's clearing against the sleeper's own
        // flag store, fence and load of `fired`.
        entry.fired.store(true, Ordering::Release);
        std::sync::atomic::fence(Ordering::SeqCst);
        // As a commit does: clear the flag, then wake (the futex, and the wake
        // descriptor of an end that may sleep in `epoll`). A sleep that has not
        // begun yet then finds the flag cleared and does not block.
        entry.sh.u32_at(entry.word_at).store(0, Ordering::Relaxed);
        entry.sh.wake_sleeper(entry.word_at);
    }

    /// Removes registration `id` (if it is still there) from the list and from epoll.
    fn take(&self, id: u64) -> Option<Entry> {
        let entry = {
            let mut list = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let i = list.iter().position(|e| e.id == id)?;
            list.swap_remove(i)
        };
        let _ = epoll::delete(&self.epoll, &entry.pidfd);
        Some(entry)
    }
}

/// A sleeping end's registration with the watcher; dropping it unregisters.
#[derive(Debug)]
pub(crate) struct Registration {
    id: u64,
    fired: Arc<AtomicBool>,
}

impl Registration {
    /// Whether the watcher will still report the peer's death: it has not stopped,
    /// and this is the process that registered (not a child forked since). Read
    /// after raising the waiter flag and a `SeqCst` fence, like [`fired`](Self::fired):
    /// a watcher that stops after a `true` still wakes the sleep.
    pub(crate) fn trusted(&self) -> bool {
        let Some(Some(w)) = WATCHER.get() else { return false };
        let here = match w.here {
            Some(word) => word.load(Ordering::Relaxed) == 1,
            None => w.pid == sys::getpid(),
        };
        here && !DOWN.load(Ordering::Acquire)
    }

    /// Whether the watcher has seen the process exit (its pidfd turn readable).
    /// Read after raising the waiter flag and a `SeqCst` fence, a `false` means
    /// the watcher's wake is still to come (see the module docs).
    pub(crate) fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}

/// Asks the watcher to wake the futex word at `word_at` of `sh` when the process
/// behind `pidfd` exits. `None` when the watcher is unavailable: the caller must
/// then keep waking on its own to check the peer.
pub(crate) fn register(pidfd: &impl AsFd, sh: &Arc<Shared>, word_at: usize) -> Option<Registration> {
    let w = watcher()?;
    let pidfd = pidfd.as_fd().try_clone_to_owned().ok()?;
    let id = w.next_id.fetch_add(1, Ordering::Relaxed);
    let fired = Arc::new(AtomicBool::new(false));
    let mut list = w.entries.lock().unwrap_or_else(|e| e.into_inner());
    // Under the lock: a watcher stopping from now on finds the entry to wake.
    if DOWN.load(Ordering::Acquire) {
        return None;
    }
    // Under the lock, so that `fire` for this id finds the entry.
    epoll::add(&w.epoll, &pidfd, epoll::EventData::new_u64(id), epoll::EventFlags::IN).ok()?;
    list.push(Entry { id, pidfd, sh: sh.clone(), word_at, fired: fired.clone() });
    Some(Registration { id, fired })
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(w) = watcher() {
            w.take(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An epoll event with this id stops the watcher thread (tests only: ids
    /// count up from 1).
    pub(super) const STOP: u64 = u64::MAX;

    /// A watcher thread that stops hands its sleepers back: it wakes each (clearing
    /// its flag, as a commit would), their registrations stop being trusted, and no
    /// new one is made, so their checks poll the pidfd themselves: an end whose
    /// peer is then killed still gets `PeerDead`, and its sleeps have a bound again.
    /// Run in a process of its own (this test binary again), since the watcher never
    /// restarts.
    ///
    /// Proven by mutation: `DownOnExit` not waking the entries fails the first
    /// assertion; `trusted` ignoring `DOWN` fails the second; `PeerWatch::check`
    /// keeping an untrusted registration waits out the 5 s receive (`TimedOut`).
    #[test]
    fn a_stopped_watcher_hands_its_sleepers_back() {
        if ran_in_own_process("a_stopped_watcher_hands_its_sleepers_back", "BERTH_IPC_WATCH_STOP", "1") {
            return;
        }
        use crate::layout::off;
        let chan = crate::Channel::create_memfd(&crate::Config::new(4096)).unwrap();
        let pidfd = sys::Pidfd::open(sys::getpid()).unwrap();
        let sh = chan.shared();
        let word = sh.u32_at(off::RX_WAIT);
        word.store(1, Ordering::Relaxed);
        let reg = register(&pidfd, sh, off::RX_WAIT).expect("the watcher runs here");
        assert!(reg.trusted());
        // A second channel whose receiver sleeps on a live "sender": a child process
        // that holds the sender's pid word (claimed by hand, as `sender()` would).
        // Fenced: its sleeps' bounds then do not depend on this machine's membarrier.
        let other = crate::Channel::create_memfd(&crate::Config::new(4096).fenced(true)).unwrap();
        let mut peer = fake_sender(&other);
        let mut rx = other.receiver().unwrap();
        let short = Some(std::time::Duration::from_millis(30));
        assert_eq!(rx.recv(short).map(|m| m.len()).unwrap_err(), crate::RecvError::TimedOut);
        assert_eq!(rx.max_sleep(), None, "registered with the watcher, its sleeps need no timer");
        // Stop it: an eventfd, registered under the stop id, made readable.
        let w = watcher().unwrap();
        let stop = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        epoll::add(&w.epoll, &stop, epoll::EventData::new_u64(STOP), epoll::EventFlags::IN).unwrap();
        rustix::io::write(&stop, &1u64.to_ne_bytes()).unwrap();
        let t0 = std::time::Instant::now();
        while word.load(Ordering::Relaxed) == 1 && t0.elapsed() < std::time::Duration::from_secs(10) {
            sys::futex_wait(word, 1, Some(std::time::Duration::from_secs(10)));
        }
        assert_eq!(word.load(Ordering::Acquire), 0, "the stopping watcher woke the sleeper");
        assert!(!reg.trusted(), "a registration with a stopped watcher is still trusted");
        assert!(!reg.fired(), "no death was recorded");
        assert!(register(&pidfd, sh, off::TX_WAIT).is_none(), "registered with a stopped watcher");
        // The receiver's next wait drops its registration and bounds its sleeps.
        assert_eq!(rx.recv(short).map(|m| m.len()).unwrap_err(), crate::RecvError::TimedOut);
        assert_eq!(rx.max_sleep(), Some(std::time::Duration::from_millis(50)));
        kill_and_expect_peer_dead(&mut peer, &mut rx);
    }

    /// `BERTH_IPC_WATCHER=off`: no watcher starts, so nothing registers, a
    /// blocked end's sleeps keep a bound (`max_sleep`), and a killed peer is still
    /// seen by the end's own checks. Run in a process of its own (this test binary
    /// again, with the variable set), since the watcher starts once per process.
    ///
    /// Proven by mutation: `start` ignoring the variable fails the first assertion.
    #[test]
    fn turned_off_no_watcher_starts_and_a_death_is_still_seen() {
        if ran_in_own_process("turned_off_no_watcher_starts_and_a_death_is_still_seen", WATCHER_ENV, "off") {
            return;
        }
        assert!(watcher().is_none(), "a watcher started with {WATCHER_ENV}=off");
        let chan = crate::Channel::create_memfd(&crate::Config::new(4096).fenced(true)).unwrap();
        let mut peer = fake_sender(&chan);
        let mut rx = chan.receiver().unwrap();
        let short = Some(std::time::Duration::from_millis(30));
        assert_eq!(rx.recv(short).map(|m| m.len()).unwrap_err(), crate::RecvError::TimedOut);
        assert_eq!(rx.max_sleep(), Some(std::time::Duration::from_millis(50)), "no watcher: sleeps keep a bound");
        kill_and_expect_peer_dead(&mut peer, &mut rx);
    }

    /// A registration for a process that exits is fired: its entry leaves the list.
    #[test]
    fn an_exiting_process_fires_its_registration() {
        let chan = crate::Channel::create_memfd(&crate::Config::new(4096)).unwrap();
        let mut child = std::process::Command::new("sleep").arg("0.2").spawn().unwrap();
        let pidfd = sys::Pidfd::open(child.id()).unwrap();
        let sh = chan.shared();
        let word = sh.u32_at(crate::layout::off::RX_WAIT);
        word.store(1, Ordering::Relaxed);
        let reg = register(&pidfd, sh, crate::layout::off::RX_WAIT).expect("the watcher runs here");
        let t0 = std::time::Instant::now();
        // What a sleeping receiver does: wait while the flag is 1.
        while word.load(Ordering::Relaxed) == 1 && t0.elapsed() < std::time::Duration::from_secs(10) {
            sys::futex_wait(word, 1, Some(std::time::Duration::from_secs(10)));
        }
        assert_eq!(word.load(Ordering::Acquire), 0, "woken by the watcher");
        assert!(reg.fired(), "the death is recorded for the end's later checks");
        child.wait().unwrap();
        let w = watcher().unwrap();
        assert!(!w.entries.lock().unwrap().iter().any(|e| e.id == reg.id), "fired entries are dropped");
        drop(reg);
    }

    /// A child forked after an end registered inherits the registration but not the
    /// watcher thread, which will never report the peer's death to it: it must not
    /// trust the registration. The fork here is the one `Command` makes to run a
    /// `pre_exec` hook, which checks in the child.
    ///
    /// Proven by mutation: `trusted` ignoring the wipe-on-fork word fails it.
    #[test]
    fn a_forked_child_does_not_trust_its_parents_registration() {
        use std::os::unix::process::CommandExt;
        let chan = crate::Channel::create_memfd(&crate::Config::new(4096)).unwrap();
        let pidfd = sys::Pidfd::open(sys::getpid()).unwrap();
        let reg = register(&pidfd, chan.shared(), crate::layout::off::RX_WAIT).unwrap();
        assert!(reg.trusted(), "the registering process trusts it");
        let mut cmd = std::process::Command::new("true");
        // SAFETY: the hook only loads atomics (no allocation, no lock), which is
        // sound in the forked child of a multithreaded process.
        unsafe {
            cmd.pre_exec(move || match reg.trusted() {
                true => Err(std::io::Error::from_raw_os_error(rustix::io::Errno::PERM.raw_os_error())),
                false => Ok(()),
            });
        }
        let status = cmd.status().expect("the forked child trusted the registration");
        assert!(status.success());
    }

    /// A live process (`sleep 30`, killed when dropped) claimed as `chan`'s sender,
    /// as `Channel::sender` would claim it.
    fn fake_sender(chan: &crate::Channel) -> Reap {
        // Its own stdio, so that a parent reading our output is not kept waiting.
        let peer = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let peer = Reap(peer);
        let (start, _) = sys::start_time(peer.0.id()).unwrap();
        chan.shared().u32_at(crate::layout::off::TX_PID).store(peer.0.id(), Ordering::Release);
        chan.shared().u64_at(crate::layout::off::TX_START).store(start, Ordering::Release);
        peer
    }

    /// Unless `var` is `value` here, runs this test binary again for
    /// `watch::tests::<test>` alone with it set, checks that the run passed, and
    /// returns true; in that child, returns false (the caller runs the test body).
    fn ran_in_own_process(test: &str, var: &str, value: &str) -> bool {
        if std::env::var_os(var).is_some_and(|v| v == value) {
            return false;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("watch::tests::{test}"), "--test-threads=1"])
            .env(var, value)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && said.contains("1 passed"), "the child run failed: {said}");
        true
    }

    /// Kills `peer` and expects `rx`'s next receive to report its death.
    fn kill_and_expect_peer_dead(peer: &mut Reap, rx: &mut crate::Receiver) {
        peer.0.kill().unwrap();
        peer.0.wait().unwrap();
        let t0 = std::time::Instant::now();
        let err = rx.recv(Some(std::time::Duration::from_secs(5))).map(|m| m.len()).unwrap_err();
        assert_eq!(err, crate::RecvError::PeerDead, "after {:?}", t0.elapsed());
    }

    /// A child process killed however the test ends.
    struct Reap(std::process::Child);

    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// On a channel without the position-liveness flag (made by a build before
    /// layout 2.3) the peer may judge us by our heartbeat alone, so our sleeps keep
    /// a timer (1 s slices) although the watcher reports the peer's death; with the
    /// flag they need none.
    ///
    /// Proven by mutation: `wakes_suffice` ignoring the flag fails it.
    #[test]
    fn a_channel_without_the_liveness_flag_keeps_timed_sleeps() {
        use std::os::fd::AsFd;
        for flag in [true, false] {
            let made = crate::Channel::create_memfd(&crate::Config::new(4096).fenced(true)).unwrap();
            if !flag {
                let abi = made.shared().u32_at(crate::layout::off::ABI);
                abi.fetch_and(!crate::layout::ABI_POSITION_LIVENESS, Ordering::Relaxed);
            }
            // Opened again, as a peer's build would: the header is parsed afresh.
            let chan = crate::Channel::from_fd(made.as_fd().try_clone_to_owned().unwrap()).unwrap();
            let _peer = fake_sender(&chan);
            let mut rx = chan.receiver().unwrap();
            let short = Some(std::time::Duration::from_millis(30));
            assert_eq!(rx.recv(short).map(|m| m.len()).unwrap_err(), crate::RecvError::TimedOut);
            let want = (!flag).then_some(std::time::Duration::from_secs(1));
            assert_eq!(rx.max_sleep(), want, "liveness flag {flag}");
        }
    }

    /// Dropping a registration removes its entry and the pidfd's epoll interest.
    #[test]
    fn dropping_a_registration_unregisters() {
        let chan = crate::Channel::create_memfd(&crate::Config::new(4096)).unwrap();
        let pidfd = sys::Pidfd::open(sys::getpid()).unwrap();
        let reg = register(&pidfd, chan.shared(), crate::layout::off::TX_WAIT).unwrap();
        let id = reg.id;
        let w = watcher().unwrap();
        assert!(w.entries.lock().unwrap().iter().any(|e| e.id == id));
        drop(reg);
        assert!(!w.entries.lock().unwrap().iter().any(|e| e.id == id));
    }
}

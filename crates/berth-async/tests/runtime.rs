//! The executor: tasks and their join handles, panics contained, wakes from other
//! threads, remote spawns, sleeps and timeouts.

mod common;

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use berth_async::{Error, JoinError, Runtime, sleep, spawn, timeout, yield_now};
use common::{LIMIT, runtime};

#[test]
fn tasks_run_and_join() {
    let (rt, _) = runtime(64, 64);
    let total = rt
        .block_on(async {
            let tasks: Vec<_> = (0..100u64)
                .map(|i| {
                    spawn(async move {
                        yield_now().await;
                        i
                    })
                })
                .collect();
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            total
        })
        .unwrap();
    assert_eq!(total, 4950);
}

#[test]
fn a_panicking_task_is_reported_and_the_others_keep_running() {
    let (rt, _) = runtime(64, 64);
    rt.block_on(async {
        let bad = spawn(async {
            sleep(Duration::from_millis(1)).await.unwrap();
            panic!("on purpose");
        });
        let good = spawn(async {
            for _ in 0..5 {
                sleep(Duration::from_millis(2)).await.unwrap();
            }
            "still here"
        });
        assert_eq!(bad.await.unwrap_err(), JoinError::Panicked("on purpose".into()));
        assert_eq!(good.await.unwrap(), "still here");
        // And new tasks still run afterwards.
        assert_eq!(spawn(async { 1 }).await.unwrap(), 1);
    })
    .unwrap();
}

/// A waker fired from another thread wakes the runtime out of its wait on the port
/// (nothing else would: no op is pending).
#[test]
fn a_waker_fired_on_another_thread_wakes_the_runtime() {
    let (rt, _) = runtime(64, 64);
    let flag = Arc::new(AtomicBool::new(false));
    let slot: Arc<Mutex<Option<Waker>>> = Arc::new(Mutex::new(None));
    let (f, s) = (flag.clone(), slot.clone());
    let waker_thread = std::thread::spawn(move || {
        let deadline = Instant::now() + LIMIT;
        let waker = loop {
            if let Some(w) = s.lock().unwrap().take() {
                break w;
            }
            assert!(Instant::now() < deadline, "the task never registered its waker");
            std::thread::sleep(Duration::from_millis(1));
        };
        std::thread::sleep(Duration::from_millis(20));
        f.store(true, Ordering::Release);
        waker.wake();
    });
    let started = Instant::now();
    rt.block_on(async {
        let task = spawn(poll_fn(move |cx| {
            if flag.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            *slot.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }));
        timeout(LIMIT, task).await.expect("woken before the limit").unwrap();
    })
    .unwrap();
    assert!(started.elapsed() < LIMIT);
    waker_thread.join().unwrap();
}

#[test]
fn a_handle_spawns_from_another_thread() {
    // The runtime has nothing to do but wait in its port, with no timer armed: only
    // the spawn's post can wake it. (On its own thread, so a lost wake-up fails the
    // test at the limit instead of hanging it.)
    use std::future::Future;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let rt = Runtime::new().unwrap();
        let handle = rt.handle();
        let value = Arc::new(Mutex::new((None::<i32>, None::<Waker>)));
        let theirs = value.clone();
        let spawner = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            let task = handle.spawn(async move {
                let mut v = theirs.lock().unwrap();
                v.0 = Some(42);
                if let Some(w) = v.1.take() {
                    w.wake();
                }
            });
            drop(task.unwrap());
        });
        let got = rt
            .block_on(poll_fn(|cx| {
                let mut v = value.lock().unwrap();
                match v.0 {
                    Some(n) => Poll::Ready(n),
                    None => {
                        v.1 = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            }))
            .unwrap();
        spawner.join().unwrap();
        let _ = done_tx.send((got, rt.handle()));
        // A spawn the runtime never took: its join handle learns the runtime is gone.
        let orphan = rt.handle().spawn(async { 7 }).unwrap();
        drop(rt);
        let mut orphan = std::pin::pin!(orphan);
        let mut cx = std::task::Context::from_waker(Waker::noop());
        assert!(matches!(orphan.as_mut().poll(&mut cx), Poll::Ready(Err(JoinError::RuntimeGone))));
    });
    let (got, handle) = done_rx.recv_timeout(LIMIT).expect("the remote spawn woke the runtime");
    assert_eq!(got, 42);
    worker.join().expect("a spawn the runtime never took settles as RuntimeGone");
    // Gone after the runtime's drop (which the thread does right after sending).
    let deadline = Instant::now() + LIMIT;
    while !matches!(handle.spawn(async {}), Err(Error::RuntimeGone)) {
        assert!(Instant::now() < deadline, "spawns still accepted after the runtime was dropped");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn sleep_and_timeout_keep_time() {
    let (rt, _) = runtime(64, 64);
    rt.block_on(async {
        let t = Instant::now();
        sleep(Duration::from_millis(30)).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(30));
        let fast = timeout(Duration::from_secs(5), async { 7 }).await.unwrap();
        assert_eq!(fast, 7);
        let t = Instant::now();
        let slow = timeout(Duration::from_millis(20), sleep(Duration::from_secs(10))).await;
        assert!(matches!(slow, Err(Error::TimedOut)));
        assert!(t.elapsed() < Duration::from_secs(5));
    })
    .unwrap();
}

#[test]
fn abort_drops_a_task() {
    let (rt, _) = runtime(64, 64);
    rt.block_on(async {
        let task = spawn(async { sleep(Duration::from_secs(60)).await });
        yield_now().await;
        task.abort();
        assert_eq!(timeout(LIMIT, task).await.unwrap().unwrap_err(), JoinError::Aborted);
    })
    .unwrap();
}

#[test]
fn outside_a_runtime_is_an_error_not_a_panic() {
    let r = berth_async::TcpListener::bind("127.0.0.1:0".parse().unwrap());
    assert!(matches!(r, Err(Error::NoRuntime)));
}

#[test]
fn exhausting_the_op_pool_is_an_error() {
    let (rt, _) = runtime(4, 16);
    rt.block_on(async {
        let sleepers: Vec<_> = (0..4).map(|_| spawn(sleep(Duration::from_millis(50)))).collect();
        yield_now().await;
        assert!(matches!(sleep(Duration::from_millis(1)).await, Err(Error::PoolExhausted)));
        for s in sleepers {
            s.await.unwrap().unwrap();
        }
        sleep(Duration::from_millis(1)).await.unwrap();
    })
    .unwrap();
}

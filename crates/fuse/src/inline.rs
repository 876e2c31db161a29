//! Running a request's first steps on the FUSE thread that read it.
//!
//! Spawning each request onto the runtime would wake a worker thread just to encode and send
//! it; on a small machine that wake-up costs as much as the network round trip. Instead the
//! future is polled once right here: it sends its brick requests from this thread. If it then
//! has to wait, it is parked, and whichever thread wakes it (the connection reader that got
//! the reply, a runtime worker) moves it onto the runtime from there, where it finishes
//! without any further hand-off; on a FUSE queue's thread, onto that thread's runtime, so
//! that its answer goes back from the caller's CPU (one hand-off, from the waker).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

thread_local! {
    /// The runtime of this thread, if it has one of its own (a FUSE queue's).
    static HOME: std::cell::RefCell<Option<tokio::runtime::Handle>> = const { std::cell::RefCell::new(None) };
}

/// Makes `home` the runtime where requests started on this thread finish (a FUSE queue's
/// thread, which answers them).
pub fn set_home(home: Option<tokio::runtime::Handle>) {
    HOME.with(|h| *h.borrow_mut() = home);
}

/// A future polled in another runtime's context: what it spawns, its timers and its
/// sockets belong to that runtime, not to the one it runs on (a FUSE queue's, which serves
/// one CPU's requests and ends with the mount).
struct InContext {
    fut: BoxFuture,
    rt: tokio::runtime::Handle,
}

impl Future for InContext {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> std::task::Poll<()> {
        let _rt = self.rt.enter();
        self.fut.as_mut().poll(cx)
    }
}

enum Slot {
    /// Being polled on the FUSE thread.
    Polling,
    /// Woken while being polled: to be spawned as soon as that poll returns.
    PollingWoken,
    /// Waiting for its first wake-up.
    Parked(BoxFuture),
    /// Handed to the runtime (or finished); wake-ups of this waker no longer matter.
    Gone,
}

struct Task {
    rt: tokio::runtime::Handle,
    slot: Mutex<Slot>,
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *slot, Slot::Gone) {
            Slot::Polling => *slot = Slot::PollingWoken,
            Slot::Parked(fut) => {
                drop(slot);
                self.rt.spawn(fut);
            }
            other => *slot = other,
        }
    }
}

/// Runs `fut` on this thread until it first waits, then lets it finish on this thread's own
/// runtime if it has one (a FUSE queue's), on `rt` otherwise.
pub fn run<F>(rt: &tokio::runtime::Handle, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    // A thread with a runtime of its own (a FUSE queue's) finishes the requests it started:
    // their answers go back from there.
    let home = HOME.with(|h| h.borrow().clone());
    start(rt, home, fut)
}

/// As [`run`], finishing on `rt` wherever it started: work that answers nobody (a write
/// behind), which must outlive a FUSE queue's runtime and not take its CPU's turn.
pub fn run_shared<F>(rt: &tokio::runtime::Handle, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    start(rt, None, fut)
}

fn start<F>(rt: &tokio::runtime::Handle, home: Option<tokio::runtime::Handle>, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut fut: BoxFuture = match home {
        Some(_) => Box::pin(InContext {
            fut: Box::pin(fut),
            rt: rt.clone(),
        }),
        None => Box::pin(fut),
    };
    let task = Arc::new(Task {
        rt: home.clone().unwrap_or_else(|| rt.clone()),
        slot: Mutex::new(Slot::Polling),
    });
    let waker = Waker::from(task.clone());
    let polled = {
        // Timers, spawns and I/O registrations inside the future need the runtime's context.
        let _rt = rt.enter();
        fut.as_mut().poll(&mut Context::from_waker(&waker))
    };
    if polled.is_ready() {
        return;
    }
    let mut slot = task.slot.lock().unwrap_or_else(|p| p.into_inner());
    match std::mem::replace(&mut *slot, Slot::Gone) {
        Slot::PollingWoken => {
            drop(slot);
            task.rt.spawn(fut);
        }
        _ => *slot = Slot::Parked(fut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn ready_futures_finish_on_the_calling_thread() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let here = std::thread::current().id();
        let (tx, rx) = std::sync::mpsc::channel();
        run(rt.handle(), async move {
            tx.send(std::thread::current().id()).unwrap();
        });
        assert_eq!(rx.recv().unwrap(), here);
    }

    #[test]
    fn waiting_futures_finish_on_the_runtime_whoever_wakes_them() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..200u64 {
            let (wake_tx, wake_rx) = tokio::sync::oneshot::channel::<u64>();
            let (done, tx) = (done.clone(), tx.clone());
            run(rt.handle(), async move {
                // Waits on a timer and on another thread, several times.
                tokio::time::sleep(Duration::from_millis(i % 3)).await;
                let v = wake_rx.await.unwrap();
                tokio::task::yield_now().await;
                done.fetch_add(v as usize, Ordering::SeqCst);
                tx.send(()).unwrap();
            });
            // Sometimes woken at once from this thread, sometimes later from another.
            if i % 2 == 0 {
                wake_tx.send(1).unwrap();
            } else {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(1));
                    wake_tx.send(1).unwrap();
                });
            }
        }
        for _ in 0..200 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert_eq!(done.load(Ordering::SeqCst), 200);
    }

    #[test]
    fn a_queue_threads_requests_finish_there_but_spawn_on_the_shared_runtime() {
        let shared = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let home = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (wake_tx, wake_rx) = tokio::sync::oneshot::channel::<()>();
        let shared_h = shared.handle().clone();
        home.block_on(async {
            set_home(Some(tokio::runtime::Handle::current()));
            let here = std::thread::current().id();
            run(&shared_h, async move {
                let _ = wake_rx.await;
                // Finished on the queue's thread, in the shared runtime's context.
                let spawned = tokio::spawn(async { std::thread::current().id() }).await.unwrap();
                tx.send((std::thread::current().id() == here, spawned != here))
                    .unwrap();
            });
            // Woken from another runtime's thread.
            shared_h.spawn(async move {
                let _ = wake_tx.send(());
            });
            let got = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(5)))
                .await
                .unwrap();
            set_home(None);
            assert_eq!(got.expect("finished"), (true, true));
        });
    }
}

//! A thread pinned to each CPU, running a runtime of its own, on which a brick serves the
//! lanes local clients open for that CPU (`proto::lane`): a request made on a CPU is then
//! read, done and answered on it, each hand-off a context switch instead of a wake-up of the
//! other CPU. Each brick has its own (a disk that hangs stalls only its brick's), started
//! the first time a lane of their CPU arrives and ended with the brick; the work they hand
//! to the blocking pool runs on threads pinned to the same CPU.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Blocking threads per CPU's runtime (a disk that stops answering holds them all).
const BLOCKING_THREADS: usize = 64;

fn pin(cpu: usize) -> std::io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    Ok(rustix::thread::sched_setaffinity(None, &set)?)
}

/// Whether this process may run on `cpu`.
fn allowed(cpu: usize) -> bool {
    cpu < rustix::thread::CpuSet::MAX_CPU
        && rustix::thread::sched_getaffinity(None).is_ok_and(|set| set.is_set(cpu))
}

struct Core {
    handle: Handle,
    /// Dropped with the brick: the thread then ends, and its lanes with it.
    _stop: oneshot::Sender<()>,
}

/// A brick's threads, by CPU (`None`: that CPU's could not be had).
#[derive(Default)]
pub struct Cores(Mutex<HashMap<usize, Option<Core>>>);

impl Cores {
    /// The runtime serving CPU `cpu`, started now if it was not; `None` for a CPU this
    /// process may not run on, or whose thread cannot be made (the caller serves from
    /// anywhere).
    pub fn home(&self, cpu: usize) -> Option<Handle> {
        let mut cores = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(core) = cores.get(&cpu) {
            return core.as_ref().map(|c| c.handle.clone());
        }
        let core = match allowed(cpu).then(|| start(cpu)) {
            Some(Ok(core)) => Some(core),
            Some(Err(e)) => {
                tracing::warn!(cpu, "no thread of its own for the CPU's lanes: {e}");
                None
            }
            None => None,
        };
        let handle = core.as_ref().map(|c| c.handle.clone());
        cores.insert(cpu, core);
        handle
    }
}

fn start(cpu: usize) -> std::io::Result<Core> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("brick-cpu{cpu}"))
        .spawn(move || {
            let made = pin(cpu).and_then(|()| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .max_blocking_threads(BLOCKING_THREADS)
                    .on_thread_start(move || {
                        if let Err(e) = pin(cpu) {
                            tracing::debug!(cpu, "a blocking thread stays unpinned: {e}");
                        }
                    })
                    .build()
            });
            match made {
                Ok(rt) => {
                    let _ = tx.send(Ok(rt.handle().clone()));
                    // Serves what is spawned on it until the brick goes.
                    let _ = rt.block_on(stopped);
                }
                Err(e) => drop(tx.send(Err(e))),
            }
        })?;
    let handle = rx
        .recv()
        .map_err(|_| std::io::Error::other("the CPU's thread ended at its start"))??;
    Ok(Core { handle, _stop: stop })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpus_runtime_runs_there_is_made_once_and_ends_with_its_brick() {
        let cpu = (0..rustix::thread::CpuSet::MAX_CPU)
            .find(|&c| allowed(c))
            .unwrap();
        let cores = Cores::default();
        let home = cores.home(cpu).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        home.spawn(async move {
            let on = rustix::thread::sched_getcpu();
            let blocking = tokio::task::spawn_blocking(rustix::thread::sched_getcpu)
                .await
                .unwrap();
            tx.send((on, blocking)).unwrap();
        });
        assert_eq!(rx.recv().unwrap(), (cpu, cpu));
        assert_eq!(cores.home(cpu).unwrap().id(), home.id());
        assert!(cores.home(rustix::thread::CpuSet::MAX_CPU).is_none());
        // Gone with the brick: what runs there is dropped.
        let (held, dropped) = std::sync::mpsc::channel::<()>();
        home.spawn(async move {
            let _held = held;
            std::future::pending::<()>().await
        });
        drop(cores);
        let gone = dropped.recv_timeout(std::time::Duration::from_secs(20));
        assert_eq!(gone, Err(std::sync::mpsc::RecvTimeoutError::Disconnected));
    }
}

//! A thread pinned to each CPU, running a runtime of its own, on which a brick serves the
//! lanes clients open for that CPU (`proto::lane`): a request made on a CPU is then read,
//! done and answered on it, each hand-off a context switch instead of a wake-up of the other
//! CPU. The threads are the process's (every brick in it shares them), started the first
//! time a lane of their CPU arrives; the work they hand to the blocking pool runs on threads
//! pinned to the same CPU.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use tokio::runtime::Handle;

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

/// The runtime serving CPU `cpu`, started now if it was not; `None` for a CPU this process
/// may not run on, or if its thread cannot be made (the caller serves from anywhere).
pub fn home(cpu: usize) -> Option<Handle> {
    static CORES: OnceLock<Mutex<HashMap<usize, Handle>>> = OnceLock::new();
    let mut cores = CORES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(h) = cores.get(&cpu) {
        return Some(h.clone());
    }
    if !allowed(cpu) {
        return None;
    }
    match start(cpu) {
        Ok(h) => {
            cores.insert(cpu, h.clone());
            Some(h)
        }
        Err(e) => {
            tracing::warn!(cpu, "no thread of its own for the CPU's lanes: {e}");
            None
        }
    }
}

fn start(cpu: usize) -> std::io::Result<Handle> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("brick-cpu{cpu}"))
        .spawn(move || {
            let made = pin(cpu).and_then(|()| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
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
                    // Serves what is spawned on it for the rest of the process.
                    rt.block_on(std::future::pending::<()>());
                }
                Err(e) => drop(tx.send(Err(e))),
            }
        })?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the CPU's thread ended at its start"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpus_runtime_runs_there_and_is_made_once() {
        let cpu = (0..rustix::thread::CpuSet::MAX_CPU)
            .find(|&c| allowed(c))
            .unwrap();
        let home = home(cpu).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        home.spawn(async move {
            let on = rustix::thread::sched_getcpu();
            let blocking = tokio::task::spawn_blocking(rustix::thread::sched_getcpu)
                .await
                .unwrap();
            tx.send((on, blocking)).unwrap();
        });
        assert_eq!(rx.recv().unwrap(), (cpu, cpu));
        let again = super::home(cpu).unwrap();
        assert_eq!(again.id(), home.id());
        assert!(super::home(rustix::thread::CpuSet::MAX_CPU).is_none());
    }
}

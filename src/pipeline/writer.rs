//! The batcher (collects envelopes into batches) and the writer thread (one transaction per
//! batch, retried until it commits, at a lower CPU priority than message relaying).

use super::normalize::message_rows;
use super::queue::Envelope;
use super::PipelineMetrics;
use crate::config::WriterPriority;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use storage::{NewMessage, Store};
use tokio::sync::{mpsc, oneshot};

/// How a batch is cut: at `size` messages, or what arrived within `flush` of the first, or
/// within `linger` of a message someone waits for (its commit releases an acknowledgement).
pub(super) struct Cut {
    pub size: usize,
    pub flush: Duration,
    pub linger: Duration,
}

/// Collects envelopes into batches (see [`Cut`]) and hands them to the writer thread; ends
/// when the queue is closed and empty.
pub(super) async fn batch_loop(
    mut rx: mpsc::UnboundedReceiver<Envelope>,
    metrics: Arc<PipelineMetrics>,
    room: Arc<tokio::sync::Notify>,
    mut stop: oneshot::Receiver<()>,
    batches: mpsc::Sender<Vec<Envelope>>,
    cut: Cut,
) {
    let Cut {
        size: batch_size,
        flush,
        linger,
    } = cut;
    let linger = linger.min(flush);
    let mut stopping = false;
    let mut batch = Vec::new();
    loop {
        // Wait for the first envelope; take whatever else is already there with it.
        let got = if stopping {
            rx.recv_many(&mut batch, batch_size).await
        } else {
            tokio::select! {
                n = rx.recv_many(&mut batch, batch_size) => n,
                _ = &mut stop => {
                    // No new messages from here; what is queued is still written.
                    rx.close();
                    stopping = true;
                    continue;
                }
            }
        };
        if got == 0 {
            return;
        }
        metrics.last_take.store(storage::now_micros() as u64, Ordering::Relaxed);
        let mut rows: usize = batch.iter().map(Envelope::rows).sum();
        // A commit someone waits for (an acknowledgement held for it) is not delayed by the
        // whole flush interval: what arrives within a short linger goes with it.
        let wait = match batch.iter().any(Envelope::waited) {
            true => linger,
            false => flush,
        };
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        while rows < batch_size {
            let before = batch.len();
            tokio::select! {
                n = rx.recv_many(&mut batch, batch_size) => if n == 0 { break },
                _ = &mut deadline, if !stopping => break,
            }
            rows += batch[before..].iter().map(Envelope::rows).sum::<usize>();
            let soon = tokio::time::Instant::now() + linger;
            if batch[before..].iter().any(Envelope::waited) && soon < deadline.deadline() {
                deadline.as_mut().reset(soon);
            }
        }
        metrics.queued.fetch_sub(rows, Ordering::AcqRel);
        room.notify_waiters();
        if batches.send(std::mem::take(&mut batch)).await.is_err() {
            return;
        }
    }
}

/// The writer thread: makes the rows of each message and commits one transaction per batch. It
/// runs at a lower CPU priority than the threads that relay messages (`messages.
/// writer_priority`), so that storing delays live deliveries as little as possible; under
/// overload the queue fills instead (counted).
pub(super) fn writer_thread(
    store: Store,
    mut batches: mpsc::Receiver<Vec<Envelope>>,
    stored: tokio::sync::watch::Sender<u64>,
    metrics: Arc<PipelineMetrics>,
    priority: WriterPriority,
    limits: senml::Limits,
) {
    set_priority(priority);
    while let Some(batch) = batches.blocking_recv() {
        let mut rows = Vec::with_capacity(batch.len());
        let mut done = Vec::new();
        for e in batch {
            match e {
                Envelope::One(m, d) => {
                    rows.extend(message_rows(m, &metrics, limits));
                    done.extend(d);
                }
                Envelope::Batch(ms) => {
                    for m in ms {
                        rows.extend(message_rows(m, &metrics, limits));
                    }
                }
                Envelope::Barrier(d) => done.push(d),
            }
        }
        let n = rows.len() as u64;
        write_batch(&store, &rows, &metrics);
        stored.send_modify(|t| *t += n);
        for d in done {
            let _ = d.send(true);
        }
    }
}

/// Sets the calling thread's CPU scheduling class (Linux: both apply per thread). The one
/// `unsafe` of the workspace: plain system calls with integer arguments.
#[allow(unsafe_code)]
fn set_priority(p: WriterPriority) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: both calls only read their integer and by-reference plain-data arguments;
        // 0 and gettid() name the calling thread.
        let r = unsafe {
            match p {
                WriterPriority::Normal => 0,
                WriterPriority::Low => libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10),
                WriterPriority::Idle => {
                    let param = libc::sched_param { sched_priority: 0 };
                    libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
                }
            }
        };
        if r != 0 {
            tracing::warn!(priority = ?p, error = %std::io::Error::last_os_error(), "cannot set the message writer's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = p;
}

/// Rows the writer inserts between two offers of its CPU to waiting threads.
const YIELD_EVERY_ROWS: usize = 16;

/// Offers the CPU every [`YIELD_EVERY_ROWS`] rows. A batch is milliseconds of CPU; without
/// this, a relaying thread woken on the writer's CPU waits for the scheduler's slice to end
/// (measured: p99 at 8,000 msg/s 2.5 ms without, 0.95 ms with, at `low` priority).
fn yield_between_rows(row: usize) {
    if row % YIELD_EVERY_ROWS == YIELD_EVERY_ROWS - 1 {
        std::thread::yield_now();
    }
}

/// Writes one batch, retrying until it commits: a message accepted is never dropped.
fn write_batch(store: &Store, rows: &[NewMessage], metrics: &PipelineMetrics) {
    let mut backoff = Duration::from_millis(10);
    let started = std::time::Instant::now();
    metrics
        .writing_since
        .store(storage::now_micros() as u64, Ordering::Relaxed);
    loop {
        match store.insert_messages_with(rows, yield_between_rows) {
            Ok(()) => {
                metrics.writing_since.store(0, Ordering::Relaxed);
                if let Some(h) = &metrics.batch_seconds {
                    h.observe(started.elapsed().as_secs_f64());
                }
                metrics.stored.fetch_add(rows.len() as u64, Ordering::Relaxed);
                metrics.batches.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => tracing::warn!(error = %e, rows = rows.len(), "message batch not written; retrying"),
        }
        metrics.write_retries.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (nice, scheduling policy) of the calling thread, from /proc.
    #[cfg(target_os = "linux")]
    fn sched_of_this_thread() -> (i64, i64) {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        // Fields after the command name: state is field 3; nice is 19, policy 41.
        let rest: Vec<&str> = stat.rsplit_once(')').expect(")").1.split_whitespace().collect();
        let field = |n: usize| rest[n - 3].parse::<i64>().expect("number");
        (field(19), field(41))
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_writer_priority_applies_to_its_thread_only() {
        let on_thread = |p| {
            std::thread::spawn(move || {
                set_priority(p);
                sched_of_this_thread()
            })
            .join()
            .expect("thread")
        };
        assert_eq!(on_thread(WriterPriority::Low), (10, 0), "nice 10, SCHED_OTHER");
        assert_eq!(on_thread(WriterPriority::Idle).1, 5, "SCHED_IDLE");
        assert_eq!(on_thread(WriterPriority::Normal), sched_of_this_thread(), "unchanged");
        assert_eq!(sched_of_this_thread(), (0, 0), "the caller is untouched");
    }
}

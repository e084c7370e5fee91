//! busbridge's own bounded channel: the phase-4 [`Receiver`], with no crossbeam underneath.
//!
//! It offers crossbeam's receiving methods (`recv`, `try_recv`, `recv_timeout`, `iter`,
//! `try_iter`, `len`, `is_empty`) plus [`Receiver::recv_async`], so call sites written against
//! a crossbeam receiver change only the type's path. The sending side stays inside busbridge,
//! where the router applies the subscriber's back-pressure strategy (it can discard the oldest
//! item, which a crossbeam or tokio sender cannot).
//!
//! ```
//! use busbridge::queue::{channel, TryRecvError};
//! let (tx, rx) = channel::<u32>(2);
//! assert!(tx.try_send(1).is_ok());
//! assert_eq!(rx.len(), 1);
//! assert_eq!(rx.try_recv(), Ok(1));
//! drop(tx);
//! assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
//! ```

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The channel is empty and every sender is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("receiving on an empty and disconnected channel")]
pub struct RecvError;

/// Why [`Receiver::try_recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    #[error("receiving on an empty channel")]
    /// Nothing queued now.
    Empty,
    #[error("receiving on an empty and disconnected channel")]
    /// Nothing queued and the sender is gone.
    Disconnected,
}

/// Why [`Receiver::recv_timeout`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvTimeoutError {
    #[error("timed out waiting on receive operation")]
    /// Nothing arrived within the timeout.
    Timeout,
    #[error("channel is empty and disconnected")]
    /// Nothing queued and the sender is gone.
    Disconnected,
}

/// Why [`Sender::try_send`] could not queue an item; the item is handed back.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The queue is full; the value is handed back.
    Full(T),
    /// The receiver is gone; the value is handed back.
    Disconnected(T),
}

/// Items per chunk of [`Items`]: 64 delivered events are about 21 KB.
const CHUNK: usize = 64;

/// The queued items, oldest first, in chunks of [`CHUNK`]. A backlog grows by adding a chunk
/// and never moves what is queued: a `VecDeque` doubling under the lock copied the whole
/// backlog into fresh memory while publisher and reader waited (30 MB for 100,000 events).
/// One drained chunk is kept for the next, so a queue that stays short allocates nothing.
struct Items<T> {
    chunks: VecDeque<VecDeque<T>>,
    spare: Option<VecDeque<T>>,
    len: usize,
}

impl<T> Items<T> {
    fn new() -> Self {
        Self {
            chunks: VecDeque::new(),
            spare: None,
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push_back(&mut self, item: T) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK => last.push_back(item),
            _ => {
                let mut chunk = self
                    .spare
                    .take()
                    .unwrap_or_else(|| VecDeque::with_capacity(CHUNK));
                chunk.push_back(item);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    fn pop_front(&mut self) -> Option<T> {
        // No chunk is kept empty in `chunks`, so the first one holds the oldest item.
        let first = self.chunks.front_mut()?;
        let item = first.pop_front()?;
        if first.is_empty() {
            let drained = self.chunks.pop_front();
            self.spare = self.spare.take().or(drained);
        }
        self.len -= 1;
        Some(item)
    }
}

struct Shared<T> {
    queue: Mutex<Items<T>>,
    capacity: usize,
    /// Wakes blocking receivers.
    item: Condvar,
    /// Wakes async receivers.
    item_async: Notify,
    /// Async receivers waiting now: a send notifies only when there is one.
    async_waiting: AtomicUsize,
    /// Wakes senders waiting for room.
    room: Notify,
    senders: AtomicUsize,
    receivers: AtomicUsize,
}

impl<T> Shared<T> {
    fn disconnected_senders(&self) -> bool {
        self.senders.load(Ordering::Acquire) == 0
    }
    fn pop(&self) -> Option<T> {
        self.pop_from(self.queue.lock())
    }

    /// Takes the oldest item under `q`'s lock, releases the lock, then wakes senders waiting
    /// for room (they wait only when the queue is full).
    fn pop_from(&self, mut q: parking_lot::MutexGuard<'_, Items<T>>) -> Option<T> {
        let was_full = q.len() >= self.capacity;
        let item = q.pop_front();
        drop(q);
        if was_full && item.is_some() {
            self.room.notify_waiters();
        }
        item
    }
}

/// How long a blocking receiver looks for the next item before it sleeps: spinning, then
/// yielding, as crossbeam's `Backoff::snooze` does. A busy stream then costs no futex wake-up
/// per item; an idle one parks after a few microseconds.
fn snooze_until<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    for step in 0..10u32 {
        if let Some(v) = f() {
            return Some(v);
        }
        if step < 6 {
            for _ in 0..1 << step {
                std::hint::spin_loop();
            }
        } else {
            std::thread::yield_now();
        }
    }
    f()
}

/// Creates a channel holding at most `capacity` items (at least 1).
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let capacity = capacity.max(1);
    let shared = Arc::new(Shared {
        queue: Mutex::new(Items::new()),
        capacity,
        item: Condvar::new(),
        item_async: Notify::new(),
        async_waiting: AtomicUsize::new(0),
        room: Notify::new(),
        senders: AtomicUsize::new(1),
        receivers: AtomicUsize::new(1),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

/// The sending half (used by busbridge's router).
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `item` if there is room.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        self.try_send_from(item, |item| item)
    }

    /// Queues what `make` builds from `src` if there is room; builds nothing otherwise and
    /// hands `src` back (the router moves an envelope's fields into an item only once it is
    /// sure to be queued).
    pub(crate) fn try_send_from<S>(
        &self,
        src: S,
        make: impl FnOnce(S) -> T,
    ) -> Result<(), TrySendError<S>> {
        if self.is_disconnected() {
            return Err(TrySendError::Disconnected(src));
        }
        {
            let mut q = self.shared.queue.lock();
            if q.len() >= self.shared.capacity {
                return Err(TrySendError::Full(src));
            }
            q.push_back(make(src));
        }
        self.shared.item.notify_one();
        if self.shared.async_waiting.load(Ordering::Acquire) > 0 {
            self.shared.item_async.notify_waiters();
        }
        Ok(())
    }

    /// Discards the oldest queued item; false if the queue was empty.
    pub fn discard_oldest(&self) -> bool {
        self.shared.queue.lock().pop_front().is_some()
    }

    /// Waits until there may be room, every receiver is gone, or `limit` passes.
    /// Returns false only on timeout.
    pub async fn ready(&self, limit: Option<Duration>) -> bool {
        let wait = async {
            loop {
                let notified = self.shared.room.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.is_disconnected() || self.len() < self.shared.capacity {
                    return;
                }
                notified.await;
            }
        };
        match limit {
            None => {
                wait.await;
                true
            }
            Some(d) => tokio::time::timeout(d, wait).await.is_ok(),
        }
    }

    /// True once every receiver is dropped.
    pub fn is_disconnected(&self) -> bool {
        self.shared.receivers.load(Ordering::Acquire) == 0
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.shared.queue.lock().len()
    }

    /// True if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Take the lock so a receiver between its check and its wait cannot miss this.
            drop(self.shared.queue.lock());
            self.shared.item.notify_all();
            self.shared.item_async.notify_waiters();
        }
    }
}

/// The receiving half of a busbridge subscription (the phase-4 replacement for
/// `crossbeam_channel::Receiver`).
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// Blocks until an item arrives; errors once the channel is empty and disconnected.
    pub fn recv(&self) -> Result<T, RecvError> {
        self.recv_deadline(None).map_err(|_| RecvError)
    }

    /// Takes an item if one is queued.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        match self.shared.pop() {
            Some(item) => Ok(item),
            None if self.shared.disconnected_senders() => {
                // A last item may have been pushed just before the disconnect.
                self.shared.pop().ok_or(TryRecvError::Disconnected)
            }
            None => Err(TryRecvError::Empty),
        }
    }

    /// Blocks for at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_deadline(Some(Instant::now() + timeout))
    }

    fn recv_deadline(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        if let Some(item) = snooze_until(|| self.shared.pop()) {
            return Ok(item);
        }
        let mut q = self.shared.queue.lock();
        loop {
            if !q.is_empty() {
                return self.shared.pop_from(q).ok_or(RecvTimeoutError::Timeout);
            }
            if self.shared.disconnected_senders() {
                return Err(RecvTimeoutError::Disconnected);
            }
            match deadline {
                None => self.shared.item.wait(&mut q),
                Some(d) => {
                    if self.shared.item.wait_until(&mut q, d).timed_out() && q.is_empty() {
                        return Err(if self.shared.disconnected_senders() {
                            RecvTimeoutError::Disconnected
                        } else {
                            RecvTimeoutError::Timeout
                        });
                    }
                }
            }
        }
    }

    /// Waits asynchronously for an item; `None` once the channel is empty and disconnected.
    pub async fn recv_async(&self) -> Option<T> {
        loop {
            match self.try_recv() {
                Ok(item) => return Some(item),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            let notified = self.shared.item_async.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Counted before the re-check, so a send after it sees a waiter and notifies.
            self.shared.async_waiting.fetch_add(1, Ordering::AcqRel);
            let _waiting = Waiting(&self.shared.async_waiting);
            match self.try_recv() {
                Ok(item) => return Some(item),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => notified.await,
            }
        }
    }

    /// A blocking iterator that ends when the channel is empty and disconnected.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(move || self.recv().ok())
    }

    /// An iterator over what is queued now.
    pub fn try_iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(move || self.try_recv().ok())
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.shared.queue.lock().len()
    }

    /// True if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The channel's capacity.
    pub fn capacity(&self) -> Option<usize> {
        Some(self.shared.capacity)
    }
}

/// Decrements a waiter count when the wait ends (or its future is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.shared.receivers.fetch_add(1, Ordering::AcqRel);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        if self.shared.receivers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.room.notify_waiters();
        }
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("len", &self.len())
            .field("capacity", &self.shared.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any run of pushes and pops across chunk boundaries gives what a plain
        /// `VecDeque` gives, in the same order, with the same length.
        #[test]
        fn chunked_items_behave_as_one_deque(ops in proptest::collection::vec(0u8..3, 0..600)) {
            let (mut items, mut model) = (Items::new(), VecDeque::new());
            for (i, op) in ops.into_iter().enumerate() {
                // Pushes outnumber pops two to one, so the backlog spans several chunks.
                if op < 2 {
                    items.push_back(i);
                    model.push_back(i);
                } else {
                    proptest::prop_assert_eq!(items.pop_front(), model.pop_front());
                }
                proptest::prop_assert_eq!(items.len(), model.len());
                proptest::prop_assert!(items.chunks.iter().all(|c| !c.is_empty()));
            }
            while let Some(v) = model.pop_front() {
                proptest::prop_assert_eq!(items.pop_front(), Some(v));
            }
            proptest::prop_assert!(items.is_empty() && items.pop_front().is_none());
        }
    }

    #[test]
    fn a_drained_backlog_keeps_one_chunk() {
        let mut items = Items::new();
        // A short queue cycles one chunk.
        for round in 0..3 * CHUNK {
            items.push_back(round);
            assert_eq!(items.pop_front(), Some(round));
        }
        assert!(items.chunks.is_empty());
        assert_eq!(items.spare.as_ref().map(VecDeque::capacity), Some(CHUNK));
        // A burst's memory goes back once it is read (a `VecDeque` kept its peak).
        (0..10 * CHUNK).for_each(|i| items.push_back(i));
        assert_eq!(items.chunks.len(), 10);
        while items.pop_front().is_some() {}
        assert!(items.chunks.is_empty() && items.spare.is_some());
    }

    #[test]
    fn full_then_discard_oldest() {
        let (tx, rx) = channel(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        assert!(tx.discard_oldest());
        tx.try_send(3).unwrap();
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn recv_timeout_times_out_then_disconnects() {
        let (tx, rx) = channel::<u8>(1);
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(1)),
            Err(RecvTimeoutError::Timeout)
        );
        drop(tx);
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(1)),
            Err(RecvTimeoutError::Disconnected)
        );
    }

    #[test]
    fn blocking_recv_across_threads() {
        let (tx, rx) = channel(4);
        let t = std::thread::spawn(move || rx.iter().collect::<Vec<u32>>());
        for i in 0..3 {
            tx.try_send(i).unwrap();
        }
        drop(tx);
        assert_eq!(t.join().unwrap(), vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn ready_wakes_when_receiver_pops() {
        let (tx, rx) = channel(1);
        tx.try_send(1).unwrap();
        let waiter = tokio::spawn(async move {
            tx.ready(None).await;
            tx.try_send(2)
        });
        assert_eq!(rx.recv_async().await, Some(1));
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(rx.recv_async().await, Some(2));
    }

    /// Sends from another thread racing an async receiver's wait: no wake-up is lost (the
    /// sender notifies only when it sees a waiter).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_receiver_never_misses_a_send() {
        let (tx, rx) = channel(16);
        let n = 20_000u32;
        let sender = std::thread::spawn(move || {
            for i in 0..n {
                while let Err(TrySendError::Full(_)) = tx.try_send(i) {
                    std::thread::yield_now();
                }
            }
        });
        let mut next = 0;
        let got = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(i) = rx.recv_async().await {
                assert_eq!(i, next);
                next += 1;
            }
        })
        .await;
        assert!(got.is_ok(), "receiver stalled at {next}");
        assert_eq!(next, n);
        sender.join().unwrap();
    }

    /// A blocked sender is woken when a blocking receiver makes room.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queue_drains_through_blocking_receiver() {
        let (tx, rx) = channel(2);
        let n = 10_000u32;
        let reader = std::thread::spawn(move || rx.iter().collect::<Vec<u32>>());
        for i in 0..n {
            loop {
                match tx.try_send(i) {
                    Ok(()) => break,
                    Err(TrySendError::Full(_)) => {
                        assert!(
                            tx.ready(Some(Duration::from_secs(30))).await,
                            "no room at {i}"
                        )
                    }
                    Err(TrySendError::Disconnected(_)) => panic!("receiver gone"),
                }
            }
        }
        drop(tx);
        assert_eq!(reader.join().unwrap(), (0..n).collect::<Vec<_>>());
    }
}

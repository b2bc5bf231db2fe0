//! Wake-ups by part: the relay's one task runs several futures (the two
//! pumps, the idle watch, the shutdown stage) and, woken, polls only the
//! ones whose own waker fired, instead of every one of them on every
//! wake-up. Each part gets a waker that sets its bit and wakes the task.
//!
//! Without it each wake-up re-polled the pump that had nothing to do (a
//! readiness check under the socket's waiter lock) and the stage's watch
//! (a lock shared by every session), once per message in each direction.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use atomic_waker::AtomicWaker;

/// The shared half: which parts were woken since the task last looked, and
/// the task to wake.
struct Woken {
    bits: AtomicU8,
    task: AtomicWaker,
}

/// The waker of one part.
struct Part {
    woken: Arc<Woken>,
    bit: u8,
}

impl Wake for Part {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.bits.fetch_or(self.bit, Ordering::AcqRel);
        self.woken.task.wake();
    }
}

/// Up to eight parts, each with its own waker; every part counts as woken
/// at first.
pub(crate) struct Wakes {
    woken: Arc<Woken>,
    parts: Vec<Waker>,
}

impl Wakes {
    /// Wakers for `parts` parts (at most eight).
    pub fn new(parts: u8) -> Wakes {
        let parts = parts.min(8);
        let woken = Arc::new(Woken {
            bits: AtomicU8::new(u8::MAX),
            task: AtomicWaker::new(),
        });
        let wakers = (0..parts)
            .map(|i| {
                Waker::from(Arc::new(Part {
                    woken: Arc::clone(&woken),
                    bit: 1 << i,
                }))
            })
            .collect();
        Wakes {
            woken,
            parts: wakers,
        }
    }

    /// Called at the start of each poll of the task's future: the task's
    /// waker is noted, and the parts woken since the last call are
    /// returned (bit `i` for part `i`) and forgotten.
    pub fn take(&self, task: &Waker) -> u8 {
        self.woken.task.register(task);
        self.woken.bits.swap(0, Ordering::AcqRel)
    }

    /// The context to poll part `part` with.
    pub fn context(&self, part: usize) -> Context<'_> {
        Context::from_waker(&self.parts[part])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_part_woken_is_reported_once_and_wakes_the_task() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(Arc::clone(&count));
        let wakes = Wakes::new(3);
        // Every part counts as woken on the first look.
        assert_eq!(wakes.take(&task), u8::MAX);
        assert_eq!(wakes.take(&task), 0);
        wakes.context(1).waker().wake_by_ref();
        wakes.context(2).waker().wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task was woken once");
        assert_eq!(wakes.take(&task), 0b110);
        assert_eq!(wakes.take(&task), 0);
        // A wake-up from another thread reaches the task as well.
        let waker = wakes.context(0).waker().clone();
        std::thread::spawn(move || waker.wake()).join().unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert_eq!(wakes.take(&task), 0b1);
    }
}

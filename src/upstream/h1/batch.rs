//! Long response bodies read in batches: while a body of known length has more than [`BATCH`]
//! bytes to come, the socket's receive low-water mark (`SO_RCVLOWAT`) is raised so the kernel
//! wakes usher once per [`BATCH`] that has arrived, not once per segment the app sends.
//!
//! Each wake-up costs both sides: usher's read, the window update it sends back, and the app's
//! wake-up to send more. On a proxied 1 MiB response (the `h1_big` benchmark row, where the CPU
//! shared by the app and the client is the limit) batching cut the app's CPU per response from
//! about 435 us to 330 us and its context switches from 2.2 to 0.9, and raised requests per
//! second by 20% (512 KiB measured best: 256 KiB gave 9%, 1 MiB was worse than none).
//!
//! An app that sends slowly must not be held up: a read that has waited [`PATIENCE`] without
//! the mark being reached drops it and reads what has come, and the rest of that body is read
//! as it arrives. The mark is never above what the body has left to send, and goes back to the
//! kernel's default before the connection carries another request.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::Decode;

/// How much of a long body the kernel gathers before it wakes usher.
pub(super) const BATCH: u64 = 512 * 1024;

/// How long a read waits for a batch before it takes what has arrived: an app that trickles
/// a long body is read as it comes after one such wait.
const PATIENCE: Duration = Duration::from_millis(20);

/// The batching state of one response body.
#[derive(Debug, Default)]
pub(super) struct Batch {
    on: bool,
    /// Armed when a read has to wait; created on the first wait.
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl Batch {
    /// Batching for a body with `len` bytes to come over `tcp` (`None`: not TCP).
    pub(super) fn new(len: Option<u64>, tcp: bool) -> Batch {
        Batch {
            on: tcp && len.is_some_and(|n| n > BATCH),
            ..Batch::default()
        }
    }

    /// The mark to set before a read, if on: a batch, or what the body has left if less.
    pub(super) fn mark(&self, decode: Decode) -> Option<u32> {
        match decode {
            Decode::Length(left) if self.on => Some(left.clamp(1, BATCH) as u32),
            _ => None,
        }
    }

    /// A read found nothing: true when it has waited [`PATIENCE`] for the batch, and batching
    /// is now off for this body (drop the mark and read what has come). Until then the timer
    /// wakes `cx`.
    pub(super) fn out_of_patience(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.on {
            return false;
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(PATIENCE)));
        if !self.waiting {
            timer.as_mut().reset(Instant::now() + PATIENCE);
            self.waiting = true;
        }
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.on = false;
        true
    }

    /// A read returned something: the next wait starts its own patience.
    pub(super) fn read(&mut self) {
        self.waiting = false;
    }
}

#[cfg(test)]
mod tests {
    use super::super::Chunk;
    use super::*;

    #[test]
    fn only_long_bodies_over_tcp_are_batched_and_the_mark_never_passes_what_is_left() {
        let long = Some(4 * BATCH);
        assert_eq!(
            Batch::new(Some(BATCH), true).mark(Decode::Length(BATCH)),
            None
        );
        assert_eq!(Batch::new(None, true).mark(Decode::Close), None);
        assert_eq!(
            Batch::new(long, false).mark(Decode::Length(4 * BATCH)),
            None
        );
        let b = Batch::new(long, true);
        assert_eq!(b.mark(Decode::Length(4 * BATCH)), Some(BATCH as u32));
        assert_eq!(b.mark(Decode::Length(1000)), Some(1000));
        assert_eq!(b.mark(Decode::Length(0)), Some(1));
        assert_eq!(b.mark(Decode::Chunked(Chunk::Size)), None);
    }
}

//! How many long-lived streams hulld serves at once: `logs -f`, `attach`,
//! `events`, streamed `stats`, `exec` sessions and downloads. Each takes a
//! slot for its life; when none is free the client gets a 503 at once, so a
//! flood of followers cannot starve `docker ps`. The streams that still hold
//! one of the runtime's blocking threads for their life (an exec's output
//! relay, archive and image downloads) have a smaller share of their own,
//! so short blocking work always finds a thread.

use std::sync::Arc;

use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::ApiError;

/// The default of `hulld --max-streams`.
pub const DEFAULT_MAX_STREAMS: u32 = 4096;

/// Streams that hold a blocking thread, at most: tokio's blocking pool has
/// 512 threads, and every `docker ps` needs one for a moment.
const MAX_THREAD_STREAMS: usize = 256;

pub struct StreamSlots {
    max: usize,
    streams: Arc<Semaphore>,
    threads: Arc<Semaphore>,
}

/// One stream's place; dropping it frees it.
#[derive(Debug)]
pub struct StreamSlot {
    _stream: OwnedSemaphorePermit,
    _thread: Option<OwnedSemaphorePermit>,
}

impl StreamSlots {
    pub fn new(max: usize) -> StreamSlots {
        StreamSlots {
            max,
            streams: Arc::new(Semaphore::new(max)),
            threads: Arc::new(Semaphore::new(MAX_THREAD_STREAMS.min(max))),
        }
    }

    /// A slot for a stream served without a thread of its own.
    pub fn take(&self) -> Result<StreamSlot, ApiError> {
        let stream = self
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.full(self.max))?;
        Ok(StreamSlot {
            _stream: stream,
            _thread: None,
        })
    }

    /// A slot for a stream that holds a blocking thread while it lasts.
    pub fn take_with_thread(&self) -> Result<StreamSlot, ApiError> {
        let thread = self
            .threads
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.full(MAX_THREAD_STREAMS.min(self.max)))?;
        let mut slot = self.take()?;
        slot._thread = Some(thread);
        Ok(slot)
    }

    fn full(&self, max: usize) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many concurrent streams (at most {max}): close some logs -f, attach, events, stats or exec clients and try again"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_and_come_back() {
        let slots = StreamSlots::new(3);
        let a = slots.take().unwrap();
        let b = slots.take_with_thread().unwrap();
        let c = slots.take().unwrap();
        let refused = slots.take().unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(refused.message.contains("at most 3"), "{}", refused.message);
        drop((a, b));
        let _d = slots.take_with_thread().unwrap();
        let _e = slots.take().unwrap();
        assert!(slots.take().is_err());
        drop(c);
    }
}

//! The engine side of one request's event stream.
//!
//! Owns: sending a request's events and releasing its place in the queue bound when the final
//! event goes out (or the request is dropped). Must not know: the engine or its handle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use crate::events::RequestEvent;

/// The engine side of a request's stream. Sending the final event releases the queue place.
pub(crate) struct EventSink {
    tx: UnboundedSender<RequestEvent>,
    in_flight: Arc<AtomicUsize>,
    done: bool,
}

impl EventSink {
    pub(crate) fn new(tx: UnboundedSender<RequestEvent>, in_flight: Arc<AtomicUsize>) -> Self {
        Self { tx, in_flight, done: false }
    }

    /// Sends an event; returns false when the receiver is gone (the caller should abort).
    pub(crate) fn send(&mut self, event: RequestEvent) -> bool {
        let last = matches!(event, RequestEvent::Finished(_) | RequestEvent::Failed(_));
        let ok = self.tx.send(event).is_ok();
        if last {
            self.release();
        }
        ok
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    fn release(&mut self) {
        if !self.done {
            self.done = true;
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for EventSink {
    fn drop(&mut self) {
        self.release();
    }
}


//! The engine on its own thread, and the handle everyone else uses to reach it.
//!
//! Owns: the command channel into the engine thread, per-request event streams out of it,
//! request admission checks that must fail before anything is queued, and shutdown.
//! A `RequestStream` that is dropped before its request finished aborts that request, so a
//! client that goes away never leaves KV blocks behind.
//!
//! Must not know: HTTP or terminals.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Result;
use parking_lot::Mutex;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::engine::{Engine, EngineConfig};
use crate::info::EngineInfo;
use crate::kv_state::KvState;
use crate::sink::EventSink;
use crate::events::RequestEvent;
use crate::request::{NewRequest, SubmitError};
use crate::stats::{EngineStats, StatsSnapshot};
use kvault_models::model::LoadedModel;

pub(crate) enum Command {
    Add(Box<NewRequest>),
    Abort(u64),
    /// Reports whether the engine is idle with every block free and nothing referenced.
    CheckIdle(mpsc::Sender<Result<(), String>>),
    /// Stop taking work: abort what is queued or running, then exit the loop.
    Shutdown,
}

pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    stats: Arc<EngineStats>,
    info: Arc<EngineInfo>,
    next_id: AtomicU64,
    /// Requests submitted and not yet finished: bounds the queue (`--max-queued-requests`).
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
    closed: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl EngineHandle {
    /// Builds the engine (allocating the KV cache) and starts its thread. Sizing errors surface
    /// here, before anything runs.
    pub fn start(model: LoadedModel, config: EngineConfig) -> Result<Self> {
        let max_in_flight = config.max_queued_requests.saturating_add(config.max_num_seqs);
        let stats = Arc::new(EngineStats::default());
        let engine = Engine::new(model, config, stats.clone())?;
        let info = engine.info().clone();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("kvault-engine".into())
            .spawn(move || run_loop(engine, rx))?;
        Ok(Self {
            commands: tx,
            stats,
            info,
            next_id: AtomicU64::new(1),
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight,
            closed: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn info(&self) -> &Arc<EngineInfo> {
        &self.info
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Where the KV memory is, as of the last engine step.
    pub fn kv_state(&self) -> KvState {
        self.stats.kv_state()
    }

    /// Validates and queues a request; its events arrive on the returned stream.
    pub fn submit(&self, mut request: NewRequest) -> Result<RequestStream, SubmitError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        request.validate(&self.info)?;
        // Reserve a queue place before sending, so concurrent submitters cannot overshoot.
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::QueueFull);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = unbounded_channel();
        request.id = id;
        request.events = Some(EventSink::new(tx, self.in_flight.clone()));
        if self.commands.send(Command::Add(Box::new(request))).is_err() {
            return Err(SubmitError::ShuttingDown);
        }
        Ok(RequestStream { id, rx, commands: self.commands.clone(), finished: false })
    }

    pub fn abort(&self, id: u64) {
        let _ = self.commands.send(Command::Abort(id));
    }

    /// Waits until the engine has processed every command sent so far, then checks that it is
    /// idle: no request queued or running, every KV block free, pool invariants intact.
    pub fn check_idle(&self) -> Result<(), String> {
        let (tx, rx) = mpsc::channel();
        self.commands.send(Command::CheckIdle(tx)).map_err(|_| "the engine has stopped".to_string())?;
        rx.recv().map_err(|_| "the engine has stopped".to_string())?
    }

    /// Aborts everything queued or running and waits for the engine thread to exit.
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        let _ = self.commands.send(Command::Shutdown);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The caller side of a request. Dropping it before the final event aborts the request.
pub struct RequestStream {
    id: u64,
    rx: UnboundedReceiver<RequestEvent>,
    commands: mpsc::Sender<Command>,
    finished: bool,
}

impl std::fmt::Debug for RequestStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestStream").field("id", &self.id).field("finished", &self.finished).finish()
    }
}

impl RequestStream {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub async fn next(&mut self) -> Option<RequestEvent> {
        let ev = self.rx.recv().await;
        self.note(&ev);
        ev
    }

    /// For synchronous callers (the CLI). Must not be called inside an async runtime.
    pub fn blocking_next(&mut self) -> Option<RequestEvent> {
        let ev = self.rx.blocking_recv();
        self.note(&ev);
        ev
    }

    fn note(&mut self, ev: &Option<RequestEvent>) {
        if matches!(ev, None | Some(RequestEvent::Finished(_)) | Some(RequestEvent::Failed(_))) {
            self.finished = true;
        }
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.commands.send(Command::Abort(self.id));
        }
    }
}

fn run_loop(mut engine: Engine, rx: mpsc::Receiver<Command>) {
    loop {
        // Block only when there is nothing to compute.
        let first = if engine.has_work() {
            match rx.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => Some(Command::Shutdown),
            }
        } else {
            Some(rx.recv().unwrap_or(Command::Shutdown))
        };
        let mut pending: Vec<Command> = first.into_iter().collect();
        pending.extend(rx.try_iter());
        for command in pending {
            match command {
                Command::Add(req) => engine.add_request(*req),
                Command::Abort(id) => engine.abort(id),
                Command::CheckIdle(reply) => {
                    let _ = reply.send(engine.check_idle_invariants());
                }
                Command::Shutdown => {
                    engine.abort_all();
                    return;
                }
            }
        }
        if engine.has_work() {
            engine.step();
        }
    }
}

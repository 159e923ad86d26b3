//! The engine thread of `ember serve`: it owns the [`Engine`] (the one driver, as under the
//! CLI and the C ABI) and is the only thread that touches it. Connections send it commands
//! (submit, cancel, metrics); it steps the engine while any request has work, and after each
//! step sends every request's new text to its connection. A connection that has gone away
//! (its event channel closed, or an explicit cancel) has its request cancelled and released
//! at once, so its KV blocks go back to the arena.
//!
//! Admission: a request waits in the engine's queue while the arena is full (continuous
//! batching admits it when blocks free up); past `max_queue` requests waiting for their first
//! token, a new one is refused ([`Event::Busy`]: 503 with `Retry-After`).

use std::sync::mpsc::{Receiver, Sender};

use ember::engine::{Engine, FinishReason, Metrics, RequestId, RequestParams};

/// What a connection asks of the engine thread.
pub enum Cmd {
    /// Queue a request; its events go to `events`.
    Submit {
        key: u64,
        prompt: Vec<u32>,
        params: Box<RequestParams>,
        events: Sender<Event>,
    },
    /// The connection of request `key` is gone: free its blocks.
    Cancel(u64),
    /// A snapshot for `/metrics`.
    Metrics(Sender<Snapshot>),
}

/// What the engine thread tells a connection about its request.
pub enum Event {
    /// Queued in the engine.
    Accepted,
    /// Refused by the engine (bad parameters, cannot fit): 400.
    Invalid(ember::Error),
    /// Too many requests waiting: 503.
    Busy,
    /// New text of choice `index` (`tokens`: how many tokens that choice has generated).
    Delta { index: usize, text: String },
    /// Every choice has finished.
    Done(Vec<Finished>),
}

/// One finished choice.
pub struct Finished {
    pub text: String,
    pub tokens: usize,
    pub finish: FinishReason,
    /// The cause, when `finish` is [`FinishReason::Error`].
    pub error: Option<String>,
}

/// Engine and server counters for `/metrics`.
#[derive(Clone, Copy, Default)]
pub struct Snapshot {
    pub engine: Metrics,
    /// Requests that have produced a token and not finished.
    pub running: usize,
    /// Requests queued, not yet producing.
    pub waiting: usize,
    pub requests_total: u64,
    pub rejected_total: u64,
    /// Requests cancelled because their client went away.
    pub cancelled_total: u64,
}

struct Live {
    key: u64,
    rid: RequestId,
    events: Sender<Event>,
    /// Bytes of each choice's text already sent.
    sent: Vec<usize>,
}

/// Run the engine until every connection handle (the command channel's senders) is gone.
/// A step that fails (a backend error) fails every request in flight, then serving goes on.
pub fn run(mut engine: Engine, commands: Receiver<Cmd>, max_queue: usize) {
    let mut live: Vec<Live> = Vec::new();
    let mut stats = Snapshot::default();
    loop {
        // Block while idle; otherwise take what has arrived and step.
        if !engine.has_work() {
            match commands.recv() {
                Ok(c) => command(&mut engine, &mut live, &mut stats, max_queue, c),
                Err(_) => return,
            }
        }
        while let Ok(c) = commands.try_recv() {
            command(&mut engine, &mut live, &mut stats, max_queue, c);
        }
        if engine.has_work() {
            if let Err(e) = engine.step() {
                eprintln!("ember serve: engine step failed: {e}");
                for l in live.drain(..) {
                    let done = Finished {
                        text: String::new(),
                        tokens: 0,
                        finish: FinishReason::Error,
                        error: Some(e.to_string()),
                    };
                    let _ = l.events.send(Event::Done(vec![done]));
                    let _ = engine.release(l.rid);
                }
                continue;
            }
        }
        dispatch(&mut engine, &mut live, &mut stats);
    }
}

/// Whether request `rid` is still waiting for its first token.
fn waiting(engine: &Engine, rid: RequestId) -> bool {
    engine
        .output(rid)
        .is_ok_and(|mut o| o.all(|s| s.ids.is_empty() && s.finish.is_none()))
}

fn command(
    engine: &mut Engine,
    live: &mut Vec<Live>,
    stats: &mut Snapshot,
    max_queue: usize,
    c: Cmd,
) {
    match c {
        Cmd::Submit {
            key,
            prompt,
            params,
            events,
        } => {
            stats.requests_total += 1;
            let queued = live.iter().filter(|l| waiting(engine, l.rid)).count();
            if queued >= max_queue {
                stats.rejected_total += 1;
                let _ = events.send(Event::Busy);
                return;
            }
            match engine.submit(&prompt, &params) {
                Ok(rid) => {
                    if events.send(Event::Accepted).is_err() {
                        let _ = engine.release(rid);
                        return;
                    }
                    live.push(Live {
                        key,
                        rid,
                        events,
                        sent: vec![0; params.n],
                    });
                }
                // The request table is full: as busy as a long queue.
                Err(ember::Error::InvalidParam {
                    name: "request", ..
                }) => {
                    stats.rejected_total += 1;
                    let _ = events.send(Event::Busy);
                }
                Err(e) => {
                    stats.rejected_total += 1;
                    let _ = events.send(Event::Invalid(e));
                }
            }
        }
        Cmd::Cancel(key) => {
            if let Some(i) = live.iter().position(|l| l.key == key) {
                let l = live.swap_remove(i);
                let _ = engine.release(l.rid);
                stats.cancelled_total += 1;
            }
        }
        Cmd::Metrics(reply) => {
            let mut s = *stats;
            s.engine = engine.metrics();
            s.waiting = live.iter().filter(|l| waiting(engine, l.rid)).count();
            s.running = live.len() - s.waiting;
            let _ = reply.send(s);
        }
    }
}

/// Send each request's new text; finish and release the finished ones; cancel those whose
/// connection is gone.
fn dispatch(engine: &mut Engine, live: &mut Vec<Live>, stats: &mut Snapshot) {
    let mut i = 0;
    while i < live.len() {
        let l = &mut live[i];
        let mut gone = false;
        let mut finished = true;
        if let Ok(outs) = engine.output(l.rid) {
            for (index, o) in outs.enumerate() {
                finished &= o.finish.is_some();
                // The text only grows, by whole characters; `get` keeps a surprise from
                // panicking the engine thread.
                match o.text.get(l.sent[index]..) {
                    Some(new) if !new.is_empty() && !gone => {
                        let text = new.to_string();
                        l.sent[index] = o.text.len();
                        gone = l.events.send(Event::Delta { index, text }).is_err();
                    }
                    _ => {}
                }
            }
        }
        if !gone && finished {
            let done: Vec<Finished> = engine
                .output(l.rid)
                .map(|outs| {
                    outs.map(|o| Finished {
                        text: o.text.clone(),
                        tokens: o.ids.len(),
                        finish: o.finish.unwrap_or(FinishReason::Error),
                        error: o.error.as_ref().map(|e| e.to_string()),
                    })
                    .collect()
                })
                .unwrap_or_default();
            let _ = l.events.send(Event::Done(done));
        }
        if gone || finished {
            let l = live.swap_remove(i);
            let _ = engine.release(l.rid);
            stats.cancelled_total += u64::from(gone);
        } else {
            i += 1;
        }
    }
}

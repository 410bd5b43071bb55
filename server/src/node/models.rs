//! Loom models of the delivery path (reliability scenario R15): the real outbound queue, hub,
//! session handle and memory broker, run under every interleaving loom explores within its
//! preemption bound (3 unless `LOOM_MAX_PREEMPTIONS` says otherwise).
//!
//! Run them with `cargo test -p spinwire --features loom --lib node::models` (the `loom`
//! feature swaps [`crate::sync`]'s primitives for loom's; `tests/run-all.sh` does this).
//! Each model plays the tasks of the server as loom threads: producers (a broadcast, a reply),
//! a connection's writer task, the hub's flusher, a session task, a publisher, and a
//! disconnect from outside (the server API, shutdown).
//!
//! What they prove, for every explored interleaving:
//! - **outbound queue**: bytes reach the socket in each producer's order, whole and once,
//!   whether a direct write or the writer task sent them; what was accepted is written before
//!   the close; nothing is written after it; an overflow closes with 3008 without tearing a
//!   frame already partly written; no wake-up is lost (a lost one deadlocks the writer, which
//!   loom reports);
//! - **subscribe / unsubscribe / disconnect**: a subscriber gets its subscribe reply first, then
//!   every publication after the position in the reply, in order, without duplicates or a
//!   false "state lost", up to its unsubscribe, including the first publication of a stream
//!   racing the subscribe (centrifuge's `FirstPubEpochRace`); a disconnect racing a subscribe
//!   leaves no subscription or connection behind in the hub (`ServerSideSubs_CloseRace`).

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use bytes::Bytes;
use loom::future::block_on;
use loom::thread;

use crate::common::{HistoryFilter, StreamPosition};
use crate::engine::memory::MemoryEngine;
use crate::engine::{Broker, BrokerEventHandler, PublishOptions};
use crate::errors::Disconnect;
use crate::hub::outbound::{Batch, Deferred, DirectWrite, Outbound};
use crate::hub::{Hub, LiveDelivery, Prepared, SessionHandle};
use crate::proto::client::{ClientInfo, Publication, Reply, SubscribeResult};
use crate::protocol::ProtocolType;

/// Runs `model` under loom with a preemption bound (exhaustive search is too slow for models
/// with four threads; bugs of this kind need few preemptions to show).
fn explore(model: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = runs.clone();
    builder.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        model();
    });
    eprintln!("explored {} interleavings", runs.load(std::sync::atomic::Ordering::Relaxed));
}

/// A socket as the outbound queue sees it: takes at most `accept` bytes per direct write, and
/// records everything written, by either path, in order.
struct Wire {
    accept: usize,
    bytes: StdMutex<Vec<u8>>,
    /// The writer task took the close: nothing may be written any more.
    closed: StdMutex<bool>,
}

impl Wire {
    fn new(accept: usize) -> Arc<Self> {
        Arc::new(Self { accept, bytes: StdMutex::default(), closed: StdMutex::default() })
    }

    fn write(&self, bytes: &[u8]) {
        assert!(!*self.closed.lock().unwrap(), "bytes written after the close");
        self.bytes.lock().unwrap().extend_from_slice(bytes);
    }

    /// What was written, as the two-byte tokens the models send.
    fn tokens(&self) -> Vec<[u8; 2]> {
        let bytes = self.bytes.lock().unwrap();
        assert!(
            bytes.len().is_multiple_of(2),
            "a torn frame reached the socket: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        bytes.chunks(2).map(|pair| [pair[0], pair[1]]).collect()
    }
}

/// The direct-write side of [`Wire`], installed on the queue as a transport would.
struct DirectWire(Arc<Wire>);

impl DirectWrite for DirectWire {
    fn write_now(&self, messages: &[Bytes]) -> std::io::Result<Bytes> {
        let frame = Bytes::from(messages.concat());
        let taken = frame.len().min(self.0.accept);
        self.0.write(&frame[..taken]);
        Ok(frame.slice(taken..))
    }
}

/// A connection's writer task: writes batches of about `batch_bytes` until the close, returns
/// the close.
fn writer(outbound: &Outbound, wire: &Wire, batch_bytes: usize) -> Disconnect {
    loop {
        let batch = block_on(outbound.next_batch(batch_bytes));
        // The socket write is an await: anything may run between taking a batch and writing it.
        thread::yield_now();
        match batch {
            Batch::Messages(messages) => wire.write(&messages.concat()),
            Batch::Raw(raw) => wire.write(&raw),
            Batch::Close(disconnect) => {
                *wire.closed.lock().unwrap() = true;
                return disconnect;
            }
        }
    }
}

/// A broadcast's side of a delivery: queue without waking the writer, then flush directly.
fn deliver(outbound: &Outbound, token: &'static [u8]) -> bool {
    match outbound.enqueue_deferred(crate::metrics::FrameType::Unknown, Bytes::from_static(token)) {
        Deferred::FlushOwed => {
            outbound.flush_direct();
            true
        }
        Deferred::Queued => true,
        Deferred::Refused => false,
    }
}

fn queue_with_wire(max_bytes: usize, accept: usize) -> (Arc<Outbound>, Arc<Wire>) {
    let outbound = Arc::new(Outbound::new(max_bytes, crate::metrics::TransportTraffic::detached()));
    let wire = Wire::new(accept);
    outbound.set_direct(Box::new(DirectWire(wire.clone())));
    (outbound, wire)
}

/// Asserts `tokens` holds `sent` (one producer's accepted tokens) as a subsequence, in order.
fn in_order(tokens: &[[u8; 2]], sent: &[&[u8]]) {
    let mine: Vec<&[u8]> = tokens.iter().map(|t| &t[..]).filter(|t| t[0] == sent[0][0]).collect();
    assert_eq!(mine, sent, "one producer's messages reordered, lost or repeated on the wire");
}

/// A session queues a reply, a publication and a reply, while a broadcast queues two more (direct
/// writes that the socket takes in part) and the writer task writes one message at a time.
/// Everything reaches the socket without a close to push it out (a lost wake-up leaves the
/// writer asleep: loom reports the deadlock), whole, once, and in each producer's order.
#[test]
fn outbound_direct_writes_and_the_writer_keep_order_and_lose_nothing() {
    explore(|| {
        let (outbound, wire) = queue_with_wire(1024, 3);
        let session = thread::spawn({
            let outbound = outbound.clone();
            move || {
                assert!(
                    outbound.enqueue(crate::metrics::FrameType::Unknown, Bytes::from_static(b"x1"))
                        && deliver(&outbound, b"x2")
                );
                // A reply with no delivery after it: only the writer's wake-up sends it.
                assert!(outbound.enqueue(crate::metrics::FrameType::Unknown, Bytes::from_static(b"x3")));
            }
        });
        let broadcast = thread::spawn({
            let outbound = outbound.clone();
            move || assert!(deliver(&outbound, b"y1") && deliver(&outbound, b"y2"))
        });
        let writing = thread::spawn({
            let (outbound, wire) = (outbound.clone(), wire.clone());
            move || writer(&outbound, &wire, 2)
        });
        session.join().unwrap();
        broadcast.join().unwrap();
        while wire.bytes.lock().unwrap().len() < 10 {
            thread::yield_now();
        }
        outbound.close(Disconnect::shutdown());
        assert_eq!(writing.join().unwrap(), Disconnect::shutdown());
        let tokens = wire.tokens();
        in_order(&tokens, &[b"x1", b"x2", b"x3"]);
        in_order(&tokens, &[b"y1", b"y2"]);
        assert_eq!(outbound.pending_bytes(), 0);
    });
}

/// A close from outside races both producers: a message is written if and only if its
/// enqueue accepted it, and always before the close.
#[test]
fn outbound_close_racing_producers_writes_exactly_what_was_accepted() {
    explore(|| {
        let (outbound, wire) = queue_with_wire(1024, 1);
        let broadcast = thread::spawn({
            let outbound = outbound.clone();
            move || deliver(&outbound, b"a1")
        });
        let reply = thread::spawn({
            let outbound = outbound.clone();
            move || outbound.enqueue(crate::metrics::FrameType::Unknown, Bytes::from_static(b"b1"))
        });
        let writing = thread::spawn({
            let (outbound, wire) = (outbound.clone(), wire.clone());
            move || writer(&outbound, &wire, 4)
        });
        outbound.close(Disconnect::shutdown());
        let accepted_a = broadcast.join().unwrap();
        let accepted_b = reply.join().unwrap();
        assert_eq!(writing.join().unwrap(), Disconnect::shutdown());
        let tokens = wire.tokens();
        assert_eq!(tokens.contains(b"a1"), accepted_a, "accepted ⇔ written (a1)");
        assert_eq!(tokens.contains(b"b1"), accepted_b, "accepted ⇔ written (b1)");
    });
}

/// Producers overflow a queue of 5 bytes while a direct write leaves half a frame behind:
/// the connection closes with 3008, the half frame still goes out whole before the close, and
/// what goes out keeps each producer's order.
#[test]
fn outbound_overflow_closes_as_slow_without_tearing_a_frame() {
    explore(|| {
        let (outbound, wire) = queue_with_wire(5, 3);
        let broadcast = thread::spawn({
            let outbound = outbound.clone();
            move || {
                let sent: Vec<&'static [u8]> = [b"a1" as &[u8], b"a2", b"a3"]
                    .into_iter()
                    .take_while(|t| deliver(&outbound, t))
                    .collect();
                sent
            }
        });
        let reply = thread::spawn({
            let outbound = outbound.clone();
            move || {
                let sent: Vec<&'static [u8]> = [b"b1" as &[u8], b"b2"]
                    .into_iter()
                    .take_while(|t| {
                        outbound.enqueue(crate::metrics::FrameType::Unknown, Bytes::from_static(t))
                    })
                    .collect();
                sent
            }
        });
        let writing = thread::spawn({
            let (outbound, wire) = (outbound.clone(), wire.clone());
            move || writer(&outbound, &wire, 4)
        });
        let (sent_a, sent_b) = (broadcast.join().unwrap(), reply.join().unwrap());
        outbound.close(Disconnect::shutdown());
        let closed_with = writing.join().unwrap();
        let tokens = wire.tokens();
        let overflowed = sent_a.len() < 3 || sent_b.len() < 2;
        assert_eq!(closed_with.code == 3008, overflowed, "3008 exactly when the bound was hit");
        // An overflow drops what was queued (the slow client reconnects and recovers), so only
        // order and integrity hold then; without one, everything accepted is written.
        for (token, sent) in [(b'a', &sent_a), (b'b', &sent_b)] {
            let mine: Vec<&[u8]> = tokens.iter().map(|t| &t[..]).filter(|t| t[0] == token).collect();
            assert!(sent.starts_with(&mine), "written {mine:?} is not a prefix of accepted {sent:?}");
            if !overflowed {
                assert_eq!(&mine, sent);
            }
        }
    });
}

/// The node's side of a broker event, as `node::NodeEvents` does it for publications.
struct Events(Arc<Hub>);

impl BrokerEventHandler for Events {
    fn handle_publication(
        &self,
        channel: &str,
        publication: Publication,
        position: StreamPosition,
        _: Option<Bytes>,
    ) {
        self.0.broadcast(channel, Prepared::publication(channel, publication, &position.epoch));
    }
    fn handle_join(&self, _: &str, _: ClientInfo) {}
    fn handle_leave(&self, _: &str, _: ClientInfo) {}
    fn handle_control(&self, _: &[u8]) {}
}

/// Every message a connection got, decoded (JSON protocol).
struct Inbox(StdMutex<Vec<serde_json::Value>>);

impl DirectWrite for Arc<Inbox> {
    fn write_now(&self, messages: &[Bytes]) -> std::io::Result<Bytes> {
        let mut inbox = self.0.lock().unwrap();
        inbox.extend(messages.iter().map(|m| serde_json::from_slice(m).expect("JSON message")));
        Ok(Bytes::new())
    }
}

/// One node: memory broker, hub, and a connected session handle writing into an inbox.
struct Node {
    engine: Arc<MemoryEngine>,
    hub: Arc<Hub>,
    handle: Arc<SessionHandle>,
    inbox: Arc<Inbox>,
}

const CHANNEL: &str = "news";

impl Node {
    fn new() -> Arc<Self> {
        let engine = MemoryEngine::new();
        let hub = Arc::new(Hub::new());
        engine.set_event_handler(Arc::new(Events(hub.clone())));
        let handle =
            SessionHandle::new(ProtocolType::Json, 1 << 20, crate::metrics::TransportTraffic::detached());
        handle.set_user("u".to_owned());
        let inbox = Arc::new(Inbox(StdMutex::default()));
        handle.outbound.set_direct(Box::new(inbox.clone()));
        Arc::new(Self { engine, hub, handle, inbox })
    }

    fn publish(&self) {
        let options =
            PublishOptions { history_size: 10, history_ttl: Duration::from_secs(60), ..Default::default() };
        let publication = Publication { data: Bytes::from_static(b"{}"), ..Default::default() };
        block_on(self.engine.publish(CHANNEL, publication, &options)).expect("memory publish");
    }

    fn top(&self) -> StreamPosition {
        block_on(self.engine.history(CHANNEL, &HistoryFilter::default())).expect("history").position
    }

    /// The session task's positioned subscribe, step by step as `Session::subscribe_channel`
    /// and `Session::subscribe` take them. Returns the position in the reply.
    fn subscribe(&self, server_side: bool) -> StreamPosition {
        self.handle.begin_delivery(CHANNEL, server_side);
        self.hub.add_subscriber(CHANNEL, &self.handle);
        let top = self.top();
        let result = SubscribeResult {
            positioned: true,
            offset: top.offset,
            epoch: top.epoch.clone(),
            ..Default::default()
        };
        let reply = Reply { id: 1, subscribe: Some(result), ..Default::default() };
        let live = LiveDelivery {
            positioned: true,
            offset: top.offset,
            epoch: top.epoch.clone(),
            server_side,
            ..Default::default()
        };
        self.handle.complete_delivery(CHANNEL, vec![reply], live);
        top
    }

    /// The session task's teardown of the subscription (`detach_subscription` + `Teardown`).
    fn unsubscribe(&self) {
        self.handle.end_delivery(CHANNEL);
        self.hub.remove_subscriber(CHANNEL, &self.handle);
    }

    /// After every thread: flush what the flusher still owes, close, drain the queue as the
    /// writer would, and return what the client got.
    fn received(&self) -> Vec<serde_json::Value> {
        self.hub.flush_round();
        self.handle.outbound.close(Disconnect::shutdown());
        loop {
            match block_on(self.handle.outbound.next_batch(1 << 16)) {
                Batch::Messages(messages) => self.inbox.write_now(&messages).map(drop).unwrap(),
                Batch::Raw(_) => unreachable!("the inbox takes every direct write whole"),
                Batch::Close(_) => break,
            }
        }
        std::mem::take(&mut *self.inbox.0.lock().unwrap())
    }
}

/// The offsets of the publication pushes in `messages`, after checking that the subscribe
/// reply came first with `reply_at`, and that every push carries the stream's epoch when it
/// carries one.
fn pushed_offsets(messages: &[serde_json::Value], reply_at: &StreamPosition, epoch: &str) -> Vec<u64> {
    let (reply, pushes) = messages.split_first().expect("a subscribe reply");
    assert_eq!(reply["id"], 1, "the subscribe reply comes before any publication: {messages:?}");
    let offset_in_reply = reply["subscribe"]["offset"].as_u64().unwrap_or(0);
    assert_eq!(offset_in_reply, reply_at.offset);
    pushes
        .iter()
        .map(|push| {
            let publication = &push["push"]["pub"];
            if let Some(pushed_epoch) = publication["epoch"].as_str() {
                assert_eq!(pushed_epoch, epoch);
            }
            publication["offset"].as_u64().expect("a positioned publication")
        })
        .collect()
}

/// A positioned subscribe races the first two publications of a new stream (its epoch is born
/// with the first) and the hub's flusher; the session then unsubscribes after reading the
/// stream's top. The client gets the reply, then exactly the publications after the reply's
/// position up to that top, in order, once each; nothing is lost in the pending-to-live
/// switch and no false gap is seen.
#[test]
fn a_subscribe_racing_the_first_publications_gets_each_later_one_once_in_order() {
    explore(|| {
        let node = Node::new();
        node.hub.add_connection(&node.handle);
        let publisher = thread::spawn({
            let node = node.clone();
            move || (node.publish(), node.publish())
        });
        let flusher = thread::spawn({
            let node = node.clone();
            move || (node.hub.flush_round(), node.hub.flush_round())
        });
        let session = thread::spawn({
            let node = node.clone();
            move || {
                let reply_at = node.subscribe(false);
                let before_unsubscribe = node.top();
                node.unsubscribe();
                (reply_at, before_unsubscribe)
            }
        });
        let (reply_at, before_unsubscribe) = session.join().unwrap();
        publisher.join().unwrap();
        flusher.join().unwrap();
        assert_eq!(node.handle.pending_controls(), 0, "a false 'state lost' (insufficient state)");
        assert!(!node.handle.is_closed(), "the connection was closed");
        let epoch = node.top().epoch;
        let offsets = pushed_offsets(&node.received(), &reply_at, &epoch);
        let expected: Vec<u64> = (reply_at.offset + 1..=before_unsubscribe.offset).collect();
        assert!(offsets.starts_with(&expected), "published while subscribed: {expected:?}, got {offsets:?}");
        assert!(offsets.len() <= 2 && offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
        assert!(node.hub.channels().is_empty(), "a subscription left in the hub");
    });
}

/// A disconnect from outside (API `disconnect`, shutdown) races a server-side subscribe while
/// publications flow; the session task then cleans up as it does on close. Nothing of the
/// connection stays in the hub, and what the client got before the close is a gap-free run
/// after its subscribe reply.
#[test]
fn a_disconnect_racing_a_subscribe_leaves_nothing_in_the_hub() {
    explore(|| {
        let node = Node::new();
        node.hub.add_connection(&node.handle);
        let publisher = thread::spawn({
            let node = node.clone();
            move || node.publish()
        });
        let disconnect = thread::spawn({
            let node = node.clone();
            move || {
                node.hub.flush_round();
                node.handle.disconnect(Disconnect::shutdown());
            }
        });
        let session = thread::spawn({
            let node = node.clone();
            move || node.subscribe(true)
        });
        let reply_at = session.join().unwrap();
        publisher.join().unwrap();
        disconnect.join().unwrap();
        // The session task finishes the command it is in, sees the close and cleans up
        // (`Session::cleanup`): one task, so a cleanup never races its own subscribe.
        assert!(node.handle.is_closed());
        node.unsubscribe();
        node.hub.remove_connection(&node.handle);
        assert!(node.hub.channels().is_empty(), "a ghost subscription in the hub");
        assert_eq!(node.hub.num_connections(), 0, "a ghost connection in the hub");
        let messages = node.received();
        if !messages.is_empty() {
            let epoch = node.top().epoch;
            let offsets = pushed_offsets(&messages, &reply_at, &epoch);
            let expected: Vec<u64> = (reply_at.offset + 1..).take(offsets.len()).collect();
            assert_eq!(offsets, expected);
        }
    });
}

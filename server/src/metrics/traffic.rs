//! Per-transport frame counts (`centrifugo_transport_messages_*`): counted for every frame a
//! connection sends or receives, so on the fan-out path. The first threads to count each own a
//! slot and add to it with plain loads and stores: a locked add per delivery was measured to
//! halve the fan-out rate at saturation on this VM (ARCHITECTURE.md, "Cost of the metrics").
//! Threads past those share the last slot with atomic adds. A scrape sums the slots.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::primitives::Gauge;

/// What a frame to or from a client is, as the `frame_type` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Connect,
    Subscribe,
    Unsubscribe,
    Publish,
    Presence,
    PresenceStats,
    History,
    Ping,
    Send,
    Rpc,
    Refresh,
    SubRefresh,
    PushPublication,
    PushJoin,
    PushLeave,
    PushUnsubscribe,
    PushMessage,
    PushSubscribe,
    PushConnect,
    PushDisconnect,
    PushRefresh,
    ServerPing,
    ClientPong,
    Unknown,
}

impl FrameType {
    pub const COUNT: usize = FrameType::Unknown as usize + 1;

    const ALL: [FrameType; Self::COUNT] = [
        Self::Connect,
        Self::Subscribe,
        Self::Unsubscribe,
        Self::Publish,
        Self::Presence,
        Self::PresenceStats,
        Self::History,
        Self::Ping,
        Self::Send,
        Self::Rpc,
        Self::Refresh,
        Self::SubRefresh,
        Self::PushPublication,
        Self::PushJoin,
        Self::PushLeave,
        Self::PushUnsubscribe,
        Self::PushMessage,
        Self::PushSubscribe,
        Self::PushConnect,
        Self::PushDisconnect,
        Self::PushRefresh,
        Self::ServerPing,
        Self::ClientPong,
        Self::Unknown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::Publish => "publish",
            Self::Presence => "presence",
            Self::PresenceStats => "presence_stats",
            Self::History => "history",
            Self::Ping => "ping",
            Self::Send => "send",
            Self::Rpc => "rpc",
            Self::Refresh => "refresh",
            Self::SubRefresh => "sub_refresh",
            Self::PushPublication => "push_publication",
            Self::PushJoin => "push_join",
            Self::PushLeave => "push_leave",
            Self::PushUnsubscribe => "push_unsubscribe",
            Self::PushMessage => "push_message",
            Self::PushSubscribe => "push_subscribe",
            Self::PushConnect => "push_connect",
            Self::PushDisconnect => "push_disconnect",
            Self::PushRefresh => "push_refresh",
            Self::ServerPing => "server_ping",
            Self::ClientPong => "client_pong",
            Self::Unknown => "unknown",
        }
    }
}

/// Slots per transport: one per counting thread (the runtime's workers and flushers), the
/// last one shared by any further threads.
const SLOTS: usize = 16;
/// Per frame type: frames sent, bytes sent, frames received, bytes received.
const FIGURES: usize = 4;

#[repr(align(64))]
#[derive(Debug)]
struct Slot([AtomicU64; FrameType::COUNT * FIGURES]);

impl Default for Slot {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's number among the counting threads (never reused).
    static THREAD_NUMBER: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

/// One transport's frame counts.
#[derive(Debug)]
pub struct TransportTraffic {
    pub name: &'static str,
    /// Connections open on this transport (`spinwire_transport_connections`).
    pub open: Gauge,
    slots: Box<[Slot]>,
}

/// Totals for one frame type on one transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub sent: u64,
    pub sent_bytes: u64,
    pub received: u64,
    pub received_bytes: u64,
}

impl TransportTraffic {
    pub fn new(name: &'static str) -> Self {
        Self { name, open: Gauge::default(), slots: (0..SLOTS).map(|_| Slot::default()).collect() }
    }

    fn add(&self, frame: FrameType, figure: usize, bytes: usize) {
        self.add_many(frame, figure, 1, bytes);
    }

    fn add_many(&self, frame: FrameType, figure: usize, frames: u64, bytes: usize) {
        if !super::COUNTING {
            return;
        }
        let base = frame as usize * FIGURES + figure;
        let thread = THREAD_NUMBER.with(|number| *number);
        if let Some(own) = self.slots[..SLOTS - 1].get(thread) {
            // Only this thread writes this slot: no read-modify-write can be lost.
            let (count, size) = (&own.0[base], &own.0[base + 1]);
            count.store(count.load(Ordering::Relaxed) + frames, Ordering::Relaxed);
            size.store(size.load(Ordering::Relaxed) + bytes as u64, Ordering::Relaxed);
        } else {
            let shared = &self.slots[SLOTS - 1];
            shared.0[base].fetch_add(frames, Ordering::Relaxed);
            shared.0[base + 1].fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    /// Counters no node reads (for handles built outside a session, in tests).
    pub fn detached() -> std::sync::Arc<Self> {
        static DETACHED: std::sync::OnceLock<std::sync::Arc<TransportTraffic>> = std::sync::OnceLock::new();
        DETACHED.get_or_init(|| std::sync::Arc::new(Self::new("detached"))).clone()
    }

    /// `frames` frames of `bytes` in all went to a client.
    pub fn sent_many(&self, frame: FrameType, frames: u64, bytes: usize) {
        self.add_many(frame, 0, frames, bytes);
    }

    /// A command (or pong) of `bytes` came from a client.
    pub fn received(&self, frame: FrameType, bytes: usize) {
        self.add(frame, 2, bytes);
    }

    /// Totals per frame type, for the frame types seen at all.
    pub fn figures(&self) -> Vec<(FrameType, Figures)> {
        FrameType::ALL
            .iter()
            .filter_map(|&frame| {
                let base = frame as usize * FIGURES;
                let total = |figure: usize| {
                    self.slots.iter().map(|slot| slot.0[base + figure].load(Ordering::Relaxed)).sum()
                };
                let figures = Figures {
                    sent: total(0),
                    sent_bytes: total(1),
                    received: total(2),
                    received_bytes: total(3),
                };
                (figures != Figures::default()).then_some((frame, figures))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let traffic = std::sync::Arc::new(TransportTraffic::new("test"));
        // More threads than slots: the last ones share a slot and must not lose counts.
        let threads: Vec<_> = (0..SLOTS + 8)
            .map(|_| {
                let traffic = traffic.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        traffic.sent_many(FrameType::PushPublication, 1, 10);
                    }
                    traffic.received(FrameType::ClientPong, 2);
                })
            })
            .collect();
        threads.into_iter().for_each(|thread| thread.join().unwrap());
        let figures = traffic.figures();
        assert_eq!(
            figures,
            vec![
                (
                    FrameType::PushPublication,
                    Figures { sent: 24_000, sent_bytes: 240_000, ..Default::default() }
                ),
                (FrameType::ClientPong, Figures { received: 24, received_bytes: 48, ..Default::default() }),
            ]
        );
        assert_eq!(
            FrameType::ALL.iter().map(|f| *f as usize).collect::<Vec<_>>(),
            (0..FrameType::COUNT).collect::<Vec<_>>()
        );
    }
}

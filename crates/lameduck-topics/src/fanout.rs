//! One reader of each topic per process, shared by its subscribers: with a
//! thousand subscribers, a publish costs one read of the store, not a
//! thousand. The store stays the truth: a subscriber that finds a gap in
//! what the shared reader passes on, falls behind it, or sees the history
//! change, reads the store itself, as [`subscribe`](crate::subscribe) does.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use futures_util::Stream;
use tokio::sync::broadcast;

use crate::{
    Event, Head, Message, Position, Store, SubscribeConfig, TopicError, TopicName,
    subscribe::subscribe_with,
};

/// What the shared reader read at once: the head it read it with, and the
/// messages (contiguous, possibly none when the history changed).
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) head: Head,
    pub(crate) messages: Vec<Message>,
}

/// A topic's shared reader; stops when its last subscriber is gone.
#[derive(Debug)]
pub(crate) struct Tail {
    pub(crate) batches: broadcast::Sender<Arc<Batch>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Batches a shared reader keeps for subscribers that are a little slow;
/// one further behind reads the store itself.
const TAIL_BATCHES: usize = 256;

/// Subscriptions to the topics of one store, sharing one reader per topic.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use futures_util::StreamExt;
/// use lameduck_topics::{Event, Fanout, MemoryStore, NewMessage, Store, TopicName};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store: Arc<dyn Store> = Arc::new(MemoryStore::new(Default::default()));
/// let fanout = Fanout::new(store.clone(), Default::default());
/// let news = TopicName::new("news").unwrap();
/// let mut a = Box::pin(fanout.subscribe(news.clone(), None));
/// let mut b = Box::pin(fanout.subscribe(news.clone(), None));
/// assert!(matches!(a.next().await, Some(Ok(Event::Start { .. }))));
/// assert!(matches!(b.next().await, Some(Ok(Event::Start { .. }))));
/// store.publish(&news, NewMessage::new("one")).await.unwrap();
/// for s in [&mut a, &mut b] {
///     let Some(Ok(Event::Message(m))) = s.next().await else { panic!() };
///     assert_eq!(&m.payload[..], b"one");
/// }
/// # });
/// ```
#[derive(Debug)]
pub struct Fanout {
    store: Arc<dyn Store>,
    config: SubscribeConfig,
    tails: Mutex<HashMap<TopicName, Weak<Tail>>>,
}

impl Fanout {
    /// Subscriptions to the topics of `store`, read in `config`'s batches
    /// and polled at its interval (for publishes of other processes that
    /// the store does not announce).
    pub fn new(store: Arc<dyn Store>, config: SubscribeConfig) -> Self {
        Self {
            store,
            config,
            tails: Mutex::new(HashMap::new()),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// As [`subscribe`](crate::subscribe), with the same guarantees (a
    /// first [`Event::Start`], then every message once, in order), reading
    /// new messages through the topic's shared reader.
    pub fn subscribe(
        &self,
        topic: TopicName,
        since: Option<Position>,
    ) -> impl Stream<Item = Result<Event, TopicError>> + Send + 'static {
        let tail = self.tail(&topic);
        // Subscribed before the subscription's first read: whatever the
        // reader passes on after that read is seen.
        let batches = tail.batches.subscribe();
        subscribe_with(
            self.store.clone(),
            topic,
            since,
            self.config,
            Some((tail, batches)),
        )
    }

    fn tail(&self, topic: &TopicName) -> Arc<Tail> {
        let mut tails = self.tails.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tail) = tails.get(topic).and_then(Weak::upgrade) {
            return tail;
        }
        tails.retain(|_, t| t.strong_count() > 0);
        let (batches, _) = broadcast::channel(TAIL_BATCHES);
        let task = tokio::spawn(read_tail(
            self.store.clone(),
            topic.clone(),
            self.config,
            batches.clone(),
        ));
        let tail = Arc::new(Tail { batches, task });
        tails.insert(topic.clone(), Arc::downgrade(&tail));
        tail
    }
}

/// Reads the topic from its head on, passing each batch on.
async fn read_tail(
    store: Arc<dyn Store>,
    topic: TopicName,
    config: SubscribeConfig,
    batches: broadcast::Sender<Arc<Batch>>,
) {
    let mut at: Option<(crate::Epoch, u64)> = None;
    // Said once when reads start failing, not at every poll.
    let mut failing = false;
    loop {
        let version = store.version();
        let after = at.map_or(u64::MAX, |(_, offset)| offset);
        let read = if at.is_none() {
            store.head(&topic).await.map(|head| (head, Vec::new()))
        } else {
            store.read(&topic, after, config.batch).await
        };
        match read {
            Ok((head, messages)) => {
                failing = false;
                let changed =
                    at.is_some_and(|(epoch, offset)| head.epoch != epoch || head.last < offset);
                if at.is_none() || changed {
                    // Start, or the history changed: follow the new head;
                    // subscribers see the change in the head and read the
                    // store themselves.
                    at = Some((head.epoch, head.last));
                    let _ = batches.send(Arc::new(Batch {
                        head,
                        messages: Vec::new(),
                    }));
                    continue;
                }
                if let Some(last) = messages.last() {
                    at = Some((head.epoch, last.position.offset));
                    let _ = batches.send(Arc::new(Batch { head, messages }));
                    continue;
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(topic = %topic, error = %e, "topic.tail_read_failed");
            }
            Err(_) => {}
        }
        store.changed(&topic, version, config.poll).await;
    }
}

//! Subscriptions: a resume that says whether it was recovered, then every
//! message in the log's order, replay and live alike.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use futures_util::{Stream, stream};

use tokio::sync::broadcast;

use crate::{
    Epoch, Message, Position, Store, TopicError, TopicName,
    fanout::{Batch, Tail},
};

/// How a subscription started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resume {
    /// No position was given: delivery starts at the head.
    Fresh,
    /// Every message after the given position follows: nothing was missed.
    Recovered,
    /// The given position cannot be resumed from; delivery starts at the
    /// head, and the client must reload its state rather than assume it
    /// saw everything.
    NotRecovered(Unrecoverable),
}

/// Why a position cannot be resumed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unrecoverable {
    /// It belongs to another history of the topic (the store lost the one
    /// it was in).
    OtherEpoch,
    /// It is ahead of the head: the store was rolled back (restored from
    /// an older copy, or failed over to a lagging replica). Offsets after
    /// the head would be issued again to other messages.
    AheadOfHead,
    /// The messages after it are no longer retained.
    Trimmed,
}

/// What a subscription yields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// First, and again if the topic's history changes under a running
    /// subscription: how delivery (re)starts, after `from`.
    Start {
        /// Whether nothing was missed.
        resume: Resume,
        /// Delivery continues after this position.
        from: Position,
    },
    /// The next message.
    Message(Message),
    /// The subscriber fell so far behind that messages it had not read
    /// were trimmed: the subscription ends here (never with a silent gap).
    Lagged {
        /// The last position delivered.
        at: Position,
    },
}

/// Settings of a subscription.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct SubscribeConfig {
    /// Messages read from the store at a time.
    pub batch: usize,
    /// Longest wait before looking for messages published by another
    /// process (the in-process ones wake the subscription at once).
    pub poll: Duration,
}

impl Default for SubscribeConfig {
    /// Batches of 256, a 100 ms poll.
    fn default() -> Self {
        Self {
            batch: 256,
            poll: Duration::from_millis(100),
        }
    }
}

/// Where a resume from `since` starts, given the head.
fn resume_from(head: crate::Head, since: Option<Position>) -> (Resume, u64) {
    let at_head = (Resume::Fresh, head.last);
    let Some(since) = since else {
        return at_head;
    };
    let not = |why| (Resume::NotRecovered(why), head.last);
    if since.epoch != head.epoch {
        not(Unrecoverable::OtherEpoch)
    } else if since.offset > head.last {
        not(Unrecoverable::AheadOfHead)
    } else if since.offset + 1 < head.first {
        not(Unrecoverable::Trimmed)
    } else {
        (Resume::Recovered, since.offset)
    }
}

struct State {
    store: Arc<dyn Store>,
    topic: TopicName,
    config: SubscribeConfig,
    since: Option<Position>,
    /// The history read and the last offset delivered; `None` before the
    /// start.
    cursor: Option<(Epoch, u64)>,
    buffer: VecDeque<Message>,
    done: bool,
    /// The topic's shared reader, when subscribed through a
    /// [`Fanout`](crate::Fanout).
    tail: Option<(Arc<Tail>, broadcast::Receiver<Arc<Batch>>)>,
    /// Caught up with the store: new messages come from the shared reader.
    live: bool,
}

/// Subscribes to `topic`, resuming after `since`. The first item is an
/// [`Event::Start`] saying whether the resume was recovered; then every
/// message, in the log's order: what was published before and after the
/// subscription follow each other with no gap and no duplicate, because
/// both are read from the log by one cursor. A store error ends the
/// stream after yielding it.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use futures_util::StreamExt;
/// use lameduck_topics::{Event, MemoryStore, NewMessage, Resume, Retention, Store, TopicName};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store: Arc<dyn Store> = Arc::new(MemoryStore::new(Retention::default()));
/// let topic = TopicName::new("news").unwrap();
/// let first = store.publish(&topic, NewMessage::new("one")).await.unwrap();
/// store.publish(&topic, NewMessage::new("two")).await.unwrap();
///
/// // A client that saw "one" resumes after it.
/// let events = lameduck_topics::subscribe(store, topic, Some(first.position), Default::default());
/// let mut events = Box::pin(events);
/// let Some(Ok(Event::Start { resume, .. })) = events.next().await else { panic!() };
/// assert_eq!(resume, Resume::Recovered);
/// let Some(Ok(Event::Message(m))) = events.next().await else { panic!() };
/// assert_eq!(&m.payload[..], b"two");
/// # });
/// ```
pub fn subscribe(
    store: Arc<dyn Store>,
    topic: TopicName,
    since: Option<Position>,
    config: SubscribeConfig,
) -> impl Stream<Item = Result<Event, TopicError>> + Send + 'static {
    subscribe_with(store, topic, since, config, None)
}

/// [`subscribe`], following a shared reader once caught up when given one.
pub(crate) fn subscribe_with(
    store: Arc<dyn Store>,
    topic: TopicName,
    since: Option<Position>,
    config: SubscribeConfig,
    tail: Option<(Arc<Tail>, broadcast::Receiver<Arc<Batch>>)>,
) -> impl Stream<Item = Result<Event, TopicError>> + Send + 'static {
    let state = State {
        store,
        topic,
        config,
        since,
        cursor: None,
        buffer: VecDeque::new(),
        done: false,
        tail,
        live: false,
    };
    stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let item = next(&mut s).await;
        if !matches!(item, Ok(Event::Message(_)) | Ok(Event::Start { .. })) {
            s.done = true;
        }
        Some((item, s))
    })
}

async fn next(s: &mut State) -> Result<Event, TopicError> {
    let Some((epoch, mut offset)) = s.cursor else {
        let head = s.store.head(&s.topic).await?;
        let (resume, offset) = resume_from(head, s.since);
        s.cursor = Some((head.epoch, offset));
        return Ok(Event::Start {
            resume,
            from: Position::new(head.epoch, offset),
        });
    };
    loop {
        if let Some(message) = s.buffer.pop_front() {
            return Ok(Event::Message(message));
        }
        if s.live {
            if let Some(last) = follow_tail(s, epoch, offset).await {
                offset = last;
                continue;
            }
            // A gap, a change of history, or too far behind the shared
            // reader: the store says what comes next.
            s.live = false;
        }
        let version = s.store.version();
        let (head, messages) = s.store.read(&s.topic, offset, s.config.batch).await?;
        if head.epoch != epoch || head.last < offset {
            // The history changed under us: a new epoch, or a store rolled
            // back behind what was delivered.
            let why = if head.epoch != epoch {
                Unrecoverable::OtherEpoch
            } else {
                Unrecoverable::AheadOfHead
            };
            s.cursor = Some((head.epoch, head.last));
            return Ok(Event::Start {
                resume: Resume::NotRecovered(why),
                from: Position::new(head.epoch, head.last),
            });
        }
        if offset + 1 < head.first {
            return Ok(Event::Lagged {
                at: Position::new(epoch, offset),
            });
        }
        if let Some(last) = messages.last() {
            offset = last.position.offset;
            s.cursor = Some((epoch, offset));
            s.buffer.extend(messages);
            continue;
        }
        if s.tail.is_some() {
            s.live = true;
            continue;
        }
        s.store.changed(&s.topic, version, s.config.poll).await;
    }
}

/// Waits for the shared reader's next batch that goes on from `offset`
/// in `epoch`, buffers its new messages and returns the last offset;
/// `None` when the store must be read instead.
async fn follow_tail(s: &mut State, epoch: Epoch, offset: u64) -> Option<u64> {
    let (_, batches) = s.tail.as_mut()?;
    loop {
        let batch = match batches.recv().await {
            Ok(batch) => batch,
            Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => {
                return None;
            }
        };
        if batch.head.epoch != epoch || batch.head.last < offset {
            return None;
        }
        let mut new = batch
            .messages
            .iter()
            .filter(|m| m.position.offset > offset)
            .peekable();
        match new.peek() {
            // Already delivered (read from the store before).
            None => continue,
            Some(first) if first.position.offset != offset + 1 => return None,
            Some(_) => {}
        }
        s.buffer.extend(new.cloned());
        let last = s.buffer.back().map(|m| m.position.offset)?;
        s.cursor = Some((epoch, last));
        return Some(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Head;

    // Where each kind of resume starts.
    #[test]
    fn resumes() {
        let e = Epoch::from_u64(7);
        let head = Head {
            epoch: e,
            first: 5,
            last: 9,
        };
        let at = |o| Some(Position::new(e, o));
        assert_eq!(resume_from(head, None), (Resume::Fresh, 9));
        assert_eq!(resume_from(head, at(4)), (Resume::Recovered, 4));
        assert_eq!(resume_from(head, at(9)), (Resume::Recovered, 9));
        assert_eq!(
            resume_from(head, at(3)),
            (Resume::NotRecovered(Unrecoverable::Trimmed), 9)
        );
        assert_eq!(
            resume_from(head, at(10)),
            (Resume::NotRecovered(Unrecoverable::AheadOfHead), 9)
        );
        assert_eq!(
            resume_from(head, Some(Position::new(Epoch::from_u64(8), 4))),
            (Resume::NotRecovered(Unrecoverable::OtherEpoch), 9)
        );
    }
}

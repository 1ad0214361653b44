//! Topics in memory: for tests and single-process uses that need no
//! history across restarts.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use super::{
    Changes, Head, Message, NewMessage, Published, Retention, Store, digest, is_session, now_ms,
    random_session,
};
use crate::{Epoch, Position, TopicError, TopicName};
use async_trait::async_trait;

/// Idempotency keys are remembered this long by default.
const KEY_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
struct Log {
    epoch: Epoch,
    last: u64,
    messages: VecDeque<Message>,
    /// key → (offset, digest, stored at ms).
    keys: HashMap<String, (u64, u64, u64)>,
}

impl Log {
    fn new() -> Self {
        Self {
            epoch: Epoch::random(),
            last: 0,
            messages: VecDeque::new(),
            keys: HashMap::new(),
        }
    }

    fn head(&self) -> Head {
        Head {
            epoch: self.epoch,
            first: self
                .messages
                .front()
                .map_or(self.last + 1, |m| m.position.offset),
            last: self.last,
        }
    }
}

/// Topics in this process's memory; history ends with it.
#[derive(Debug)]
pub struct MemoryStore {
    retention: Retention,
    logs: Mutex<HashMap<TopicName, Log>>,
    sessions: Mutex<std::collections::HashSet<String>>,
    changes: Changes,
}

impl MemoryStore {
    /// An empty store keeping `retention` of each topic.
    pub fn new(retention: Retention) -> Self {
        Self {
            retention,
            logs: Mutex::default(),
            sessions: Mutex::default(),
            changes: Changes::default(),
        }
    }

    fn logs(&self) -> std::sync::MutexGuard<'_, HashMap<TopicName, Log>> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn publish(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<Published, TopicError> {
        if message.payload.len() > super::MAX_MESSAGE {
            return Err(TopicError::TooLarge {
                size: message.payload.len(),
                max: super::MAX_MESSAGE,
            });
        }
        let now = now_ms();
        let digest = digest(&message);
        let published = {
            let mut logs = self.logs();
            let log = logs.entry(topic.clone()).or_insert_with(Log::new);
            let window = KEY_WINDOW.as_millis() as u64;
            log.keys
                .retain(|_, (_, _, at)| now.saturating_sub(*at) < window);
            if let Some(key) = &message.idempotency_key {
                if let Some((offset, d, _)) = log.keys.get(key) {
                    if *d != digest {
                        return Err(TopicError::KeyConflict);
                    }
                    return Ok(Published {
                        position: Position::new(log.epoch, *offset),
                        duplicate: true,
                    });
                }
            }
            log.last += 1;
            let position = Position::new(log.epoch, log.last);
            if let Some(key) = message.idempotency_key {
                log.keys.insert(key, (log.last, digest, now));
            }
            log.messages.push_back(Message {
                position,
                payload: message.payload,
                content_type: message.content_type,
                published_at_ms: now,
            });
            let max_age = self.retention.max_age.as_millis() as u64;
            while log.messages.len() as u64 > self.retention.max_messages
                || log
                    .messages
                    .front()
                    .is_some_and(|m| now.saturating_sub(m.published_at_ms) > max_age)
            {
                log.messages.pop_front();
            }
            Published {
                position,
                duplicate: false,
            }
        };
        if !published.duplicate {
            self.changes.published();
        }
        Ok(published)
    }

    async fn head(&self, topic: &TopicName) -> Result<Head, TopicError> {
        Ok(self
            .logs()
            .entry(topic.clone())
            .or_insert_with(Log::new)
            .head())
    }

    async fn read(
        &self,
        topic: &TopicName,
        after: u64,
        limit: usize,
    ) -> Result<(Head, Vec<Message>), TopicError> {
        let mut logs = self.logs();
        let log = logs.entry(topic.clone()).or_insert_with(Log::new);
        let head = log.head();
        let messages = log
            .messages
            .iter()
            .filter(|m| m.position.offset > after)
            .take(limit)
            .cloned()
            .collect();
        Ok((head, messages))
    }

    async fn new_session(&self) -> Result<String, TopicError> {
        let session = random_session()?;
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session.clone());
        Ok(session)
    }

    async fn session_known(&self, session: &str) -> Result<bool, TopicError> {
        Ok(is_session(session)
            && self
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(session))
    }

    fn version(&self) -> u64 {
        self.changes.version()
    }

    async fn changed(&self, _topic: &TopicName, version: u64, poll: Duration) {
        self.changes.changed(version, poll).await;
    }
}

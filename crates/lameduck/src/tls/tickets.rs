//! Session-ticket keys that outlive a process.

use std::{
    fmt,
    fs::File,
    io,
    os::unix::fs::FileExt,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ring::{
    aead::{self, Aad, LessSafeKey, Nonce, UnboundKey},
    rand::{SecureRandom, SystemRandom},
};

use crate::handoff::{Inherited, UpgradeConfig};

/// The name the keys are handed over under (`LISTEN_FDNAMES`).
pub const TICKET_KEYS: &str = "tls-ticket-keys";

/// How long a key encrypts new tickets before the next one takes over;
/// it still decrypts for as long again, which is the tickets' lifetime.
const ROTATE_EVERY: Duration = Duration::from_secs(6 * 3600);

const KEY_LEN: usize = 32;
const SLOT_LEN: usize = 4 + 8 + KEY_LEN;
/// Version, then the current key's slot, then the previous one's.
const RECORD_LEN: usize = 1 + 2 * SLOT_LEN;
const VERSION: u8 = 1;

#[derive(Clone, Copy)]
struct Key {
    id: u32,
    created_ms: u64,
    bytes: [u8; KEY_LEN],
}

struct Keys {
    current: Key,
    previous: Option<Key>,
}

/// Keys that encrypt TLS session tickets (ChaCha20-Poly1305), rotated every
/// 6 hours with the previous key kept to decrypt, and kept in a memory-only
/// file (`memfd`) that an upgrade hands to the successor with the sockets:
/// never through the environment or the command line, never on disk. The
/// successor reads them ([`TicketKeys::inherit_or_generate`]), so a ticket
/// issued before a SIGHUP resumes after it. 0-RTT stays off: resumption
/// here saves the handshake's round trip and signature, not a request's.
///
/// # Examples
///
/// ```no_run
/// use std::sync::Arc;
/// use lameduck::{Server, handoff::UpgradeConfig, rustls, tls::TicketKeys};
///
/// # async fn run(mut tls: rustls::ServerConfig) -> Result<(), Box<dyn std::error::Error>> {
/// let mut inherited = lameduck::handoff::inherited_listeners()?;
/// let keys = TicketKeys::inherit_or_generate(&mut inherited)?;
/// tls.ticketer = keys.ticketer();
/// let mut upgrade = UpgradeConfig::default();
/// keys.hand_over(&mut upgrade)?;
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
/// Server::new(listener)
///     .with_tls(Arc::new(tls))
///     .with_upgrade(upgrade)
///     .serve(axum::Router::new())
///     .await?;
/// # Ok(()) }
/// # let _ = run;
/// ```
#[derive(Clone)]
pub struct TicketKeys {
    inner: Arc<Inner>,
}

struct Inner {
    keys: RwLock<Keys>,
    /// Where the keys are kept for a successor; rewritten at each rotation.
    file: File,
    random: SystemRandom,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys themselves.
        let keys = self.inner.keys.read().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("TicketKeys")
            .field("current_id", &keys.current.id)
            .field("previous_id", &keys.previous.map(|k| k.id))
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn random_key(random: &SystemRandom) -> io::Result<Key> {
    let mut bytes = [0u8; KEY_LEN];
    let mut id = [0u8; 4];
    random
        .fill(&mut bytes)
        .and_then(|()| random.fill(&mut id))
        .map_err(|_| io::Error::other("the system's random source failed"))?;
    Ok(Key {
        id: u32::from_be_bytes(id),
        created_ms: now_ms(),
        bytes,
    })
}

fn encode(keys: &Keys) -> [u8; RECORD_LEN] {
    let mut out = [0u8; RECORD_LEN];
    out[0] = VERSION;
    let slot = |out: &mut [u8], key: &Key| {
        out[..4].copy_from_slice(&key.id.to_be_bytes());
        out[4..12].copy_from_slice(&key.created_ms.to_be_bytes());
        out[12..SLOT_LEN].copy_from_slice(&key.bytes);
    };
    slot(&mut out[1..1 + SLOT_LEN], &keys.current);
    if let Some(previous) = &keys.previous {
        slot(&mut out[1 + SLOT_LEN..], previous);
    }
    out
}

fn decode(record: &[u8; RECORD_LEN]) -> io::Result<Keys> {
    if record[0] != VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("inherited ticket keys of version {}", record[0]),
        ));
    }
    let slot = |s: &[u8]| Key {
        id: u32::from_be_bytes(s[..4].try_into().expect("4 bytes")),
        created_ms: u64::from_be_bytes(s[4..12].try_into().expect("8 bytes")),
        bytes: s[12..SLOT_LEN].try_into().expect("32 bytes"),
    };
    let previous = slot(&record[1 + SLOT_LEN..]);
    Ok(Keys {
        current: slot(&record[1..1 + SLOT_LEN]),
        previous: (previous.created_ms != 0).then_some(previous),
    })
}

impl TicketKeys {
    /// New keys, for a process that inherited none.
    ///
    /// # Errors
    ///
    /// When the random source or `memfd_create` fails.
    pub fn generate() -> io::Result<Self> {
        let random = SystemRandom::new();
        let keys = Keys {
            current: random_key(&random)?,
            previous: None,
        };
        Self::with(keys, random)
    }

    /// The keys the predecessor handed over ([`TICKET_KEYS`] in
    /// `inherited`), or new ones when there are none.
    ///
    /// # Errors
    ///
    /// When inherited keys cannot be read (then the caller should stop:
    /// starting with new keys would quietly cost every client a full
    /// handshake), or as [`TicketKeys::generate`].
    pub fn inherit_or_generate(inherited: &mut Inherited) -> io::Result<Self> {
        match inherited.take_file(TICKET_KEYS) {
            Some(file) => Self::read(&file),
            None => Self::generate(),
        }
    }

    /// The keys in `file`, as a predecessor handed them over (what
    /// [`Inherited::take_file`] gives for [`TICKET_KEYS`]).
    ///
    /// # Errors
    ///
    /// When the file cannot be read or holds no keys of this version, or
    /// as [`TicketKeys::generate`].
    pub fn read(file: &File) -> io::Result<Self> {
        let mut record = [0u8; RECORD_LEN];
        file.read_exact_at(&mut record, 0)?;
        Self::with(decode(&record)?, SystemRandom::new())
    }

    fn with(keys: Keys, random: SystemRandom) -> io::Result<Self> {
        let fd = nix::sys::memfd::memfd_create(
            c"lameduck-tls-ticket-keys",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let file = File::from(fd);
        file.write_all_at(&encode(&keys), 0)?;
        Ok(Self {
            inner: Arc::new(Inner {
                keys: RwLock::new(keys),
                file,
                random,
            }),
        })
    }

    /// Hands the keys to the successor of each upgrade (with the sockets).
    ///
    /// # Errors
    ///
    /// When the descriptor cannot be duplicated.
    pub fn hand_over(&self, upgrade: &mut UpgradeConfig) -> io::Result<()> {
        upgrade.hand_over(TICKET_KEYS, &self.inner.file)
    }

    /// The `rustls::ServerConfig::ticketer` that uses these keys.
    pub fn ticketer(&self) -> Arc<dyn rustls::server::ProducesTickets> {
        Arc::new(self.clone())
    }

    /// The current key, rotated first when it is due.
    fn current(&self) -> Option<Key> {
        let due = {
            let keys = self.inner.keys.read().ok()?;
            if now_ms().saturating_sub(keys.current.created_ms) < ROTATE_EVERY.as_millis() as u64 {
                return Some(keys.current);
            }
            true
        };
        if due {
            let mut keys = self.inner.keys.write().ok()?;
            // Another thread may have rotated meanwhile.
            if now_ms().saturating_sub(keys.current.created_ms) >= ROTATE_EVERY.as_millis() as u64 {
                let next = random_key(&self.inner.random).ok()?;
                keys.previous = Some(keys.current);
                keys.current = next;
                // A successor started after this reads the new keys; a
                // failed write keeps the old ones there, which still work
                // for tickets issued before the rotation.
                let _ = self.inner.file.write_all_at(&encode(&keys), 0);
            }
            return Some(keys.current);
        }
        None
    }

    fn key_with_id(&self, id: u32) -> Option<Key> {
        let keys = self.inner.keys.read().ok()?;
        [Some(keys.current), keys.previous]
            .into_iter()
            .flatten()
            .find(|k| k.id == id)
    }
}

fn sealing_key(key: &Key) -> Option<LessSafeKey> {
    UnboundKey::new(&aead::CHACHA20_POLY1305, &key.bytes)
        .ok()
        .map(LessSafeKey::new)
}

impl rustls::server::ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        // A ticket issued just before a rotation stays decryptable until
        // the key after next: two rotation periods.
        (2 * ROTATE_EVERY.as_secs()) as u32
    }

    /// `id (4) | nonce (12) | sealed plaintext and tag`.
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.current()?;
        let mut nonce = [0u8; aead::NONCE_LEN];
        self.inner.random.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(4 + nonce.len() + plain.len() + aead::MAX_TAG_LEN);
        out.extend_from_slice(&key.id.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        sealing_key(&key)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.id.to_be_bytes()),
                &mut sealed,
            )
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < 4 + aead::NONCE_LEN + aead::MAX_TAG_LEN {
            return None;
        }
        let (id, rest) = cipher.split_at(4);
        let (nonce, sealed) = rest.split_at(aead::NONCE_LEN);
        let id = u32::from_be_bytes(id.try_into().ok()?);
        let key = self.key_with_id(id)?;
        let mut buf = sealed.to_vec();
        let plain = sealing_key(&key)?
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(&id.to_be_bytes()),
                &mut buf,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use rustls::server::ProducesTickets;

    use super::*;

    // A ticket sealed by one process opens in another that read the keys
    // from the same record; a tampered or foreign ticket does not open.
    #[test]
    fn tickets_open_with_the_handed_over_keys_only() {
        let a = TicketKeys::generate().unwrap();
        let ticket = a.encrypt(b"session state").unwrap();
        let mut record = [0u8; RECORD_LEN];
        a.inner.file.read_exact_at(&mut record, 0).unwrap();
        let b = TicketKeys::with(decode(&record).unwrap(), SystemRandom::new()).unwrap();
        assert_eq!(b.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        let mut tampered = ticket.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(b.decrypt(&tampered), None);
        let other = TicketKeys::generate().unwrap();
        assert_eq!(other.decrypt(&ticket), None);
        assert_eq!(b.decrypt(&ticket[..10]), None);
    }
}

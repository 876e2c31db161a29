//! The cluster key and the handshake that opens every connection.
//!
//! ```text
//! client -> server  Hello     { magic, version range, client nonce, role, name }
//! server -> client  Challenge { chosen version, server nonce, server proof }
//! client -> server  Auth      { client proof }
//! server -> client  Welcome | Refused { reason }
//! ```
//!
//! A proof is a BLAKE3 keyed hash, under the cluster key, of a role label, both nonces and
//! the chosen version: each side shows it holds the key without revealing it, replays are
//! useless (fresh nonces), and a proof made by one side cannot be reflected as the other's
//! (different labels). This authenticates peers; it does not encrypt the traffic, which runs
//! on the private cluster network.

use crate::frame::{self, FrameError};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokio::io::{AsyncRead, AsyncWrite};

const MAGIC: [u8; 8] = *b"shoal\0\0\x01";
const KEY_PREFIX: &str = "shoal-cluster-key-v1:";

/// The secret shared by every node of a cluster, made once at initialisation.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("key file {path} is not a shoal cluster key (expected one line '{KEY_PREFIX}<64 hex digits>')")]
    Format { path: String },
}

impl ClusterKey {
    /// A fresh random key.
    pub fn generate() -> ClusterKey {
        ClusterKey(rand::random())
    }

    /// A key from raw bytes (tests, derived keys).
    pub fn from_bytes(bytes: [u8; 32]) -> ClusterKey {
        ClusterKey(bytes)
    }

    /// The text form stored in key files.
    pub fn to_text(&self) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("{KEY_PREFIX}{hex}\n")
    }

    /// Parses the text form.
    pub fn from_text(text: &str) -> Option<ClusterKey> {
        let hex = text.trim().strip_prefix(KEY_PREFIX)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(ClusterKey(key))
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<ClusterKey, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: shown.clone(),
            source,
        })?;
        ClusterKey::from_text(&text).ok_or(KeyError::Format { path: shown })
    }

    fn proof(&self, label: &[u8], first: &[u8; 32], second: &[u8; 32], version: u16) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(label);
        h.update(first);
        h.update(second);
        h.update(&version.to_le_bytes());
        *h.finalize().as_bytes()
    }

    /// A key for another purpose derived from this one (e.g. signing leases), so that one
    /// secret serves the whole cluster without reusing it across purposes.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(b"derive:");
        h.update(purpose.as_bytes());
        *h.finalize().as_bytes()
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Handshake {
    Hello {
        magic: [u8; 8],
        min: u16,
        max: u16,
        nonce: [u8; 32],
        role: String,
        name: String,
    },
    Challenge {
        version: u16,
        nonce: [u8; 32],
        proof: [u8; 32],
    },
    Auth {
        proof: [u8; 32],
    },
    Welcome,
    Refused {
        reason: String,
    },
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("peer is not speaking the shoal protocol")]
    NotShoal,
    #[error(
        "no common protocol version (we speak {ours_min}..={ours_max}, peer {theirs_min}..={theirs_max})"
    )]
    Version {
        ours_min: u16,
        ours_max: u16,
        theirs_min: u16,
        theirs_max: u16,
    },
    #[error("peer failed to prove it holds the cluster key")]
    BadProof,
    #[error("refused by peer: {0}")]
    Refused(String),
    #[error("unexpected handshake message")]
    Unexpected,
}

/// Who is on the other side of an accepted connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub version: u16,
    pub role: String,
    pub name: String,
}

/// Runs the client side. Returns the agreed protocol version.
pub async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &ClusterKey,
    role: &str,
    name: &str,
) -> Result<u16, HandshakeError> {
    let nonce: [u8; 32] = rand::random();
    let hello = Handshake::Hello {
        magic: MAGIC,
        min: crate::MIN_PROTOCOL_VERSION,
        max: crate::PROTOCOL_VERSION,
        nonce,
        role: role.into(),
        name: name.into(),
    };
    frame::send(s, 0, &hello, &[]).await?;
    let (_, msg, _) = frame::recv(s).await?;
    let (version, server_nonce, proof) = match msg {
        Handshake::Challenge {
            version,
            nonce,
            proof,
        } => (version, nonce, proof),
        Handshake::Refused { reason } => return Err(HandshakeError::Refused(reason)),
        _ => return Err(HandshakeError::Unexpected),
    };
    if !(crate::MIN_PROTOCOL_VERSION..=crate::PROTOCOL_VERSION).contains(&version) {
        return Err(HandshakeError::Unexpected);
    }
    if !constant_eq(&proof, &key.proof(b"server", &nonce, &server_nonce, version)) {
        return Err(HandshakeError::BadProof);
    }
    let auth = Handshake::Auth {
        proof: key.proof(b"client", &server_nonce, &nonce, version),
    };
    frame::send(s, 0, &auth, &[]).await?;
    match frame::recv(s).await?.1 {
        Handshake::Welcome => Ok(version),
        Handshake::Refused { reason } => Err(HandshakeError::Refused(reason)),
        _ => Err(HandshakeError::Unexpected),
    }
}

/// Runs the server side. On failure the peer has been told why (when it spoke shoal at all).
pub async fn server<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &ClusterKey,
) -> Result<Peer, HandshakeError> {
    let (_, msg, _) = frame::recv(s).await.map_err(|e| match e {
        FrameError::Decode(_) | FrameError::FrameLength(_) | FrameError::HeaderLength { .. } => {
            HandshakeError::NotShoal
        }
        e => e.into(),
    })?;
    let Handshake::Hello {
        magic,
        min,
        max,
        nonce: client_nonce,
        role,
        name,
    } = msg
    else {
        return Err(HandshakeError::NotShoal);
    };
    if magic != MAGIC {
        return Err(HandshakeError::NotShoal);
    }
    let version = max.min(crate::PROTOCOL_VERSION);
    if version < min.max(crate::MIN_PROTOCOL_VERSION) {
        let err = HandshakeError::Version {
            ours_min: crate::MIN_PROTOCOL_VERSION,
            ours_max: crate::PROTOCOL_VERSION,
            theirs_min: min,
            theirs_max: max,
        };
        let _ = frame::send(
            s,
            0,
            &Handshake::Refused {
                reason: err.to_string(),
            },
            &[],
        )
        .await;
        return Err(err);
    }
    let nonce: [u8; 32] = rand::random();
    let proof = key.proof(b"server", &client_nonce, &nonce, version);
    frame::send(
        s,
        0,
        &Handshake::Challenge {
            version,
            nonce,
            proof,
        },
        &[],
    )
    .await?;
    let Handshake::Auth { proof } = frame::recv(s).await?.1 else {
        return Err(HandshakeError::Unexpected);
    };
    if !constant_eq(&proof, &key.proof(b"client", &nonce, &client_nonce, version)) {
        let reason = "authentication failed: wrong cluster key".to_string();
        let _ = frame::send(s, 0, &Handshake::Refused { reason }, &[]).await;
        return Err(HandshakeError::BadProof);
    }
    frame::send(s, 0, &Handshake::Welcome, &[]).await?;
    Ok(Peer { version, role, name })
}

fn constant_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_key_is_welcome_other_key_is_refused() {
        let key = ClusterKey::generate();
        let (mut a, mut b) = tokio::io::duplex(4096);
        let k2 = key.clone();
        let srv = tokio::spawn(async move { server(&mut b, &k2).await });
        assert_eq!(
            client(&mut a, &key, "client", "t").await.unwrap(),
            crate::PROTOCOL_VERSION
        );
        assert_eq!(srv.await.unwrap().unwrap().role, "client");

        let (mut a, mut b) = tokio::io::duplex(4096);
        let srv = tokio::spawn(async move { server(&mut b, &key).await });
        let wrong = ClusterKey::generate();
        // The server's proof does not verify under the wrong key: the client stops first.
        assert!(matches!(
            client(&mut a, &wrong, "client", "t").await,
            Err(HandshakeError::BadProof)
        ));
        drop(a);
        assert!(srv.await.unwrap().is_err());
    }

    #[test]
    fn key_text_round_trips_and_rejects_garbage() {
        let k = ClusterKey::generate();
        assert_eq!(ClusterKey::from_text(&k.to_text()), Some(k));
        assert_eq!(ClusterKey::from_text("shoal-cluster-key-v1:zz"), None);
        assert_eq!(ClusterKey::from_text(""), None);
    }
}

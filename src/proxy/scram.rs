//! SCRAM-SHA-256 across pgshift when the client supports channel binding
//! but the upstream session is TLS.
//!
//! Channel binding cannot cross a proxy that terminates TLS: the client's
//! binding names its own connection (to pgshift), never the server's. So
//! pgshift offers no `SCRAM-SHA-256-PLUS`, and a client able to bind (libpq
//! over TLS, node-postgres with `enableChannelBinding`) then says so with
//! the GS2 flag `y` ("I could bind, I think you cannot"). A server that
//! *can* bind — any Postgres reached over TLS — refuses that as a downgrade
//! attack ("SCRAM channel binding negotiation error"), and the flag is
//! signed into the client's proof, so it cannot simply be relayed changed.
//!
//! For that case (and only that: every other exchange is relayed as it is)
//! pgshift carries the exchange across with the role's SCRAM verifier, as
//! PgBouncer's SCRAM pass-through does: it tells the server `n`, passes the
//! server's challenge on, recovers the client's `ClientKey` from its proof
//! (proof XOR HMAC(StoredKey, the client's AuthMessage), checked against
//! StoredKey), signs the server's AuthMessage with it, and answers the
//! client with the server signature of the client's AuthMessage. The
//! password never passes through pgshift; the verifier is read by the
//! control role (`pg_authid`) and kept a minute.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::{digest, hmac};

/// How long a fetched verifier is used before it is read again.
const VERIFIER_TTL: Duration = Duration::from_secs(60);
/// At most this many roles' verifiers are kept.
const MAX_CACHED: usize = 1024;

/// A role's stored SCRAM-SHA-256 secret (`pg_authid.rolpassword`).
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: String,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(text: &str) -> Option<Verifier> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(Verifier {
            iterations: iterations.parse().ok()?,
            salt: salt.to_string(),
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }
}

/// The client's first message, split at its GS2 header.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientFirst<'a> {
    /// `y,,` or `y,a=…,`: the header as the client sent it.
    pub gs2: &'a str,
    /// The rest: `n=…,r=…` (part of both AuthMessages, unchanged).
    pub bare: &'a str,
}

impl<'a> ClientFirst<'a> {
    pub fn parse(data: &'a [u8]) -> Option<ClientFirst<'a>> {
        let text = std::str::from_utf8(data).ok()?;
        let first = text.find(',')?;
        let second = first + 1 + text[first + 1..].find(',')?;
        Some(ClientFirst {
            gs2: &text[..=second],
            bare: &text[second + 1..],
        })
    }

    /// The client supports channel binding and thinks the server does not.
    pub fn binds_if_offered(&self) -> bool {
        self.gs2.starts_with("y,")
    }

    /// The same header saying "no channel binding" (`n,…`).
    pub fn unbound_gs2(&self) -> String {
        format!("n{}", &self.gs2[1..])
    }
}

/// Why an exchange could not be carried across.
#[derive(Debug, PartialEq, Eq)]
pub enum BridgeError {
    /// The client's final message is not SCRAM's, or names another header.
    Malformed,
    /// The client's proof does not match the verifier: a wrong password
    /// (or a verifier changed since it was read).
    WrongProof,
}

/// One exchange carried across: the client's first message and the
/// server's challenge, which both AuthMessages share.
pub struct Bridge<'a> {
    pub verifier: &'a Verifier,
    pub client_first: &'a ClientFirst<'a>,
    pub server_first: &'a str,
}

/// What the server is sent, and what the client will be told, for the
/// client's final message.
pub struct Final {
    /// `c=…,r=…,p=…` for the server.
    pub to_server: String,
    /// `v=…` for the client.
    pub to_client: String,
    /// `v=…` the server must answer with.
    pub server_says: String,
}

impl Bridge<'_> {
    /// Rebinds the client's final message (`c=<gs2>,r=…,p=<proof>`) to
    /// the server's unbound header.
    pub fn rebind(&self, client_final: &[u8]) -> Result<Final, BridgeError> {
        let text = std::str::from_utf8(client_final).map_err(|_| BridgeError::Malformed)?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(BridgeError::Malformed)?;
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(BridgeError::Malformed)?;
        let rest = without_proof
            .strip_prefix(&format!("c={}", B64.encode(self.client_first.gs2)))
            .ok_or(BridgeError::Malformed)?;
        let client_signature = self.signature(&self.auth_message(without_proof));
        let client_key = xor(&proof, &client_signature);
        let stored = digest::digest(&digest::SHA256, &client_key);
        if stored.as_ref() != self.verifier.stored_key {
            return Err(BridgeError::WrongProof);
        }
        let server_without_proof =
            format!("c={}{rest}", B64.encode(self.client_first.unbound_gs2()));
        let server_auth = self.auth_message(&server_without_proof);
        let server_proof = xor(&client_key, &self.signature(&server_auth));
        Ok(Final {
            to_server: format!("{server_without_proof},p={}", B64.encode(server_proof)),
            to_client: format!(
                "v={}",
                B64.encode(self.server_signature(&self.auth_message(without_proof)))
            ),
            server_says: format!("v={}", B64.encode(self.server_signature(&server_auth))),
        })
    }

    fn auth_message(&self, final_without_proof: &str) -> String {
        format!(
            "{},{},{final_without_proof}",
            self.client_first.bare, self.server_first
        )
    }

    fn signature(&self, auth_message: &str) -> [u8; 32] {
        mac(&self.verifier.stored_key, auth_message)
    }

    fn server_signature(&self, auth_message: &str) -> [u8; 32] {
        mac(&self.verifier.server_key, auth_message)
    }
}

/// `s=` and `i=` of the server's first message.
pub fn salt_and_iterations(server_first: &str) -> Option<(&str, u32)> {
    let (mut salt, mut iterations) = (None, None);
    for attr in server_first.split(',') {
        if let Some(s) = attr.strip_prefix("s=") {
            salt = Some(s);
        } else if let Some(i) = attr.strip_prefix("i=") {
            iterations = i.parse().ok();
        }
    }
    Some((salt?, iterations?))
}

fn mac(key: &[u8; 32], text: &str) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, text.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// Verifiers read lately, by role.
#[derive(Default)]
pub struct Verifiers {
    cached: Mutex<HashMap<String, (Verifier, Instant)>>,
}

impl Verifiers {
    /// A verifier read within the last minute, if any.
    pub fn cached(&self, role: &str) -> Option<Verifier> {
        let cached = self.cached.lock().ok()?;
        let (verifier, at) = cached.get(role)?;
        (at.elapsed() < VERIFIER_TTL).then(|| verifier.clone())
    }

    pub fn keep(&self, role: &str, verifier: &Verifier) {
        if let Ok(mut cached) = self.cached.lock() {
            if cached.len() >= MAX_CACHED {
                cached.retain(|_, (_, at)| at.elapsed() < VERIFIER_TTL);
            }
            if cached.len() < MAX_CACHED {
                cached.insert(role.to_string(), (verifier.clone(), Instant::now()));
            }
        }
    }

    pub fn forget(&self, role: &str) {
        if let Ok(mut cached) = self.cached.lock() {
            cached.remove(role);
        }
    }
}

/// Why no verifier could be had for a role.
#[derive(Debug)]
pub enum NoVerifier {
    /// No such role, or its password is not a SCRAM secret: the client
    /// is told what Postgres would tell it.
    NotScram,
    /// The control role could not read it (no privilege on `pg_authid`,
    /// no connection): the reason.
    Unreadable(String),
}

/// The verifier of `role`, as `config`'s control role reads it.
pub async fn fetch(config: &crate::config::Config, role: &str) -> Result<Verifier, NoVerifier> {
    let client = crate::control::connect(config)
        .await
        .map_err(|e| NoVerifier::Unreadable(e.to_string()))?;
    let row = client
        .query_opt(
            "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1",
            &[&role],
        )
        .await
        .map_err(|e| NoVerifier::Unreadable(crate::pgerror::describe(&e)))?;
    row.and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|text| Verifier::parse(&text))
        .ok_or(NoVerifier::NotScram)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of RFC 7677 §3 (user "user", password "pencil").
    const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";

    fn salted() -> [u8; 32] {
        let mut out = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(4096).unwrap(),
            &B64.decode(SALT).unwrap(),
            b"pencil",
            &mut out,
        );
        out
    }

    /// The verifier Postgres stores for that password and salt.
    fn verifier_text() -> String {
        let client_key = mac(&salted(), "Client Key");
        let stored = digest::digest(&digest::SHA256, &client_key);
        let server_key = mac(&salted(), "Server Key");
        format!(
            "SCRAM-SHA-256$4096:{SALT}${}:{}",
            B64.encode(stored),
            B64.encode(server_key)
        )
    }

    #[test]
    fn the_rfc_example_carries_across() {
        let verifier = Verifier::parse(&verifier_text()).unwrap();
        // The RFC's client, but saying `y` (it could bind): its proof for
        // that header, computed from the password as a client would.
        let first = ClientFirst::parse(b"y,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert!(first.binds_if_offered());
        assert_eq!(first.unbound_gs2(), "n,,");
        let without_proof = "c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let salted = salted();
        let client_key = mac(&salted, "Client Key");
        let auth = format!("n=user,r=rOprNGfwEbeRWgbNEkqO,{SERVER_FIRST},{without_proof}");
        let stored: [u8; 32] = digest::digest(&digest::SHA256, &client_key)
            .as_ref()
            .try_into()
            .unwrap();
        let proof = xor(&client_key, &mac(&stored, &auth));
        let client_final = format!("{without_proof},p={}", B64.encode(proof));
        let bridge = Bridge {
            verifier: &verifier,
            client_first: &first,
            server_first: SERVER_FIRST,
        };
        let out = bridge.rebind(client_final.as_bytes()).unwrap();
        // The RFC's own final message, for the unbound client it lists.
        assert_eq!(
            out.to_server,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(
            out.server_says,
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let server_key = mac(&mac(&salted, "Server Key"), &auth);
        assert_eq!(out.to_client, format!("v={}", B64.encode(server_key)));
        // A wrong password's proof is refused, not passed on.
        let mut bad = proof;
        bad[0] ^= 1;
        let bad_final = format!("{without_proof},p={}", B64.encode(bad));
        assert_eq!(
            bridge.rebind(bad_final.as_bytes()).err(),
            Some(BridgeError::WrongProof)
        );
        assert_eq!(
            bridge.rebind(b"c=biws,r=x").err(),
            Some(BridgeError::Malformed)
        );
    }

    #[test]
    fn verifiers_and_first_messages_parse_or_say_no() {
        assert!(Verifier::parse("md5abcdef").is_none());
        assert!(Verifier::parse("SCRAM-SHA-256$x:y$z").is_none());
        let v = Verifier::parse(&verifier_text()).unwrap();
        assert_eq!((v.iterations, v.salt.as_str()), (4096, SALT));
        assert_eq!(
            salt_and_iterations(SERVER_FIRST),
            Some(("W22ZaJ0SNY7soEsUEjb6gQ==", 4096))
        );
        let first = ClientFirst::parse(b"y,a=bob,n=,r=abc").unwrap();
        assert_eq!((first.gs2, first.bare), ("y,a=bob,", "n=,r=abc"));
        assert_eq!(first.unbound_gs2(), "n,a=bob,");
        assert!(!ClientFirst::parse(b"n,,n=,r=abc")
            .unwrap()
            .binds_if_offered());
        assert!(ClientFirst::parse(b"y").is_none());
        assert!(ClientFirst::parse(&[0xff, b',', b',']).is_none());
    }
}

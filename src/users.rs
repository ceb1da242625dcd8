//! Who may log in, and checking that they did, without letting a flood of
//! password guesses slow anyone else down.
//!
//! Hashes are loaded and checked for format once (bcrypt and argon2id only).
//! Verification is CPU-heavy, so it runs on a small bounded blocking pool, and a
//! successful one is remembered (keyed by a salted SHA-256 of the credentials)
//! so a logged-in client costs a hash-map lookup, not a bcrypt per request.
//! Unknown users are verified against a dummy hash of the same cost, so timing
//! does not reveal whether a user exists.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

use crate::policy::basic_auth::Credentials;

/// A stored password hash of a kind we accept.
#[derive(Debug, Clone)]
enum StoredHash {
    Bcrypt(String),
    Argon2id(String),
}

impl StoredHash {
    fn parse(text: &str) -> Result<StoredHash, String> {
        let how = "make a bcrypt line with `cartguard hash-password USER` (or `htpasswd -nB USER`)";
        if text.starts_with("$2y$") || text.starts_with("$2b$") || text.starts_with("$2a$") {
            text.parse::<bcrypt::HashParts>().map_err(|e| format!("invalid bcrypt hash ({e}); {how}"))?;
            Ok(StoredHash::Bcrypt(text.to_string()))
        } else if text.starts_with("$argon2id$") {
            argon2::PasswordHash::new(text).map_err(|e| format!("invalid argon2id hash ({e}); {how}"))?;
            Ok(StoredHash::Argon2id(text.to_string()))
        } else if text.starts_with("$apr1$") {
            Err(format!("apr1 (MD5) hashes are not accepted: they are fast to brute-force; {how}"))
        } else if text.starts_with("{SHA}")
            || text.starts_with("$1$")
            || text.starts_with("$5$")
            || text.starts_with("$6$")
        {
            Err(format!("this hash format is not accepted (only bcrypt and argon2id); {how}"))
        } else {
            Err(format!("not a bcrypt or argon2id hash (plain-text passwords are refused); {how}"))
        }
    }

    fn verify(&self, password: &str) -> bool {
        match self {
            StoredHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            StoredHash::Argon2id(h) => {
                use argon2::password_hash::PasswordVerifier;
                argon2::PasswordHash::new(h)
                    .map(|parsed| argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
                    .unwrap_or(false)
            }
        }
    }

    /// A hash of a random password with the same kind and cost, for unknown users.
    fn dummy_like(&self) -> StoredHash {
        let secret = crate::ids::random_hex(16);
        match self {
            StoredHash::Bcrypt(h) => {
                let cost = h.parse::<bcrypt::HashParts>().map(|p| p.get_cost()).unwrap_or(bcrypt::DEFAULT_COST);
                match bcrypt::hash(&secret, cost) {
                    Ok(d) => StoredHash::Bcrypt(d),
                    Err(_) => self.clone(),
                }
            }
            // Verifying against the same hash with a wrong password costs the same.
            StoredHash::Argon2id(_) => self.clone(),
        }
    }

    fn cost_rank(&self) -> u32 {
        match self {
            StoredHash::Bcrypt(h) => h.parse::<bcrypt::HashParts>().map(|p| p.get_cost()).unwrap_or(0),
            StoredHash::Argon2id(_) => 100,
        }
    }
}

/// The user table of one config snapshot, with its verification cache.
pub struct Users {
    entries: HashMap<String, StoredHash>,
    dummy: Option<StoredHash>,
    cache: VerifiedCache,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users").field("count", &self.entries.len()).finish()
    }
}

impl Users {
    /// Loads htpasswd lines and inline entries; each error names its source and line.
    pub fn load(
        htpasswd: Option<&Path>,
        inline: &BTreeMap<String, String>,
        cache_ttl: Duration,
    ) -> Result<Users, String> {
        let mut entries = HashMap::new();
        if let Some(path) = htpasswd {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("users.htpasswd: cannot read {}: {e}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let at = || format!("{}:{}", path.display(), n + 1);
                let (user, hash) = line.split_once(':').ok_or_else(|| format!("{}: expected user:hash", at()))?;
                let hash = StoredHash::parse(hash).map_err(|e| format!("{}: user {user:?}: {e}", at()))?;
                if entries.insert(user.to_string(), hash).is_some() {
                    return Err(format!("{}: user {user:?} is listed twice", at()));
                }
            }
        }
        for (user, hash) in inline {
            let hash = StoredHash::parse(hash).map_err(|e| format!("users.inline.{user}: {e}"))?;
            if user.is_empty() || user.contains(':') {
                return Err(format!("users.inline: user name {user:?} must be non-empty and have no colon"));
            }
            if entries.insert(user.clone(), hash).is_some() {
                return Err(format!("users.inline.{user}: user is also in the htpasswd file"));
            }
        }
        let dummy = entries.values().max_by_key(|h| h.cost_rank()).map(StoredHash::dummy_like);
        Ok(Users { entries, dummy, cache: VerifiedCache::new(cache_ttl) })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, user: &str) -> bool {
        self.entries.contains_key(user)
    }

    /// Fast path: were these exact credentials verified recently?
    pub fn cached(&self, creds: &Credentials) -> bool {
        self.cache.contains(&self.cache.key(creds))
    }

    /// Slow path: bcrypt/argon2. Call it on the blocking pool, never on a worker thread.
    pub fn verify_blocking(&self, creds: &Credentials) -> bool {
        let ok = match (self.entries.get(&creds.user), &self.dummy) {
            (Some(hash), _) => hash.verify(&creds.password),
            (None, Some(dummy)) => {
                dummy.verify(&creds.password);
                false
            }
            (None, None) => false,
        };
        if ok {
            self.cache.insert(self.cache.key(creds));
        }
        ok
    }
}

/// Successful verifications, bounded and expiring.
struct VerifiedCache {
    salt: [u8; 32],
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], Instant>>,
}

const CACHE_CAPACITY: usize = 10_000;

impl VerifiedCache {
    fn new(ttl: Duration) -> VerifiedCache {
        let mut salt = [0u8; 32];
        // If the system RNG fails the salt stays zero; keys are still unguessable
        // hashes of the password, just not salted per process.
        let _ = SystemRandom::new().fill(&mut salt);
        VerifiedCache { salt, ttl, entries: Mutex::new(HashMap::new()) }
    }

    fn key(&self, creds: &Credentials) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&self.salt);
        ctx.update(creds.user.as_bytes());
        ctx.update(&[0]);
        ctx.update(creds.password.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    fn contains(&self, key: &[u8; 32]) -> bool {
        let now = Instant::now();
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).is_some_and(|&expires| expires > now)
    }

    fn insert(&self, key: [u8; 32]) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_CAPACITY {
            entries.retain(|_, &mut expires| expires > now);
            if entries.len() >= CACHE_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key, now + self.ttl);
    }
}

/// The bounded pool that runs password verification off the async workers.
pub struct VerifyPool {
    permits: Arc<tokio::sync::Semaphore>,
    /// Verifications waiting beyond this are refused (503) instead of queued.
    max_waiting: usize,
    waiting: std::sync::atomic::AtomicUsize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    Overloaded,
}

impl VerifyPool {
    pub fn new(threads: usize, max_waiting: usize) -> VerifyPool {
        VerifyPool {
            permits: Arc::new(tokio::sync::Semaphore::new(threads.max(1))),
            max_waiting,
            waiting: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub async fn verify(&self, users: Arc<Users>, creds: Credentials) -> Result<(Credentials, bool), VerifyError> {
        use std::sync::atomic::Ordering;
        if users.cached(&creds) {
            return Ok((creds, true));
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(VerifyError::Overloaded);
        }
        let permit = self.permits.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let Ok(permit) = permit else {
            return Err(VerifyError::Overloaded);
        };
        let result = tokio::task::spawn_blocking(move || {
            let ok = users.verify_blocking(&creds);
            drop(permit);
            (creds, ok)
        })
        .await;
        result.map_err(|_| VerifyError::Overloaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(u: &str, p: &str) -> Credentials {
        Credentials { user: u.into(), password: p.into() }
    }

    fn users_with(entries: &[(&str, String)]) -> Users {
        let inline: BTreeMap<String, String> = entries.iter().map(|(u, h)| (u.to_string(), h.clone())).collect();
        Users::load(None, &inline, Duration::from_secs(60)).unwrap()
    }

    #[test]
    fn bcrypt_and_argon2id_verify() {
        use argon2::password_hash::PasswordHasher;
        let bc = bcrypt::hash("right", 4).unwrap();
        let a2 = argon2::Argon2::default().hash_password(b"right2").unwrap().to_string();
        let u = users_with(&[("alice", bc.clone()), ("bob", a2), ("carol", bc.replacen("$2b$", "$2y$", 1))]);
        assert!(u.verify_blocking(&creds("alice", "right")));
        assert!(!u.verify_blocking(&creds("alice", "wrong")));
        assert!(u.verify_blocking(&creds("bob", "right2")));
        assert!(!u.verify_blocking(&creds("bob", "right")));
        assert!(u.verify_blocking(&creds("carol", "right")));
        assert!(!u.verify_blocking(&creds("nobody", "right")));
    }

    #[test]
    fn success_is_cached_and_failure_is_not() {
        let u = users_with(&[("alice", bcrypt::hash("pw", 4).unwrap())]);
        assert!(!u.cached(&creds("alice", "pw")));
        assert!(!u.verify_blocking(&creds("alice", "bad")));
        assert!(!u.cached(&creds("alice", "bad")));
        assert!(u.verify_blocking(&creds("alice", "pw")));
        assert!(u.cached(&creds("alice", "pw")));
        assert!(!u.cached(&creds("alice", "pw ")));
    }

    #[test]
    fn weak_formats_are_refused_with_a_hint() {
        for bad in ["$apr1$abc$def", "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "plaintext", "$6$salt$hash", "$2y$04$short"] {
            let inline = BTreeMap::from([("x".to_string(), bad.to_string())]);
            let err = Users::load(None, &inline, Duration::ZERO).unwrap_err();
            assert!(err.contains("users.inline.x"), "{err}");
            if !bad.starts_with("$2y$") {
                assert!(err.contains("hash-password"), "{err}");
            }
        }
    }

    #[test]
    fn htpasswd_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, format!("# comment\nalice:{}\nbob:$apr1$x$y\n", bcrypt::hash("a", 4).unwrap())).unwrap();
        let err = Users::load(Some(&path), &BTreeMap::new(), Duration::ZERO).unwrap_err();
        assert!(err.contains("htpasswd:3"), "{err}");
        assert!(err.contains("bob"), "{err}");
    }

    #[test]
    fn unknown_users_get_a_dummy_of_the_same_cost() {
        let u = users_with(&[("alice", bcrypt::hash("pw", 5).unwrap())]);
        match u.dummy.as_ref().unwrap() {
            StoredHash::Bcrypt(h) => assert!(h.starts_with("$2b$05$"), "{h}"),
            other => panic!("{other:?}"),
        }
    }
}

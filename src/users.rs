//! Who may log in, and checking that they did, without letting a flood of
//! password guesses slow anyone else down.
//!
//! Hashes are loaded and checked for format once (bcrypt and argon2id only).
//! Verification is CPU-heavy, so it runs on a few low-priority threads of its own
//! behind a bounded queue. A success is remembered (keyed by an HMAC of the
//! credentials) so a logged-in client costs a hash-map lookup, not a bcrypt per
//! request; an exactly repeated failure briefly too; identical attempts arriving
//! together share one run.
//! Unknown users are verified against a dummy hash of the same cost, so timing
//! does not reveal whether a user exists.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::watch;

use crate::policy::basic_auth::Credentials;

/// A stored password hash of a kind we accept.
#[derive(Debug, Clone)]
enum StoredHash {
    Bcrypt(String),
    Argon2id(String),
}

impl StoredHash {
    fn parse(text: &str) -> Result<StoredHash, String> {
        let how = "make a bcrypt line with `cartguard hash-password USER` (or `htpasswd -nBC 12 USER`)";
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

/// The user table of one config snapshot, with its verification caches.
pub struct Users {
    entries: HashMap<String, StoredHash>,
    dummy: Option<StoredHash>,
    cache: VerifiedCache,
    /// Verifications running now, by credential key: later identical attempts wait for it.
    running: Mutex<HashMap<CredKey, watch::Receiver<Option<bool>>>>,
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
            let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "users.htpasswd: cannot read {}: {e}; create it with `cartguard hash-password USER > {}` \
                         (mode 0640), or remove users.htpasswd",
                    path.display(),
                    path.display()
                ),
                _ => format!("users.htpasswd: cannot read {}: {e}", path.display()),
            })?;
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
        Ok(Users { entries, dummy, cache: VerifiedCache::new(cache_ttl), running: Mutex::default() })
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

    /// Fast path: were these exact credentials verified recently (right or wrong)?
    pub fn cached(&self, creds: &Credentials) -> Option<bool> {
        self.cache.get(&self.cache.key(creds))
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
        self.cache.insert(self.cache.key(creds), ok);
        ok
    }

    /// Joins a verification of the same credentials already running, or registers
    /// this one as the runner (the sender publishes its result). The cache is
    /// checked again under the lock: a run stores its result before it unregisters,
    /// so one that finished a moment ago is not run twice.
    fn join_or_run(self: &Arc<Self>, creds: &Credentials) -> Join {
        let key = self.cache.key(creds);
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = running.get(&key) {
            return Join::Wait(rx.clone());
        }
        if let Some(ok) = self.cache.get(&key) {
            return Join::Cached(ok);
        }
        let (tx, rx) = watch::channel(None);
        running.insert(key, rx);
        Join::Run(Runner { users: self.clone(), key, tx })
    }
}

/// How one login attempt gets its answer.
enum Join {
    Cached(bool),
    Wait(watch::Receiver<Option<bool>>),
    Run(Runner),
}

/// The one attempt that runs a verification; leaving (done or not) unregisters it.
struct Runner {
    users: Arc<Users>,
    key: CredKey,
    tx: watch::Sender<Option<bool>>,
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.users.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

/// A keyed hash (HMAC-SHA256, per-snapshot random key) of user and password: the
/// caches and the single-flight table never hold a password.
type CredKey = [u8; 32];

/// Verification results, bounded and expiring: successes for `cache_ttl`, exactly
/// repeated failures for a short while, in separate maps so a flood of distinct
/// guesses cannot push logged-in users out.
struct VerifiedCache {
    key: hmac::Key,
    ttl: Duration,
    ok: Mutex<HashMap<CredKey, Instant>>,
    failed: Mutex<HashMap<CredKey, Instant>>,
}

const CACHE_CAPACITY: usize = 10_000;
/// How long an exactly repeated wrong login is answered without bcrypt. Short:
/// it only spares the CPU a guesser repeating itself; bans still count each attempt.
pub const FAILED_CACHE_TTL: Duration = Duration::from_secs(10);

impl VerifiedCache {
    fn new(ttl: Duration) -> VerifiedCache {
        let rng = SystemRandom::new();
        let mut seed = [0u8; 32];
        // If the system RNG fails, keys are a per-process time-seeded HMAC: still
        // never the password, just more guessable than a random key.
        if rng.fill(&mut seed).is_err() {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            seed[..16].copy_from_slice(&now.as_nanos().to_le_bytes());
        }
        VerifiedCache {
            key: hmac::Key::new(hmac::HMAC_SHA256, &seed),
            ttl,
            ok: Mutex::default(),
            failed: Mutex::default(),
        }
    }

    fn key(&self, creds: &Credentials) -> CredKey {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(creds.user.as_bytes());
        ctx.update(&[0]);
        ctx.update(creds.password.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    fn get(&self, key: &CredKey) -> Option<bool> {
        let now = Instant::now();
        let live = |map: &Mutex<HashMap<CredKey, Instant>>| {
            map.lock().unwrap_or_else(|p| p.into_inner()).get(key).is_some_and(|&expires| expires > now)
        };
        if live(&self.ok) {
            Some(true)
        } else if live(&self.failed) {
            Some(false)
        } else {
            None
        }
    }

    fn insert(&self, key: CredKey, ok: bool) {
        let (map, ttl) = if ok { (&self.ok, self.ttl) } else { (&self.failed, FAILED_CACHE_TTL) };
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = map.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_CAPACITY {
            entries.retain(|_, &mut expires| expires > now);
            if entries.len() >= CACHE_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key, now + ttl);
    }
}

/// Runs password verification off the async workers, a bounded number at once,
/// on its own threads at a lower CPU priority, so a guessing flood takes only the
/// CPU that admitted requests leave over.
pub struct VerifyPool {
    permits: Arc<tokio::sync::Semaphore>,
    /// Verifications waiting beyond this are refused (503) instead of queued.
    max_waiting: usize,
    waiting: Arc<AtomicUsize>,
    jobs: std::sync::mpsc::Sender<Job>,
    /// bcrypt/argon2 runs started, attempts that joined one already running,
    /// answers from the caches, and attempts refused because the queue was full.
    pub runs: AtomicU64,
    pub joined: AtomicU64,
    pub cache_hits: AtomicU64,
    pub refused: AtomicU64,
}

type Job = Box<dyn FnOnce() + Send>;

/// A verification thread: at `nice` 10 it gets about a tenth of the CPU the async
/// workers get when both want it.
fn verify_thread(jobs: Arc<Mutex<std::sync::mpsc::Receiver<Job>>>, nice: i32) {
    // Linux applies a per-thread nice value; elsewhere this may fail and is only a loss of priority.
    if nice != 0 {
        if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice) {
            tracing::debug!(error = %e, "could not lower the priority of a verification thread");
        }
    }
    loop {
        let job = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    Overloaded,
}

impl VerifyPool {
    pub fn new(concurrent: usize, max_waiting: usize, nice: i32) -> VerifyPool {
        let concurrent = concurrent.max(1);
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..concurrent {
            let rx = rx.clone();
            // A pool without threads only answers 503; that is logged, not fatal.
            if let Err(e) =
                std::thread::Builder::new().name(format!("cartguard-verify-{i}")).spawn(move || verify_thread(rx, nice))
            {
                tracing::error!(error = %e, "cannot start a password verification thread");
            }
        }
        VerifyPool {
            jobs,
            permits: Arc::new(tokio::sync::Semaphore::new(concurrent)),
            max_waiting,
            waiting: Arc::default(),
            runs: AtomicU64::new(0),
            joined: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Verifications waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// True if the credentials are right. Identical attempts running at once share
    /// one bcrypt/argon2 run; the run continues if the attempt that started it leaves.
    pub async fn verify(&self, users: Arc<Users>, creds: Credentials) -> Result<bool, VerifyError> {
        if let Some(ok) = users.cached(&creds) {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(ok);
        }
        let mut rx = match users.join_or_run(&creds) {
            Join::Cached(ok) => {
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(ok);
            }
            Join::Wait(rx) => {
                self.joined.fetch_add(1, Ordering::Relaxed);
                rx
            }
            Join::Run(runner) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(VerifyError::Overloaded);
                }
                self.runs.fetch_add(1, Ordering::Relaxed);
                let rx = runner.tx.subscribe();
                self.spawn(runner, creds);
                rx
            }
        };
        let answer = rx.wait_for(Option::is_some).await.map(|v| (*v).unwrap_or(false));
        answer.map_err(|_| VerifyError::Overloaded)
    }

    /// Queues one run in its own task, so it finishes (and publishes) even if every
    /// attempt waiting on it goes away.
    fn spawn(&self, runner: Runner, creds: Credentials) {
        let permits = self.permits.clone();
        let waiting = self.waiting.clone();
        let jobs = self.jobs.clone();
        tokio::spawn(async move {
            let permit = permits.acquire_owned().await;
            waiting.fetch_sub(1, Ordering::AcqRel);
            let Ok(permit) = permit else { return };
            let (done, result) = tokio::sync::oneshot::channel();
            let users = runner.users.clone();
            let job: Job = Box::new(move || {
                let ok = users.verify_blocking(&creds);
                drop(permit);
                let _ = done.send(ok);
            });
            if jobs.send(job).is_err() {
                return;
            }
            // A lost job (its thread gone) drops `runner` unanswered: waiters get 503.
            if let Ok(ok) = result.await {
                runner.tx.send_replace(Some(ok));
            }
        });
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
    fn success_and_exactly_repeated_failure_are_cached() {
        let u = users_with(&[("alice", bcrypt::hash("pw", 4).unwrap())]);
        assert_eq!(u.cached(&creds("alice", "pw")), None);
        assert!(!u.verify_blocking(&creds("alice", "bad")));
        assert_eq!(u.cached(&creds("alice", "bad")), Some(false));
        assert_eq!(u.cached(&creds("alice", "bad2")), None);
        assert!(u.verify_blocking(&creds("alice", "pw")));
        assert_eq!(u.cached(&creds("alice", "pw")), Some(true));
        assert_eq!(u.cached(&creds("alice", "pw ")), None);
    }

    #[test]
    fn cache_keys_depend_on_a_per_snapshot_secret() {
        let a = users_with(&[("alice", bcrypt::hash("pw", 4).unwrap())]);
        let b = users_with(&[("alice", bcrypt::hash("pw", 4).unwrap())]);
        let c = creds("alice", "pw");
        assert_ne!(a.cache.key(&c), b.cache.key(&c));
        assert_eq!(a.cache.key(&c), a.cache.key(&c));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn identical_concurrent_logins_share_one_verification() {
        let users = Arc::new(users_with(&[("alice", bcrypt::hash("pw", 8).unwrap())]));
        let pool = Arc::new(VerifyPool::new(1, 256, 0));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (pool, users) = (pool.clone(), users.clone());
                tokio::spawn(async move { pool.verify(users, creds("alice", "pw")).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(true));
        }
        assert_eq!(pool.runs.load(Ordering::Relaxed), 1);
        assert_eq!(pool.joined.load(Ordering::Relaxed) + pool.cache_hits.load(Ordering::Relaxed), 19);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_instead_of_waiting() {
        let users = Arc::new(users_with(&[("alice", bcrypt::hash("pw", 10).unwrap())]));
        let pool = Arc::new(VerifyPool::new(1, 2, 0));
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let (pool, users) = (pool.clone(), users.clone());
                tokio::spawn(async move { pool.verify(users, creds("alice", &format!("guess{i}"))).await })
            })
            .collect();
        let mut refused = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(ok) => assert!(!ok),
                Err(VerifyError::Overloaded) => refused += 1,
            }
        }
        assert!(refused >= 3, "only {refused} of 6 distinct guesses refused with a queue of 2");
        assert_eq!(pool.refused.load(Ordering::Relaxed), refused);
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

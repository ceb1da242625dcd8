//! One background task per `acme:` listener: wait until a certificate is due,
//! order it, answer the CA's challenge, store the result and swap it in.
//!
//! Failures are recorded for /status and retried after `retry_backoff`,
//! doubling up to an hour (or the backoff itself, if longer). The protocol is
//! instant-acme's; this module only decides when and with which challenge.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use tokio::sync::watch;

use super::challenge::Posted;
use super::{at, now_string, storage, AcmeState};
use crate::config::{AcmeConfig, Challenge};
use crate::state::Shared;
use crate::tls::CertStore;

/// Longest wait between failed attempts (unless `retry_backoff` is longer).
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// The longest single sleep while waiting for a renewal.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// One attempt, from the first request to the stored certificate.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);

/// Starts a task for every `acme:` listener of the current config.
pub fn spawn_all(shared: &Arc<Shared>, shutdown: &watch::Receiver<bool>) {
    let rt = shared.runtime.load();
    for l in &rt.config.listeners {
        let Some(cfg) = l.acme.clone() else { continue };
        let listener = l.addr.to_string();
        let Some(store) = shared.tls.store_for(&listener) else { continue };
        tokio::spawn(run(cfg, listener, store, shared.tls.acme.clone(), shutdown.clone()));
    }
}

async fn run(
    cfg: AcmeConfig,
    listener: String,
    store: Arc<CertStore>,
    state: Arc<AcmeState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut account: Option<Account> = None;
    loop {
        let Some(status) = state.get(&listener) else { return };
        let now = storage::unix_now();
        let due = if status.failures > 0 {
            now + backoff(cfg.retry_backoff, status.failures).as_secs() as i64
        } else {
            status.renew_at_unix().unwrap_or(now)
        };
        state.update(&listener, |s| s.next_attempt_at = Some(at(due)));
        if due > now {
            // At most an hour at a time, so a changed clock or a suspend is noticed.
            let wait = Duration::from_secs((due - now) as u64).min(MAX_SLEEP);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            if due - now > MAX_SLEEP.as_secs() as i64 {
                continue;
            }
        }
        state.update(&listener, |s| {
            s.last_attempt_at = Some(now_string());
            s.last_attempt_unix = Some(storage::unix_now());
        });
        let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, issue(&cfg, &mut account, &state));
        let result = tokio::select! {
            r = attempt => r.unwrap_or_else(|_| Err(format!("no certificate within {}s", ATTEMPT_TIMEOUT.as_secs()))),
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match result {
            Ok(stored) => {
                tracing::info!(listener = %listener, names = %cfg.domains.join(","), issuer = %stored.issuer, not_after = %stored.cert.info.not_after, "ACME certificate installed");
                state.update(&listener, |s| {
                    s.issuer = Some(stored.issuer.clone());
                    s.not_before_unix = Some(stored.not_before_unix);
                    s.not_after_unix = Some(stored.cert.info.not_after_unix);
                    s.last_renewed_at = Some(now_string());
                    s.last_error = None;
                    s.failures = 0;
                    s.renewals_ok += 1;
                });
                store.replace(vec![stored.cert]);
            }
            Err(e) => {
                // A stale account (the CA forgot it) is rebuilt on the next attempt.
                account = None;
                tracing::warn!(listener = %listener, names = %cfg.domains.join(","), "ACME attempt failed, will retry: {e}");
                state.update(&listener, |s| {
                    s.last_error = Some(e);
                    s.failures = s.failures.saturating_add(1);
                    s.renewals_failed += 1;
                });
            }
        }
    }
}

/// `first`, doubled per consecutive failure, capped.
fn backoff(first: Duration, failures: u32) -> Duration {
    let cap = MAX_BACKOFF.max(first);
    first.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(cap)
}

/// The stored account for this directory, or a new one (then stored).
async fn account(cfg: &AcmeConfig) -> Result<Account, String> {
    let builder = || match &cfg.ca {
        Some(ca) => Account::builder_with_root(ca).map_err(|e| format!("acme.ca {}: {e}", ca.display())),
        None => Account::builder().map_err(|e| format!("ACME HTTP client: {e}")),
    };
    if let Some(credentials) = storage::load_account(cfg)? {
        return builder()?.from_credentials(credentials).await.map_err(|e| format!("directory {}: {e}", cfg.directory));
    }
    let contact: Vec<&str> = cfg.email.iter().map(String::as_str).collect();
    let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
    let (account, credentials) = builder()?
        .create(&new, cfg.directory.clone(), None)
        .await
        .map_err(|e| format!("creating an account at {}: {e}", cfg.directory))?;
    storage::save_account(cfg, credentials)?;
    tracing::info!(directory = %cfg.directory, "ACME account created");
    Ok(account)
}

/// One order from start to a stored, loaded certificate.
async fn issue(cfg: &AcmeConfig, slot: &mut Option<Account>, state: &AcmeState) -> Result<storage::Stored, String> {
    let account = match slot {
        Some(a) => a,
        None => slot.insert(account(cfg).await?),
    };
    let ids: Vec<Identifier> = cfg.domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await.map_err(|e| format!("new order: {e}"))?;
    let mut posted: Vec<Posted<'_>> = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
        let name = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("authorization for {name} is {other:?}")),
        }
        let offered: Vec<ChallengeType> = authz.challenges.iter().map(|c| c.r#type.clone()).collect();
        let Some(kind) = cfg.challenges.iter().copied().find(|c| offered.contains(&challenge_type(*c))) else {
            return Err(format!("the CA offers none of the configured challenges for {name}"));
        };
        let mut challenge = authz
            .challenge(challenge_type(kind))
            .ok_or_else(|| format!("the CA offers no {} challenge for {name}", kind.as_str()))?;
        let key_auth = challenge.key_authorization();
        posted.push(match kind {
            Challenge::TlsAlpn01 => state.challenges.post_tls_alpn(&name, key_auth.digest().as_ref())?,
            Challenge::Http01 => state.challenges.post_http(&challenge.token, key_auth.as_str()),
        });
        challenge.set_ready().await.map_err(|e| format!("{} for {name}: {e}", kind.as_str()))?;
    }
    let polling = RetryPolicy::new().timeout(Duration::from_secs(120));
    let status = order.poll_ready(&polling).await.map_err(|e| format!("waiting for validation: {e}"))?;
    if status != OrderStatus::Ready {
        return Err(validation_errors(&mut order).await.unwrap_or_else(|| format!("order is {status:?}")));
    }
    drop(posted);
    let key_pem = order.finalize().await.map_err(|e| format!("finalize: {e}"))?;
    let chain_pem = order.poll_certificate(&polling).await.map_err(|e| format!("certificate download: {e}"))?;
    storage::save(cfg, &chain_pem, &key_pem)?;
    storage::load_valid(cfg)?.ok_or_else(|| "the CA's certificate does not cover every configured name".to_string())
}

/// The CA's own words on why a challenge failed.
async fn validation_errors(order: &mut instant_acme::Order) -> Option<String> {
    let mut out = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        for c in &authz.challenges {
            if let Some(p) = &c.error {
                out.push(format!("{}: {}", authz.identifier(), p.detail.as_deref().unwrap_or("validation failed")));
            }
        }
    }
    (!out.is_empty()).then(|| format!("validation failed: {}", out.join("; ")))
}

fn challenge_type(c: Challenge) -> ChallengeType {
    match c {
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        Challenge::Http01 => ChallengeType::Http01,
    }
}

#[cfg(test)]
mod tests {
    use super::{backoff, MAX_BACKOFF};
    use std::time::Duration;

    #[test]
    fn backoff_doubles_per_failure_up_to_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(60), 1), s(60));
        assert_eq!(backoff(s(60), 2), s(120));
        assert_eq!(backoff(s(60), 4), s(480));
        assert_eq!(backoff(s(60), 40), MAX_BACKOFF);
        assert_eq!(backoff(s(7200), 3), s(7200));
    }
}

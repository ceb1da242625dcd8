//! Delivering one alert to one sink: a webhook POST (retried with a doubling,
//! bounded backoff) or a command run directly (no shell) with the alert on
//! stdin and in its environment, killed when its timeout passes.
//!
//! The answer (HTTP status and the start of the body, or the exit status and
//! the first line of output) is what `/status` and `cartguard alert test` show.
//! A webhook URL is a secret and never appears in an answer or a log line.

use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::io::AsyncWriteExt;

use super::events::Alert;
use crate::config::{CommandStdin, SinkConfig, SinkTarget};

/// The longest wait between two webhook attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How much of an answer is kept.
const ANSWER_CHARS: usize = 200;

type WebhookClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Delivers `alert`, retrying a webhook up to `sink.retries` times; Ok is the final answer.
pub async fn deliver(sink: &SinkConfig, alert: &Alert) -> Result<String, String> {
    let mut wait = sink.backoff;
    let mut attempt = 0;
    loop {
        let result = send_once(sink, alert).await;
        let retry = matches!(sink.target, SinkTarget::Webhook(_)) && attempt < sink.retries;
        match result {
            Err(e) if retry => {
                tracing::debug!(sink = %sink.name, attempt, error = %e, "alert delivery failed, retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
            Err(e) if attempt > 0 => return Err(format!("{e} (after {} attempts)", attempt + 1)),
            other => return other,
        }
    }
}

/// One attempt, bounded by the sink's timeout.
pub async fn send_once(sink: &SinkConfig, alert: &Alert) -> Result<String, String> {
    let work = async {
        match &sink.target {
            SinkTarget::Webhook(url) => post(url, alert).await,
            SinkTarget::Command { argv, stdin } => run(argv, *stdin, alert).await,
        }
    };
    // Dropping a running command kills it (kill_on_drop).
    tokio::time::timeout(sink.timeout, work).await.unwrap_or_else(|_| {
        Err(format!("no answer within {}ms; given up (a command is killed)", sink.timeout.as_millis()))
    })
}

fn client() -> &'static WebhookClient {
    static CLIENT: OnceLock<WebhookClient> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|_| {
                // ring supports the default versions; this branch only keeps the type total.
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            });
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).timer(TokioTimer::new()).build(connector)
    })
}

async fn post(url: &http::Uri, alert: &Alert) -> Result<String, String> {
    let body = serde_json::to_vec(alert).map_err(|e| e.to_string())?;
    let req = Request::post(url.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, concat!("cartguard/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = client().request(req).await.map_err(|e| crate::upstream::error_chain(&e))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), 64 * 1024).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let answer = format!("HTTP {} {}", status.as_u16(), first_line(&body)).trim_end().to_string();
    if status.is_success() {
        Ok(answer)
    } else {
        Err(answer)
    }
}

async fn run(argv: &[String], stdin: CommandStdin, alert: &Alert) -> Result<String, String> {
    let input = match stdin {
        CommandStdin::Json => serde_json::to_vec_pretty(alert).map_err(|e| e.to_string())?,
        CommandStdin::Mail => mail(alert).into_bytes(),
    };
    let Some((program, args)) = argv.split_first() else {
        return Err("no program".into());
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(alert.env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let mut pipe = child.stdin.take();
    let feed = async move {
        if let Some(p) = pipe.as_mut() {
            // A command that ignores its stdin is fine: a broken pipe is not a failure.
            let _ = p.write_all(&input).await;
        }
        drop(pipe);
    };
    let (_, output) = tokio::join!(feed, child.wait_with_output());
    let output = output.map_err(|e| format!("{program}: {e}"))?;
    let said = if output.stderr.is_empty() { first_line(&output.stdout) } else { first_line(&output.stderr) };
    let answer = format!("{} {said}", output.status).trim_end().to_string();
    if output.status.success() {
        Ok(answer)
    } else {
        Err(answer)
    }
}

/// A message for `sendmail RECIPIENT`: a Subject header, the text, then the JSON.
fn mail(alert: &Alert) -> String {
    format!(
        "Subject: [cartguard] {}\nContent-Type: text/plain; charset=utf-8\nAuto-Submitted: auto-generated\n\n{}\n\n{}\n",
        alert.summary,
        alert.summary,
        serde_json::to_string_pretty(alert).unwrap_or_default()
    )
}

/// The first non-empty line, printable, at most ANSWER_CHARS characters.
fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    line.chars().filter(|c| !c.is_control()).take(ANSWER_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mail_subject_is_one_line_whatever_the_alert_says() {
        let a = Alert::new_integration_address("192.0.2.9", "r", "/x\r\nBcc: someone@example.com");
        let m = mail(&a);
        let head = m.split("\n\n").next().unwrap();
        assert_eq!(head.lines().count(), 3, "{head}");
        assert!(!head.lines().any(|l| l.starts_with("Bcc:")), "{head}");
    }
}

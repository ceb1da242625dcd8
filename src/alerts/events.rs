//! What the guard tells the owner about: one `Alert` per event, with a kind,
//! a key (what it is about, for rate limiting), one line of text for chat and
//! mail subjects, and details that also become `CARTGUARD_ALERT_*` variables.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::access_log::rfc3339;

/// Every kind of alert, in the spelling of the JSON, metrics and the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    GroupQuiet,
    GroupRecovered,
    NewIntegrationAddress,
    UpstreamDown,
    UpstreamRecovered,
    CertificateExpiring,
    ReloadFailed,
    OverloadStarted,
    OverloadStopped,
    Test,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::GroupQuiet => "group_quiet",
            AlertKind::GroupRecovered => "group_recovered",
            AlertKind::NewIntegrationAddress => "new_integration_address",
            AlertKind::UpstreamDown => "upstream_down",
            AlertKind::UpstreamRecovered => "upstream_recovered",
            AlertKind::CertificateExpiring => "certificate_expiring",
            AlertKind::ReloadFailed => "reload_failed",
            AlertKind::OverloadStarted => "overload_started",
            AlertKind::OverloadStopped => "overload_stopped",
            AlertKind::Test => "test",
        }
    }
}

/// One event, as sent: the webhook body and the command's stdin are this as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// Slack/Mattermost show this field; `<`, `>` and `&` are escaped for them.
    pub text: String,
    pub kind: AlertKind,
    /// What the alert is about (a group, an address, a file): the rate-limit key with `kind`.
    pub key: String,
    /// The same line as `text`, unescaped.
    pub summary: String,
    pub time: String,
    pub details: BTreeMap<&'static str, String>,
}

impl Alert {
    /// An alert of `kind` about `key`; `summary` is one line (control characters become spaces).
    pub fn new(kind: AlertKind, key: impl Into<String>, summary: impl Into<String>) -> Alert {
        let summary: String = summary.into().chars().map(|c| if c.is_control() { ' ' } else { c }).take(500).collect();
        let text = format!("cartguard: {}", summary).replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        Alert { text, kind, key: key.into(), summary, time: rfc3339(SystemTime::now()), details: BTreeMap::new() }
    }

    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Alert {
        self.details.insert(name, value.into());
        self
    }

    pub fn group_quiet(group: &str, within: Duration, last_seen_ago: Option<Duration>) -> Alert {
        let seen = match last_seen_ago {
            Some(ago) => format!("last seen {}s ago", ago.as_secs()),
            None => "not seen since the guard started".into(),
        };
        Alert::new(
            AlertKind::GroupQuiet,
            group,
            format!("group {group} has not been seen within {}s ({seen})", within.as_secs()),
        )
        .with("group", group)
        .with("within_seconds", within.as_secs().to_string())
    }

    pub fn group_recovered(group: &str, client_ip: Option<&str>) -> Alert {
        let from = client_ip.map(|ip| format!(" from {ip}")).unwrap_or_default();
        Alert::new(AlertKind::GroupRecovered, group, format!("group {group} is back{from}"))
            .with("group", group)
            .with("client_ip", client_ip.unwrap_or(""))
    }

    pub fn new_integration_address(client_ip: &str, rule: &str, path: &str) -> Alert {
        let path: String = path.chars().take(200).collect();
        Alert::new(
            AlertKind::NewIntegrationAddress,
            client_ip,
            format!(
                "possible new integration address {client_ip}: sent credentials to {path} (rule {rule}) and was refused; if this is the integration, add it to its group"
            ),
        )
        .with("client_ip", client_ip)
        .with("rule", rule)
        .with("path", path)
    }

    pub fn upstream_down(authority: &str, error: &str) -> Alert {
        Alert::new(AlertKind::UpstreamDown, authority, format!("upstream {authority} is down: {error}"))
            .with("upstream", authority)
            .with("error", error)
    }

    pub fn upstream_recovered(authority: &str) -> Alert {
        Alert::new(AlertKind::UpstreamRecovered, authority, format!("upstream {authority} is reachable again"))
            .with("upstream", authority)
    }

    pub fn certificate_expiring(listener: &str, file: &str, not_after: &str, days_left: i64) -> Alert {
        Alert::new(
            AlertKind::CertificateExpiring,
            format!("{listener} {file}"),
            format!("certificate {file} on {listener} expires in {days_left} days ({not_after})"),
        )
        .with("listener", listener)
        .with("file", file)
        .with("not_after", not_after)
        .with("days_left", days_left.to_string())
    }

    pub fn reload_failed(config: &str, error: &str) -> Alert {
        Alert::new(
            AlertKind::ReloadFailed,
            config,
            format!("reload failed, the previous configuration keeps serving: {error}"),
        )
        .with("config", config)
        .with("error", error)
    }

    /// For load shedding: raise when shedding starts, with what is being shed and why.
    pub fn overload_started(detail: &str) -> Alert {
        Alert::new(AlertKind::OverloadStarted, "overload", format!("overload: shedding load ({detail})"))
            .with("detail", detail)
    }

    /// For load shedding: raise when it stops.
    pub fn overload_stopped(detail: &str) -> Alert {
        Alert::new(AlertKind::OverloadStopped, "overload", format!("overload is over ({detail})"))
            .with("detail", detail)
    }

    pub fn test() -> Alert {
        Alert::new(AlertKind::Test, "test", "test alert from `cartguard alert test`: this sink works")
    }

    /// `CARTGUARD_ALERT_KIND`, `_KEY`, `_TEXT`, `_TIME` and one `CARTGUARD_ALERT_<DETAIL>` per detail.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("CARTGUARD_ALERT_KIND".to_string(), self.kind.as_str().to_string()),
            ("CARTGUARD_ALERT_KEY".to_string(), self.key.clone()),
            ("CARTGUARD_ALERT_TEXT".to_string(), self.summary.clone()),
            ("CARTGUARD_ALERT_TIME".to_string(), self.time.clone()),
        ];
        for (name, value) in &self.details {
            env.push((format!("CARTGUARD_ALERT_{}", name.to_ascii_uppercase()), value.replace('\0', "")));
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_one_escaped_line_and_details_become_variables() {
        let a = Alert::new_integration_address("192.0.2.9", "cart-api", "/a<b>&c\r\nSubject: x");
        assert!(!a.summary.contains('\n') && !a.summary.contains('\r'), "{}", a.summary);
        assert!(a.text.contains("/a&lt;b&gt;&amp;c"), "{}", a.text);
        let env = a.env();
        assert!(env.contains(&("CARTGUARD_ALERT_KIND".into(), "new_integration_address".into())));
        assert!(env.contains(&("CARTGUARD_ALERT_CLIENT_IP".into(), "192.0.2.9".into())));
        assert!(env.contains(&("CARTGUARD_ALERT_RULE".into(), "cart-api".into())));
    }
}

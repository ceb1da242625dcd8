//! Validation of `alerts:`: every sink has a unique name and exactly one target.
//! A webhook is an http(s) URL; a command is an argv list run without a shell.

use http::Uri;

use super::raw::{RawAlerts, RawSink};
use super::{AlertSettings, CommandStdin, ConfigError, SinkConfig, SinkTarget, Validator};

impl Validator<'_> {
    pub(super) fn alerts(&self, raw: &RawAlerts) -> Result<AlertSettings, ConfigError> {
        let mut sinks: Vec<SinkConfig> = Vec::new();
        for (i, s) in raw.sinks.iter().enumerate() {
            let key = |k: &str| format!("alerts.sinks[{i}].{k}");
            if s.name.trim().is_empty() || s.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(self.err(key("name"), "name:", "must be a non-empty word"));
            }
            if sinks.iter().any(|x| x.name == s.name) {
                return Err(self.err(key("name"), &s.name, format!("sink name {:?} is used twice", s.name)));
            }
            if s.timeout.0.is_zero() {
                return Err(self.err(key("timeout"), "timeout", "must be more than zero"));
            }
            if s.retries > 10 {
                return Err(self.err(key("retries"), "retries", "at most 10"));
            }
            sinks.push(SinkConfig {
                name: s.name.clone(),
                target: self.sink_target(s, &key)?,
                timeout: s.timeout.0,
                retries: s.retries,
                backoff: s.backoff.0,
            });
        }
        Ok(AlertSettings { sinks, repeat_after: raw.repeat_after.0 })
    }

    fn sink_target(&self, s: &RawSink, key: &dyn Fn(&str) -> String) -> Result<SinkTarget, ConfigError> {
        let stdin = match s.stdin.as_deref() {
            None | Some("json") => CommandStdin::Json,
            Some("mail") => CommandStdin::Mail,
            Some(other) => return Err(self.err(key("stdin"), other, "must be json or mail")),
        };
        match (&s.webhook, &s.command) {
            (Some(url), None) => {
                if s.stdin.is_some() {
                    return Err(self.err(key("stdin"), "stdin", "only command sinks have stdin"));
                }
                // The URL is a secret: the error names the key, never the value.
                let bad = |why: &str| self.err(key("webhook"), "webhook", why.to_string());
                let uri: Uri = url.trim().parse().map_err(|_| bad("is not a URL"))?;
                if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
                    return Err(bad("must be an http:// or https:// URL with a host"));
                }
                Ok(SinkTarget::Webhook(uri))
            }
            (None, Some(argv)) => {
                if argv.first().is_none_or(|a| a.trim().is_empty()) {
                    return Err(self.err(key("command"), "command", "needs a program: [\"/usr/sbin/sendmail\", ...]"));
                }
                if argv.iter().any(|a| a.contains('\0')) {
                    return Err(self.err(key("command"), "command", "arguments must not contain NUL"));
                }
                Ok(SinkTarget::Command { argv: argv.clone(), stdin })
            }
            _ => Err(self.err(key("name"), &s.name, "a sink needs exactly one of webhook: and command:")),
        }
    }
}

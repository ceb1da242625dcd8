//! Percent-decoding, shared by the policy (paths, query matching) and the access
//! log (which redacts secret query values by their decoded names).

use crate::policy::path::PathError;

/// Strict: a `%` not followed by two hex digits is an error, never passed through.
pub fn percent_decode(input: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            let hex = input.get(i + 1..i + 3).ok_or(PathError::BadPercentEncoding)?;
            let hi = hex_val(hex[0]).ok_or(PathError::BadPercentEncoding)?;
            let lo = hex_val(hex[1]).ok_or(PathError::BadPercentEncoding)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Replaces the value of every query parameter whose name looks secret.
pub fn redact_query(query: &str) -> String {
    const SECRET_WORDS: [&str; 7] = ["key", "secret", "token", "password", "pass", "signature", "sig"];
    // Fast path: with no escapes and no secret word anywhere, no name can need redacting.
    if !query.contains('%') {
        let lower = query.to_ascii_lowercase();
        if !SECRET_WORDS.iter().any(|w| lower.contains(w)) {
            return query.to_string();
        }
    }
    query
        .split('&')
        .map(|pair| {
            let (name, _) = pair.split_once('=').unwrap_or((pair, ""));
            let lower = name.to_ascii_lowercase();
            let decoded = percent_decode(lower.as_bytes()).unwrap_or_else(|_| lower.clone().into_bytes());
            let decoded = String::from_utf8_lossy(&decoded).to_ascii_lowercase();
            if pair.contains('=') && SECRET_WORDS.iter().any(|w| decoded.contains(w)) {
                format!("{name}=REDACTED")
            } else {
                pair.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_queries_are_redacted() {
        let q = redact_query("consumer_key=ck_abc&consumer_secret=cs_def&rest_route=/wc/v3&oauth_signature=x&api_token=t&sig=1&Password=p&passcode=z&page=2&flag");
        assert_eq!(
            q,
            "consumer_key=REDACTED&consumer_secret=REDACTED&rest_route=/wc/v3&oauth_signature=REDACTED&api_token=REDACTED&sig=REDACTED&Password=REDACTED&passcode=REDACTED&page=2&flag"
        );
        assert_eq!(redact_query("consumer%5Fkey=ck"), "consumer%5Fkey=REDACTED");
    }
}

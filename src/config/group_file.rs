//! Groups kept in their own file: one address or CIDR a line, `#` comments,
//! blank lines ignored. Errors name the file, the line and the group key, like
//! errors in the YAML. The file is re-read on every reload (SIGHUP, or the
//! watcher in `alerts::watch` noticing a change).

use std::path::Path;

use ipnet::IpNet;

use super::{parse_net, ConfigError, FileStamp};

/// At most this many bytes: a group file is a list of networks, not a database.
const MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Reads the networks of group `name` from `path`, with the file's stamp taken before reading.
pub(super) fn read(name: &str, path: &Path) -> Result<(Vec<IpNet>, Option<FileStamp>), ConfigError> {
    let key = format!("groups.{name}.file");
    let fail = |line: Option<(usize, usize)>, message: String| ConfigError {
        file: path.to_path_buf(),
        key: key.clone(),
        line,
        message,
    };
    let stamp = FileStamp::of(path);
    if stamp.is_some_and(|s| s.len > MAX_BYTES) {
        return Err(fail(None, format!("the file is larger than {MAX_BYTES} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(None, format!("cannot read the group file: {e}")))?;
    Ok((parse(&text).map_err(|(line, col, message)| fail(Some((line, col)), message))?, stamp))
}

/// The networks in `text`, or (line, column, message) of the first bad line.
fn parse(text: &str) -> Result<Vec<IpNet>, (usize, usize, String)> {
    let mut nets = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or("");
        let entry = content.trim();
        if entry.is_empty() {
            continue;
        }
        let col = content.len() - content.trim_start().len() + 1;
        let net = parse_net(entry)
            .ok_or_else(|| (i + 1, col, format!("{entry:?} is not an IP address or CIDR (one a line, # comments)")))?;
        if net.prefix_len() == 0 {
            return Err((i + 1, col, format!("{net} would admit everyone")));
        }
        nets.push(net);
    }
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn comments_blank_lines_addresses_and_cidrs() {
        let nets = parse("# partners\n\n  192.0.2.7   # shop A\n2001:db8::/32\n10.0.0.0/8\n").unwrap();
        let text: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
        assert_eq!(text, ["192.0.2.7/32", "2001:db8::/32", "10.0.0.0/8"]);
    }

    #[test]
    fn a_bad_line_is_named_by_line_and_column() {
        let (line, col, message) = parse("# ok\n192.0.2.7\n   nonsense\n").unwrap_err();
        assert_eq!((line, col), (3, 4));
        assert!(message.contains("\"nonsense\""), "{message}");
        let (line, _, message) = parse("0.0.0.0/0\n").unwrap_err();
        assert_eq!(line, 1);
        assert!(message.contains("everyone"), "{message}");
    }
}

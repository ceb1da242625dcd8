//! Where a key path such as `auth.ban` or `rules[2].others` is written in the config text.
//!
//! The validator works on typed values that no longer carry positions, so an error finds
//! its place again by walking the block-style YAML the way a reader would: by keys,
//! list items and indentation, never inside comments. A plain text search would point
//! at the first occurrence anywhere, a comment included.

/// One key or list item of the text, with its indentation and 1-based line and column.
#[derive(Debug, Clone, Copy)]
struct Entry<'a> {
    indent: usize,
    /// `None` for a list item (`- `).
    key: Option<&'a str>,
    line: usize,
    col: usize,
}

/// Keys and list items in file order. Flow collections (`[a, b]`, `{a: b}`) count as
/// values: their contents are never looked up by key.
fn entries(text: &str) -> Vec<Entry<'_>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut indent = line.len() - line.trim_start_matches(' ').len();
        let mut rest = &line[indent..];
        loop {
            if rest.is_empty() || rest.starts_with('#') {
                break;
            }
            if rest == "-" || rest.starts_with("- ") {
                out.push(Entry { indent, key: None, line: n + 1, col: indent + 1 });
                let after = rest[1..].trim_start_matches(' ');
                indent += rest.len() - after.len();
                rest = after;
                continue;
            }
            if let Some(key) = key_of(rest) {
                out.push(Entry { indent, key: Some(key), line: n + 1, col: indent + 1 });
            }
            break;
        }
    }
    out
}

/// The key of `key: value` or `key:`, unquoted or quoted.
fn key_of(rest: &str) -> Option<&str> {
    if let Some(q @ ('"' | '\'')) = rest.chars().next() {
        let end = rest[1..].find(q)? + 1;
        return rest[end + 1..].starts_with(':').then(|| &rest[1..end]);
    }
    let colon = rest.find(": ").or_else(|| rest.strip_suffix(':').map(|k| k.len()))?;
    let key = rest[..colon].trim_end();
    (!key.is_empty() && !key.starts_with(['[', '{', '"', '\''])).then_some(key)
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Segment::Key(name));
        }
        while let Some(close) = indexes.find(']') {
            if let Ok(i) = indexes[1..close].parse() {
                out.push(Segment::Index(i));
            }
            indexes = &indexes[close + 1..];
        }
    }
    out
}

/// Line and column (1-based) of the deepest part of `path` found in `text`; `None` when
/// not even its first key is written (a default value, say).
pub fn of_key(text: &str, path: &str) -> Option<(usize, usize)> {
    let all = entries(text);
    let mut scope: &[Entry] = &all;
    let mut found: Option<(usize, usize)> = None;
    for segment in segments(path) {
        let hit = match segment {
            Segment::Key(name) => {
                let depth = scope.iter().find(|e| e.key.is_some())?.indent;
                scope.iter().position(|e| e.indent == depth && e.key == Some(name))
            }
            Segment::Index(i) => {
                let depth = scope.iter().find(|e| e.key.is_none())?.indent;
                scope.iter().enumerate().filter(|(_, e)| e.indent == depth && e.key.is_none()).nth(i).map(|(n, _)| n)
            }
        };
        let Some(at) = hit else { break };
        let entry = scope[at];
        found = Some((entry.line, entry.col));
        // Children: what follows until the next entry at this entry's depth or shallower
        // (a list may sit at its key's own indentation, so items there still belong).
        let rest = &scope[at + 1..];
        let end = rest
            .iter()
            .position(|e| match entry.key {
                Some(_) => e.indent < entry.indent || (e.indent == entry.indent && e.key.is_some()),
                None => e.indent <= entry.indent,
            })
            .unwrap_or(rest.len());
        scope = &rest[..end];
    }
    found
}

/// The first line after `line` that is no longer inside the value of the key written
/// at `line`, `col` (a later line indented no deeper than the key); past the end if none.
pub fn block_end(text: &str, line: usize, col: usize) -> usize {
    let key_indent = col - 1;
    for (n, l) in text.lines().enumerate().skip(line) {
        let body = l.trim_start_matches(' ');
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        if l.len() - body.len() <= key_indent {
            return n + 1;
        }
    }
    usize::MAX
}

/// Where `needle` first appears at or after line `from` (1-based), outside comments.
pub fn of_text_after(text: &str, from: usize, needle: &str) -> Option<(usize, usize)> {
    if needle.is_empty() {
        return None;
    }
    for (n, line) in text.lines().enumerate().skip(from.saturating_sub(1)) {
        let code = match line.find(" #") {
            Some(i) => &line[..i],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        if let Some(col) = code.find(needle) {
            return Some((n + 1, col + 1));
        }
    }
    None
}

/// The first line up to `upto` (1-based) with an unclosed double quote, outside comments:
/// the usual cause of a parser error reported lines later.
pub fn unclosed_quote(text: &str, upto: usize) -> Option<usize> {
    text.lines().take(upto).enumerate().find_map(|(n, line)| {
        let (mut open, mut escaped) = (false, false);
        for c in line.chars() {
            match c {
                '#' if !open => break,
                '\\' if open => escaped = !escaped,
                '"' if !escaped => open = !open,
                _ => escaped = false,
            }
        }
        open.then_some(n + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# auth: ban: 0.0.0.0/0 in a comment
listen:
  - addr: \"127.0.0.1:8080\"
  - addr: \"[::]:443\"
    tls: {cert: a.pem, key: b.pem}
client_ip:
  # trusted_proxies: [0.0.0.0/0]
  trusted_proxies: [10.0.0.0/8, 0.0.0.0/0]
rules:
- name: api
  others: auth
- name: site
  path_prefix: /
  others: deny
auth:
  realm: Shop
  ban: 15 minutes
";

    #[test]
    fn nested_keys_are_found_by_their_path_not_by_their_first_mention() {
        assert_eq!(of_key(TEXT, "auth.ban"), Some((17, 3)));
        assert_eq!(of_key(TEXT, "client_ip.trusted_proxies"), Some((8, 3)));
        assert_eq!(of_key(TEXT, "auth"), Some((15, 1)));
    }

    #[test]
    fn list_items_are_counted_at_their_own_depth() {
        assert_eq!(of_key(TEXT, "listen[1].tls"), Some((5, 5)));
        assert_eq!(of_key(TEXT, "listen[1].addr"), Some((4, 5)));
        assert_eq!(of_key(TEXT, "rules[1].others"), Some((14, 3)));
        assert_eq!(of_key(TEXT, "rules[0].others"), Some((11, 3)));
    }

    #[test]
    fn a_missing_key_gives_the_deepest_part_that_exists() {
        assert_eq!(of_key(TEXT, "rules[1].methods"), Some((12, 1)), "the item's dash");
        assert_eq!(of_key(TEXT, "limits.max_connections"), None);
    }

    #[test]
    fn a_value_is_found_after_its_key_and_never_in_a_comment() {
        assert_eq!(of_text_after(TEXT, 8, "0.0.0.0/0"), Some((8, 33)));
        assert_eq!(of_text_after(TEXT, 1, "0.0.0.0/0"), Some((8, 33)));
    }

    #[test]
    fn an_unclosed_quote_is_found_from_where_the_parser_gave_up() {
        let text = "listen:\n  - addr: \"127.0.0.1:8080\n# a \" in a comment\nupstream:\n  url: \"a\\\"b\"\n";
        assert_eq!(unclosed_quote(text, 5), Some(2));
        assert_eq!(unclosed_quote(text, 1), None, "only lines up to where the parser gave up");
        assert_eq!(
            unclosed_quote(&text.replace("8080\n", "8080\"\n"), 5),
            None,
            "comments and escaped quotes are not openings"
        );
    }

    #[test]
    fn a_block_ends_at_the_next_line_no_deeper_than_its_key() {
        assert_eq!(block_end(TEXT, 6, 1), 9, "client_ip ends at rules");
        assert_eq!(block_end(TEXT, 4, 5), 5, "listen[1].addr ends at its sibling tls");
        assert_eq!(block_end(TEXT, 15, 1), usize::MAX);
    }
}

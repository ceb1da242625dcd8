//! Query parameter names as PHP reads them (main/php_variables.c,
//! `php_register_variable_ex`), so a rule's `query:` matches every spelling the
//! cart would read as that parameter, and two spellings PHP folds together with
//! different values are refused instead of letting the cart pick one.
//!
//! PHP's steps, in order, on the percent-decoded name (`+` is a space):
//! 1. a NUL ends the name (it is handled as a C string);
//! 2. leading spaces are dropped;
//! 3. up to the first `[`, spaces and dots become `_`;
//! 4. an empty name (nothing before the `[`, or nothing at all) is ignored;
//! 5. `name[idx]...` is an array: the top-level name is what came before `[`,
//!    each `[...]` is one key (an empty one appends), and whatever follows a
//!    `]` that is not another `[` is ignored;
//! 6. a `[` without a closing `]` is no array: it becomes `_`, and in the rest
//!    spaces, dots and `[` become `_` too (PHP 8).

use crate::percent::percent_decode;

/// One query parameter as PHP stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhpParam {
    /// The top-level `$_GET` key.
    pub name: String,
    /// Array keys below it (`None` = `[]`, an append); empty for a plain value.
    pub keys: Vec<Option<String>>,
    pub value: Vec<u8>,
    /// The name as sent (before decoding).
    pub raw_name: String,
}

impl PhpParam {
    /// Where PHP stores the value; `None` for an append, which never overwrites.
    pub fn slot(&self) -> Option<String> {
        let mut slot = self.name.clone();
        for k in &self.keys {
            slot.push('[');
            slot.push_str(k.as_deref()?);
            slot.push(']');
        }
        Some(slot)
    }
}

/// Every parameter PHP would register from `query` (`&`-separated), in order;
/// pairs that do not decode or whose name PHP ignores are left out.
pub fn php_params(query: &str) -> impl Iterator<Item = PhpParam> + '_ {
    query.split('&').filter(|p| !p.is_empty()).filter_map(|pair| {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let (name, keys) = fold_name(&form_decode(raw_name)?)?;
        Some(PhpParam { name, keys, value: form_decode(raw_value)?, raw_name: raw_name.to_string() })
    })
}

/// The first parameter name that two different raw names share (same slot) with
/// different values: PHP would keep one of them and the guard cannot know which the cart reads.
pub fn ambiguous_name(query: &str) -> Option<String> {
    let params: Vec<PhpParam> = php_params(query).collect();
    for (i, a) in params.iter().enumerate() {
        let Some(slot) = a.slot() else { continue };
        for b in &params[i + 1..] {
            if b.raw_name != a.raw_name && b.value != a.value && b.slot().as_ref() == Some(&slot) {
                return Some(slot);
            }
        }
    }
    None
}

fn form_decode(raw: &str) -> Option<Vec<u8>> {
    percent_decode(raw.replace('+', " ").as_bytes()).ok()
}

/// PHP's top-level name and array keys for a decoded name; `None` if PHP ignores it.
pub fn fold_name(decoded: &[u8]) -> Option<(String, Vec<Option<String>>)> {
    let cut = decoded.iter().position(|&b| b == 0).unwrap_or(decoded.len());
    let name = &decoded[..cut];
    let start = name.iter().position(|&b| b != b' ').unwrap_or(name.len());
    let name = &name[start..];
    let bracket = name.iter().position(|&b| b == b'[');
    let head: Vec<u8> =
        name[..bracket.unwrap_or(name.len())].iter().map(|&b| if b == b' ' || b == b'.' { b'_' } else { b }).collect();
    if head.is_empty() {
        return None;
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let Some(open) = bracket else {
        return Some((text(&head), Vec::new()));
    };
    let rest = &name[open + 1..];
    let Some(close) = rest.iter().position(|&b| b == b']') else {
        // Not an array: the `[` and, after it, spaces, dots and `[` become `_`.
        let mut folded = head;
        folded.push(b'_');
        folded.extend(rest.iter().map(|&b| if matches!(b, b' ' | b'.' | b'[') { b'_' } else { b }));
        return Some((text(&folded), Vec::new()));
    };
    let mut keys = vec![key(&rest[..close])];
    let mut after = &rest[close + 1..];
    // Further levels only while `[` follows `]` directly and is closed.
    while after.first() == Some(&b'[') {
        let Some(close) = after[1..].iter().position(|&b| b == b']') else { break };
        keys.push(key(&after[1..1 + close]));
        after = &after[close + 2..];
    }
    Some((text(&head), keys))
}

fn key(inner: &[u8]) -> Option<String> {
    (!inner.is_empty()).then(|| String::from_utf8_lossy(inner).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(raw: &str) -> Option<String> {
        php_params(raw).next().map(|p| p.name)
    }

    #[test]
    fn percent_decoding_and_plus_come_first() {
        assert_eq!(top("rest%5Froute=x").as_deref(), Some("rest_route"));
        assert_eq!(top("rest+route=x").as_deref(), Some("rest_route"));
        assert_eq!(top("rest%2Eroute=x").as_deref(), Some("rest_route"));
    }

    #[test]
    fn leading_spaces_are_dropped() {
        assert_eq!(top("++rest_route=x").as_deref(), Some("rest_route"));
        assert_eq!(top("%20rest_route=x").as_deref(), Some("rest_route"));
    }

    #[test]
    fn spaces_and_dots_become_underscores() {
        assert_eq!(top("rest.route=x").as_deref(), Some("rest_route"));
        assert_eq!(top("rest route=x").as_deref(), Some("rest_route"));
        assert_eq!(top("a.b+c=x").as_deref(), Some("a_b_c"));
    }

    #[test]
    fn a_nul_cuts_the_name() {
        assert_eq!(top("rest_route%00junk=x").as_deref(), Some("rest_route"));
        assert_eq!(top("%00rest_route=x"), None, "nothing before the NUL: ignored");
    }

    #[test]
    fn an_unclosed_bracket_becomes_an_underscore_and_so_do_later_dots_spaces_and_brackets() {
        assert_eq!(top("rest[route=x").as_deref(), Some("rest_route"));
        assert_eq!(top("a[b.c d[e=x").as_deref(), Some("a_b_c_d_e"));
        // Dots before the bracket were folded already.
        assert_eq!(top("a.b[c=x").as_deref(), Some("a_b_c"));
    }

    #[test]
    fn array_syntax_names_the_part_before_the_bracket() {
        let p = php_params("rest_route[]=x").next().unwrap();
        assert_eq!((p.name.as_str(), p.keys.clone()), ("rest_route", vec![None]));
        let p = php_params("a.b[c.d][e]junk[f]=x").next().unwrap();
        assert_eq!(p.name, "a_b", "dots inside keys stay; after `]` only `[` continues");
        assert_eq!(p.keys, vec![Some("c.d".to_string()), Some("e".to_string())]);
        assert_eq!(p.slot().as_deref(), Some("a_b[c.d][e]"));
        // A later unclosed level ends the keys; the name is still the array's.
        let p = php_params("a[b][c=x").next().unwrap();
        assert_eq!((p.name.as_str(), p.keys.clone()), ("a", vec![Some("b".to_string())]));
    }

    #[test]
    fn empty_names_are_ignored() {
        assert_eq!(top("=x"), None);
        assert_eq!(top("[a]=x"), None);
        assert_eq!(top("+++=x"), None);
    }

    #[test]
    fn two_spellings_of_one_name_with_different_values_are_ambiguous() {
        assert_eq!(ambiguous_name("rest_route=/wc/v3&rest.route=/wp/v2").as_deref(), Some("rest_route"));
        assert_eq!(ambiguous_name("rest%5Froute=/a&rest_route=/b").as_deref(), Some("rest_route"));
        assert_eq!(ambiguous_name("a[x]=1&a%5Bx%5D=2").as_deref(), Some("a[x]"));
    }

    #[test]
    fn what_php_keeps_apart_is_not_ambiguous() {
        assert_eq!(ambiguous_name("a=1&a=2"), None, "the same raw name repeated: every value is checked");
        assert_eq!(ambiguous_name("rest_route=/wc/&rest.route=/wc/"), None, "same value");
        assert_eq!(ambiguous_name("f[status]=1&f[type]=2"), None);
        assert_eq!(ambiguous_name("a[]=1&a%5B%5D=2"), None, "appends never overwrite");
    }
}

//! Which rule a request falls under: the first whose path prefix, or one of
//! whose query parameters, matches, and whose methods (if any) include the method.

use http::Method;

use super::path::{collapse_slashes, segment_prefix_matches};
use super::Others;

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    /// As written in the config, for display.
    pub path_prefix: String,
    /// Decoded and without its trailing slash (except "/"): what is compared.
    pub prefix: Vec<u8>,
    pub methods: Option<Vec<Method>>,
    pub query: Vec<QueryMatch>,
    /// Indexes into `Policy::groups`, in the order written.
    pub allow: Vec<usize>,
    pub others: Others,
}

/// `query: {rest_route: /wc/}`: also match when this parameter starts with this value.
#[derive(Debug, Clone)]
pub struct QueryMatch {
    pub name: String,
    pub prefix: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchedBy {
    Path,
    /// The parameter name and its (decoded) value that matched.
    Query(String, String),
}

impl Rule {
    pub fn matches(&self, method: &Method, path: &[u8], query: Option<&str>) -> Option<MatchedBy> {
        if let Some(methods) = &self.methods {
            if !methods.contains(method) {
                return None;
            }
        }
        if segment_prefix_matches(&self.prefix, path) {
            return Some(MatchedBy::Path);
        }
        let query = query?;
        for (name, value) in query_pairs(query) {
            for q in &self.query {
                if q.name == name && value_matches(&q.prefix, &value) {
                    return Some(MatchedBy::Query(name, String::from_utf8_lossy(&value).into_owned()));
                }
            }
        }
        None
    }
}

/// Route-like prefixes ("/wc/") match by whole segments after collapsing slashes,
/// others ("api/") as a plain prefix; both ASCII case-insensitive.
fn value_matches(prefix: &[u8], value: &[u8]) -> bool {
    if prefix.first() == Some(&b'/') {
        let collapsed = collapse_slashes(value);
        segment_prefix_matches(prefix, &collapsed)
    } else {
        value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix)
    }
}

/// Stores a route-like prefix the way `segment_prefix_matches` wants it.
pub fn prepare_prefix(text: &str) -> Vec<u8> {
    let collapsed = collapse_slashes(text.as_bytes());
    if collapsed.len() > 1 && collapsed.ends_with(b"/") && collapsed.starts_with(b"/") {
        collapsed[..collapsed.len() - 1].to_vec()
    } else {
        collapsed
    }
}

/// Every `name=value` pair with the name PHP reads (see `php_query`: `rest.route`,
/// ` rest_route`, `rest[route`, `rest_route%00x` and `rest_route[]` are all
/// `rest_route`). Every occurrence is returned, because PHP keeps the last one
/// and the guard must not check only the first.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
    super::php_query::php_params(query).map(|p| (p.name, p.value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: &str, query: &[(&str, &str)], methods: Option<&[&str]>) -> Rule {
        Rule {
            name: "r".into(),
            path_prefix: prefix.into(),
            prefix: prepare_prefix(prefix),
            methods: methods.map(|m| m.iter().map(|s| s.parse().unwrap()).collect()),
            query: query.iter().map(|(n, p)| QueryMatch { name: n.to_string(), prefix: prepare_prefix(p) }).collect(),
            allow: vec![],
            others: Others::Deny,
        }
    }

    #[test]
    fn path_prefix_by_segment() {
        let r = rule("/wp-json/wc/", &[], None);
        assert_eq!(r.matches(&Method::GET, b"/wp-json/wc/v3/orders", None), Some(MatchedBy::Path));
        assert_eq!(r.matches(&Method::GET, b"/wp-json/wc", None), Some(MatchedBy::Path));
        assert_eq!(r.matches(&Method::GET, b"/wp-json/wcx", None), None);
        assert_eq!(r.matches(&Method::GET, b"/wp-json/WC/v3", None), Some(MatchedBy::Path));
    }

    #[test]
    fn query_parameter_matches_every_occurrence() {
        let r = rule("/wp-json/wc/", &[("rest_route", "/wc/")], None);
        let m = |q: &str| r.matches(&Method::GET, b"/", Some(q)).is_some();
        assert!(m("rest_route=/wc/v3/orders"));
        assert!(m("rest_route=%2Fwc%2Fv3%2Forders"));
        assert!(m("rest_route=/wp/v2/posts&rest_route=/wc/v3/orders"));
        assert!(m("rest_route=/wc/v3/orders&rest_route=/wp/v2"));
        assert!(m("rest_route=//wc//v3"));
        assert!(m("rest_route=/WC/v3"));
        assert!(m("rest_route=/wc"));
        assert!(m("rest.route=/wc/v3"));
        assert!(m("rest+route=/wc/v3"));
        assert!(m("+rest_route=/wc/v3"));
        assert!(m("rest_route[]=/wc/v3"));
        assert!(!m("rest_route=/wcx/v3"));
        assert!(!m("rest_route=/wp/v2/wc/"));
        assert!(!m("xrest_route=/wc/v3"));
    }

    #[test]
    fn plain_query_prefix() {
        let r = rule("/admin/api", &[("route", "api/")], None);
        let m = |q: &str| r.matches(&Method::GET, b"/index.php", Some(q)).is_some();
        assert!(m("route=api/sale/order"));
        assert!(m("route=API%2Fsale"));
        assert!(!m("route=common/home"));
    }

    #[test]
    fn methods_must_match_too() {
        let r = rule("/wp-json/wc/", &[("rest_route", "/wc/")], Some(&["POST"]));
        assert_eq!(r.matches(&Method::GET, b"/wp-json/wc/v3", None), None);
        assert_eq!(r.matches(&Method::GET, b"/", Some("rest_route=/wc/v3")), None);
        assert!(r.matches(&Method::POST, b"/wp-json/wc/v3", None).is_some());
    }
}

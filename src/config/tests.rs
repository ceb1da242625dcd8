use super::*;

const BASE: &str = r#"
listen:
  - addr: "127.0.0.1:8080"
upstream:
  url: "http://127.0.0.1:8081"
rules:
  - name: site
    path_prefix: /
    allow: [integration-management]
    others: auth
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(text, Path::new("t.yaml"))
}

fn err(text: &str) -> String {
    parse(text).expect_err("must be rejected").to_string()
}

#[test]
fn the_contract_file_parses_with_every_key() {
    // The contract verbatim, minus files that do not exist here.
    let contract = include_str!("../../tests/fixtures/contract.yaml");
    let c = parse(contract).unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[0].certs.len(), 1);
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.auth.failure_window, Duration::from_secs(600));
    assert_eq!(c.status.expect[0].within, Duration::from_secs(6 * 3600));
    assert_eq!(c.limits.max_body_bytes, 10_485_760);
    assert_eq!(c.policy.rules.len(), 2);
    assert!(c.policy.group_index("office").is_some());
    assert!(c.policy.group_index("integration-management").is_some());
}

#[test]
fn unknown_keys_are_errors_with_line_and_column() {
    let text = BASE.replace("    allow: [integration-management]", "    alow: [integration-management]");
    let e = parse(&text).unwrap_err();
    assert!(e.message.contains("unknown field `alow`"), "{e}");
    assert_eq!(e.line.map(|l| l.0), Some(9), "{e}");
    let e = err(&format!("{BASE}\nlimitz: {{}}\n"));
    assert!(e.contains("limitz"), "{e}");
}

#[test]
fn unknown_group_names_the_rule_and_line() {
    let text = BASE.replace("allow: [integration-management]", "allow: [ofice]");
    let e = parse(&text).unwrap_err();
    assert_eq!(e.key, "rules[0].allow[0]");
    assert_eq!(e.line, Some((9, 13)));
    assert!(e.message.contains("ofice"));
}

#[test]
fn builtin_group_and_redefinition() {
    let c = parse(BASE).unwrap();
    let g = &c.policy.groups[c.integration_group().unwrap()];
    assert!(g.set.contains("50.18.194.14".parse().unwrap()));
    assert!(g.set.contains("54.241.171.180".parse().unwrap()));
    let text = format!("{BASE}groups:\n  integration-management: [\"198.51.100.7/32\"]\n");
    let c = parse(&text).unwrap();
    let g = &c.policy.groups[c.integration_group().unwrap()];
    assert!(g.set.contains("198.51.100.7".parse().unwrap()));
    assert!(!g.set.contains("50.18.194.14".parse().unwrap()));
}

#[test]
fn bad_values_are_errors() {
    let cases = [
        (BASE.replace("/\n    allow", "/api\n    allow"), "last rule"),
        (format!("{BASE}groups:\n  office: [\"300.1.2.3/24\"]\n"), "groups.office[0]"),
        (format!("{BASE}client_ip:\n  trusted_proxies: [\"0.0.0.0/0\"]\n"), "anyone"),
        (format!("{BASE}client_ip:\n  trusted_proxies: [\"::/0\"]\n"), "anyone"),
        (format!("{BASE}auth:\n  failure_window: 10 minutes\n"), "invalid duration"),
        (format!("{BASE}mode: enforcing\n"), "unknown variant"),
        (BASE.replace("others: auth", "others: maybe"), "unknown variant"),
        (BASE.replace("http://127.0.0.1:8081", "ftp://x"), "http://"),
        (BASE.replace("http://127.0.0.1:8081", "http://127.0.0.1:8081/shop"), "path"),
        (BASE.replace("127.0.0.1:8080", "localhost"), "address"),
        (format!("{BASE}users:\n  inline: {{bob: \"$apr1$a$b\"}}\n"), "hash-password"),
        (format!("{BASE}auth:\n  realm: 'a\"b'\n"), "realm"),
        (format!("{BASE}status:\n  expect: [{{group: nope, within: 1h}}]\n"), "unknown group"),
        (BASE.replace("    others: auth", "    methods: [GET]\n    others: auth"), "last rule"),
    ];
    for (text, want) in cases {
        let e = err(&text);
        assert!(e.contains(want), "wanted {want:?} in: {e}");
        assert!(e.starts_with("t.yaml"), "{e}");
    }
}

#[test]
fn catch_all_group_in_allow_is_an_error() {
    let text = format!("{BASE}groups:\n  world: [\"0.0.0.0/0\"]\n")
        .replace("allow: [integration-management]", "allow: [world]");
    assert!(err(&text).contains("admits everyone"));
}

#[test]
fn warnings_for_trusted_proxy_in_allow_group() {
    let text = format!("{BASE}client_ip:\n  trusted_proxies: [\"50.18.194.0/24\"]\n");
    let c = parse(&text).unwrap();
    assert!(c.warnings.iter().any(|w| w.contains("overlaps allow group")), "{:?}", c.warnings);
}

#[test]
fn durations_and_defaults() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.limits.header_timeout, Duration::from_secs(10));
    assert_eq!(c.auth.ban, Duration::from_secs(900));
    assert_eq!(c.status.listen, Some("127.0.0.1:9901".parse().unwrap()));
    assert_eq!(c.log.path, None);
    assert_eq!(c.auth.challenge, "Basic realm=\"Restricted\", charset=\"UTF-8\"");
}

#[test]
fn tls_may_be_a_list() {
    let text = BASE.replace(
        "  - addr: \"127.0.0.1:8080\"\n",
        "  - addr: \"127.0.0.1:8443\"\n    tls:\n      - {cert: a.pem, key: a.key}\n      - {cert: b.pem, key: b.key}\n",
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.listeners[0].certs.len(), 2);
    let bad = BASE.replace(
        "  - addr: \"127.0.0.1:8080\"\n",
        "  - addr: \"127.0.0.1:8443\"\n    tls: {cert: a.pem, kee: a.key}\n",
    );
    assert!(err(&bad).contains("kee"));
}

#[test]
fn unknown_sni_is_default_cert_unless_set_and_only_allowed_on_tls_listeners() {
    let tls = BASE.replace(
        "  - addr: \"127.0.0.1:8080\"\n",
        "  - addr: \"127.0.0.1:8443\"\n    tls: {cert: c.pem, key: k.pem}\n    unknown_sni: reject\n  - addr: \"127.0.0.1:8444\"\n    tls: {cert: c.pem, key: k.pem}\n",
    );
    let c = parse(&tls).unwrap();
    assert_eq!(c.listeners[0].unknown_sni, crate::tls::UnknownSni::Reject);
    assert_eq!(c.listeners[1].unknown_sni, crate::tls::UnknownSni::DefaultCert);
    let plain =
        BASE.replace("  - addr: \"127.0.0.1:8080\"\n", "  - addr: \"127.0.0.1:8080\"\n    unknown_sni: reject\n");
    let e = err(&plain);
    assert!(e.contains("listen[0].unknown_sni") && e.contains("t.yaml:4:"), "{e}");
    assert!(err(&tls.replace("unknown_sni: reject", "unknown_sni: drop")).contains("unknown_sni"));
}

#[test]
fn alert_sinks_are_webhooks_or_commands_with_defaults() {
    let text = format!(
        "{BASE}alerts:\n  sinks:\n    - name: chat\n      webhook: \"https://hooks.example.com/T/B/secret\"\n    - name: mail\n      command: [/usr/sbin/sendmail, -i, owner@example.com]\n      stdin: mail\n      timeout: 30s\n"
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.alerts.repeat_after, Duration::from_secs(3600));
    let chat = &c.alerts.sinks[0];
    assert!(matches!(&chat.target, SinkTarget::Webhook(u) if u.path() == "/T/B/secret"));
    assert_eq!((chat.timeout, chat.retries, chat.backoff), (Duration::from_secs(10), 3, Duration::from_secs(2)));
    let mail = &c.alerts.sinks[1];
    assert!(matches!(&mail.target, SinkTarget::Command { argv, stdin: CommandStdin::Mail } if argv.len() == 3));
    assert_eq!(mail.timeout, Duration::from_secs(30));
    assert!(parse(BASE).unwrap().alerts.sinks.is_empty());
}

#[test]
fn bad_alert_sinks_are_errors_that_never_echo_a_webhook_url() {
    let sink = |body: &str| format!("{BASE}alerts:\n  sinks:\n    - name: s\n{body}");
    let e = err(&sink("      webhook: \"ftp://hooks.example.com/secret\"\n"));
    assert!(e.contains("alerts.sinks[0].webhook") && e.contains("http://"), "{e}");
    assert!(!e.contains("secret"), "the URL is a secret: {e}");
    let e = err(&sink("      webhook: \"http://a/\"\n      command: [x]\n"));
    assert!(e.contains("exactly one of webhook: and command:"), "{e}");
    assert!(err(&sink("      command: []\n")).contains("needs a program"));
    assert!(err(&sink("      command: [x]\n      stdin: xml\n")).contains("json or mail"));
    assert!(err(&sink("      command: [x]\n      shell: true\n")).contains("shell"));
    let twice = format!("{BASE}alerts:\n  sinks:\n    - {{name: a, command: [x]}}\n    - {{name: a, command: [y]}}\n");
    assert!(err(&twice).contains("used twice"));
}

#[test]
fn a_group_file_is_read_relative_to_the_config_and_its_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("partners.txt"), "# partners\n192.0.2.7\n198.51.100.0/24 # B\n").unwrap();
    let text = BASE.replace("allow: [integration-management]", "allow: [partners]")
        + "groups:\n  partners: {file: partners.txt}\n";
    let config = dir.path().join("c.yaml");
    let c = Config::from_yaml(&text, &config).unwrap();
    let g = c.policy.group_index("partners").unwrap();
    assert!(c.policy.groups[g].set.contains("198.51.100.9".parse().unwrap()));
    assert!(!c.policy.groups[g].set.contains("192.0.2.8".parse().unwrap()));
    assert_eq!(c.group_files[0].path, dir.path().join("partners.txt"));
    assert!(c.group_files[0].stamp.is_some());

    std::fs::write(dir.path().join("partners.txt"), "192.0.2.7\n  192.0.2.300\n").unwrap();
    let e = Config::from_yaml(&text, &config).unwrap_err().to_string();
    assert!(e.contains("partners.txt:2:3: groups.partners.file: \"192.0.2.300\""), "{e}");
    std::fs::remove_file(dir.path().join("partners.txt")).unwrap();
    let e = Config::from_yaml(&text, &config).unwrap_err().to_string();
    assert!(e.contains("partners.txt: groups.partners.file: cannot read"), "{e}");
    assert!(err(&format!("{BASE}groups:\n  partners: {{file: a.txt, extra: 1}}\n")).contains("extra"));
}

#[test]
fn a_bad_value_deep_in_a_section_names_its_full_key_and_its_own_line() {
    let e = parse(&format!("{BASE}auth:\n  realm: Shop\n  max_failures: 10\n  ban: 15 minutes\n")).unwrap_err();
    assert_eq!(e.key, "auth.ban", "{e}");
    assert_eq!(e.line, Some((14, 3)), "{e}");
    assert!(e.message.starts_with("invalid duration"), "{e}");
}

#[test]
fn an_error_points_at_the_value_not_at_a_comment_that_mentions_it() {
    let text = format!(
        "# never put 0.0.0.0/0 in trusted_proxies\n{BASE}client_ip:\n  # trusted_proxies: [0.0.0.0/0]\n  trusted_proxies: [10.0.0.0/8, 0.0.0.0/0]\n"
    );
    let e = parse(&text).unwrap_err();
    assert_eq!(e.key, "client_ip.trusted_proxies", "{e}");
    assert_eq!(e.line, Some((14, 33)), "{e}");
}

#[test]
fn a_syntax_error_names_no_key_and_points_at_the_unclosed_quote() {
    let e = parse("listen:\n  - addr: \"127.0.0.1:8080\nupstream:\n  url: \"http://127.0.0.1:8081\"\n").unwrap_err();
    assert_eq!(e.key, "", "{e}");
    assert!(e.message.contains("line 2 opens a quote it never closes"), "{e}");
}

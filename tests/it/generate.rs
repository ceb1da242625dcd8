//! `cartguard generate`: the man pages and shell completions the packages ship,
//! rendered from the clap definitions (packaging/build.sh calls these).

use std::process::Output;

use crate::common::*;

/// Every public subcommand; a new one must show up in the pages and completions by itself.
const SUBCOMMANDS: [&str; 7] = ["run", "check", "reload", "explain", "hash-password", "alert", "status"];

fn generate(args: &[&str]) -> Output {
    let out = cartguard().arg("generate").args(args).output().unwrap();
    assert!(out.status.success(), "generate {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn text(out: Output) -> String {
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_man_page_lists_every_subcommand_and_what_clap_cannot_say() {
    let page = text(generate(&["man"]));
    assert!(page.contains(".TH cartguard 1"), "{page}");
    for sub in SUBCOMMANDS {
        let reference = format!("cartguard\\-{}(1)", sub.replace('-', "\\-"));
        assert!(page.contains(&reference), "no {reference} in the page:\n{page}");
    }
    for extra in [".SH FILES", "/etc/cartguard/cartguard.yaml", ".SH SIGNALS", "SIGUSR1", ".SH EXIT STATUS"] {
        assert!(page.contains(extra), "no {extra} in the page:\n{page}");
    }
    // The packaging command itself, and clap's `help`, get no page.
    assert!(!page.contains("generate") && !page.contains("cartguard\\-help"), "{page}");
    // One roff preamble, not one per section.
    assert_eq!(page.matches(".ds Aq \\(aq").count(), 1, "{page}");
}

#[test]
fn man_pages_are_written_one_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    generate(&["man", "--out", dir.path().to_str().unwrap()]);
    let mut names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let mut expected: Vec<String> = SUBCOMMANDS.iter().map(|s| format!("cartguard-{s}.1")).collect();
    expected.extend(["cartguard.1".to_string(), "cartguard-alert-test.1".to_string()]);
    expected.sort();
    assert_eq!(names, expected);
    let check = std::fs::read_to_string(dir.path().join("cartguard-check.1")).unwrap();
    assert!(check.contains("\\-\\-quiet") && check.contains("\\-\\-config"), "{check}");
}

#[test]
fn bash_completion_offers_every_subcommand_and_their_options() {
    let script = text(generate(&["completions", "bash"]));
    assert!(script.contains("complete -F _cartguard"), "{script}");
    let top = script.lines().find(|l| l.contains("opts=\"-h -V")).expect("no top-level opts= line");
    let words: Vec<&str> = top.trim_start().trim_start_matches("opts=\"").trim_end_matches('"').split(' ').collect();
    for sub in SUBCOMMANDS {
        assert!(words.contains(&sub), "{sub} not offered at the top level: {top}");
    }
    assert!(script.contains("--config") && script.contains("--quiet"), "{script}");
    assert!(!script.contains("generate"), "the packaging command is offered:\n{script}");
}

#[test]
fn zsh_and_fish_completions_get_their_usual_file_names() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, file) in [("zsh", "_cartguard"), ("fish", "cartguard.fish"), ("bash", "cartguard.bash")] {
        let printed = text(generate(&["completions", shell, "--out", dir.path().to_str().unwrap()]));
        assert_eq!(printed.trim(), dir.path().join(file).display().to_string());
        let script = std::fs::read_to_string(dir.path().join(file)).unwrap();
        assert!(script.contains("hash-password") && script.contains("explain"), "{shell}: {script}");
    }
}

//! The /status page as a person sees it: rendered by headless Chromium, which must find the
//! tables and the 24-hour chart in one self-contained page. The screenshot is kept in
//! target/test-artefacts/status-page.png for a human look.

use std::path::Path;
use std::process::Command;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_a_browser_with_chart_and_tables() {
    let Some(chromium) = require_tool("chromium") else { return };
    let g = TestGuard::start().await;
    for _ in 0..3 {
        assert_eq!(integration(&g, "/wp-json/wc/v3/orders").send().await.status, 200);
    }
    assert_eq!(client_from("127.0.0.3").get(g.addr(), "/wp-admin/").send().await.status, 403);
    g.log_lines(4).await;
    let url = format!("http://{}/status", g.admin());
    let artefacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artefacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    let shot = artefacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let browser = |extra: Vec<String>| {
        let mut c = Command::new("timeout");
        c.arg("90").arg(&chromium).args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ]);
        c.arg(format!("--user-data-dir={}", profile.path().display())).args(extra).arg(&url);
        c
    };
    // The guard keeps serving on the other worker while this one waits for the browser.
    let (dom, shot_ok) = tokio::task::block_in_place({
        || {
            let dom = browser(vec!["--dump-dom".into()]).output().unwrap();
            let png = browser(vec![format!("--screenshot={}", shot.display()), "--window-size=1200,1600".into()])
                .output()
                .unwrap();
            (String::from_utf8_lossy(&dom.stdout).into_owned(), png.status.success())
        }
    });
    // What the browser built from the page (after parsing), not the bytes we sent.
    assert!(dom.contains("<svg"), "no chart:\n{dom}");
    assert!(dom.contains("<title>") && dom.contains("served: 3</title>"), "the chart counts 3 served:\n{dom}");
    assert!(dom.contains("<th>group</th>") && dom.contains("integration-management"), "{dom}");
    assert!(dom.contains("Recent refusals") && dom.contains("/wp-admin/"), "{dom}");
    assert!(!dom.contains("<script") && !dom.contains("src=\"http"), "self-contained:\n{dom}");
    assert!(shot_ok, "chromium --screenshot failed");
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
}

//! The status page in a real headless browser (Debian's `chromium`), against the real daemon
//! binary: the endpoint rows and their states, charts that grow, markup from the upstream shown
//! as text, a daemon restart survived, and a screenshot saved as `target/status-page.png`.
//! Skipped, saying so, when chromium is not installed (`.ci/run` installs it).

use std::net::SocketAddr;
use std::time::Duration;

use crate::browser::{chromium, Browser};
use crate::support::process::{daemon_config, stop, write_config, Spawned, BIN};
use crate::support::FakeUpstream;
use crate::{free_port, T};

/// Starts the daemon binary with `config` and waits until its HTTP listener answers.
async fn run_daemon(dir: &std::path::Path, config: &str, http: SocketAddr) -> Spawned {
    let path = write_config(dir, config);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .expect("daemon.log");
    let child = Spawned::new(
        std::process::Command::new(BIN)
            .args(["run", "--config"])
            .arg(path)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn daemon"),
    );
    let deadline = tokio::time::Instant::now() + T;
    while tokio::net::TcpStream::connect(http).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "daemon did not listen on {http}; its log:\n{}",
            std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

/// The page's endpoint rows as `[name, state, reason]`.
const ROWS: &str = "JSON.stringify(Array.from(document.querySelectorAll('#endpoints tbody tr'))\
                    .map(r => [r.dataset.endpoint, r.dataset.state, r.cells[2].textContent]))";

async fn rows(b: &mut Browser) -> Vec<(String, String, String)> {
    let json = b.eval(ROWS).await;
    let rows: Vec<Vec<String>> =
        serde_json::from_str(json.as_str().unwrap_or("[]")).expect("rows JSON");
    rows.into_iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect()
}

async fn points(b: &mut Browser, chart: &str) -> u64 {
    let v = b
        .eval(&format!(
            "Number(document.getElementById('{chart}').dataset.points)"
        ))
        .await;
    v.as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_the_daemon_live_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        eprintln!(
            "SKIPPED the_status_page_shows_the_daemon_live_in_a_real_browser: no chromium at \
             /usr/bin/chromium (apt-get install chromium, or set WS_SIDECAR_CHROMIUM)"
        );
        return;
    };
    // `alpha` is up and busy; `beta`'s upstream refuses every handshake.
    let up = FakeUpstream::start_with_handler(
        |_, _| crate::support::Reply::Accept,
        |conn| {
            tokio::spawn(async move {
                let mut i = 0u64;
                while conn.send_text(&format!("tick {i}")).await.is_ok() {
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        },
    )
    .await;
    let (down, _) = FakeUpstream::start_gated(false, 503).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let endpoints = format!(
        "[endpoints.alpha]\nurl = \"{}\"\n[endpoints.alpha.heartbeat]\nping_interval = \"200ms\"\n\
         [endpoints.beta]\nurl = \"{}\"\n\
         [endpoints.beta.backoff]\ninitial = \"200ms\"\nmax = \"400ms\"\nmin_delay = \"100ms\"\n",
        up.url("/alpha?token=hunter2"),
        down.url("/beta"),
    );
    let config = daemon_config(dir.path(), &endpoints).replace(
        "[http]\nlisten = \"\"",
        &format!("[http]\nlisten = \"{http}\""),
    );
    let daemon = run_daemon(dir.path(), &config, http).await;

    let mut b = Browser::launch(&chromium, 1280, 1100, T).await;
    b.navigate(&format!("http://{http}/"), T).await;
    b.wait_for(
        "both endpoint rows",
        T,
        "document.querySelectorAll('#endpoints tbody tr').length === 2 && \
         document.querySelector('tr[data-endpoint=\"alpha\"]').dataset.state === 'connected' && \
         ['backoff', 'connecting'].includes(\
           document.querySelector('tr[data-endpoint=\"beta\"]').dataset.state)",
    )
    .await;
    let r = rows(&mut b).await;
    assert_eq!(r[0].0, "alpha");
    assert_eq!(r[1].0, "beta");
    assert!(
        r[1].2.contains("503"),
        "beta's reason names the refusal: {r:?}"
    );
    assert_eq!(
        b.eval("document.getElementById('feed').dataset.feed").await,
        "live"
    );
    let text = b.eval("document.body.innerText").await;
    let text = text.as_str().unwrap_or("");
    assert!(!text.contains("hunter2"), "a secret reached the page");
    assert!(text.contains("token=***"), "the redacted URL is shown");

    // The charts gain a point per endpoint and second: read, wait, read again.
    b.wait_for(
        "a message rate and an RTT",
        T,
        "Number(document.getElementById('rate').dataset.points) >= 2 && \
         Number(document.getElementById('rtt').dataset.points) >= 1",
    )
    .await;
    let (rate1, rtt1) = (points(&mut b, "rate").await, points(&mut b, "rtt").await);
    b.wait_for(
        "the charts to grow",
        T,
        &format!(
            "Number(document.getElementById('rate').dataset.points) > {rate1} && \
             Number(document.getElementById('rtt').dataset.points) > {rtt1}"
        ),
    )
    .await;
    let alpha_rate = b
        .eval("Number(document.querySelector('tr[data-endpoint=\"alpha\"]').cells[4].textContent)")
        .await;
    assert!(
        alpha_rate.as_f64().is_some_and(|r| r > 0.0),
        "alpha's rate is shown: {alpha_rate}"
    );
    let changes = b
        .eval("Number(document.getElementById('timeline').dataset.changes)")
        .await;
    assert!(
        changes.as_u64().unwrap_or(0) >= 3,
        "timeline changes: {changes}"
    );

    // Markup in an upstream's close reason is shown as text, never run.
    let conn = up.next_accepted_within(T).await.expect("alpha connected");
    let evil = "<img id=pwn src=x onerror=\"document.title='pwned'\">";
    conn.close(1011, evil).await.expect("close");
    b.wait_for(
        "the close reason in the changes table",
        T,
        &format!(
            "document.getElementById('changes').tBodies[0].textContent.includes({})",
            serde_json::to_string(evil).expect("JSON string")
        ),
    )
    .await;
    assert_eq!(
        b.eval("document.getElementById('pwn') === null").await,
        true
    );
    assert_eq!(b.eval("document.title").await, "ws-sidecar status");
    b.wait_for(
        "alpha back",
        T,
        "document.querySelector('tr[data-endpoint=\"alpha\"]').dataset.state === 'connected'",
    )
    .await;

    let png = b.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("status-page.png");
    std::fs::write(&target, &png).expect("write the screenshot");
    eprintln!("status page screenshot: {}", target.display());

    // A daemon restart: the page notices, then EventSource finds the new daemon by itself.
    tokio::task::spawn_blocking(move || stop(daemon))
        .await
        .expect("daemon stopped");
    b.wait_for(
        "the page to notice the daemon went",
        T,
        "document.getElementById('feed').dataset.feed === 'connecting'",
    )
    .await;
    let daemon = run_daemon(dir.path(), &config, http).await;
    b.wait_for(
        "the page to reconnect to the new daemon",
        T,
        "document.getElementById('feed').dataset.feed === 'live' && \
         document.querySelector('tr[data-endpoint=\"alpha\"]')?.dataset.state === 'connected'",
    )
    .await;
    // The timeline is the new daemon's: the old one's close is not in it.
    b.wait_for(
        "the new daemon's history",
        T,
        "!document.getElementById('changes').tBodies[0].textContent.includes('pwn')",
    )
    .await;
    drop(b);
    tokio::task::spawn_blocking(move || stop(daemon))
        .await
        .expect("daemon stopped");
}

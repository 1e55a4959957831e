//! A headless Chromium driven over the DevTools protocol, with the WebSocket client the project
//! already has (tokio-tungstenite): no browser-automation crate. Started with its own temp
//! profile, no first-run, no background networking, and a host resolver that knows nothing but
//! 127.0.0.1, so a test never touches the internet. Killed with its whole process group on drop.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Where Debian's `chromium` package puts the browser; `WS_SIDECAR_CHROMIUM` overrides it.
const CHROMIUM: &str = "/usr/bin/chromium";

/// A running headless browser with one page attached.
pub struct Browser {
    child: tokio::process::Child,
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
    /// The attached page's session (flat mode): every page command carries it.
    session: String,
    _profile: tempfile::TempDir,
}

/// The browser to run, or `None` when it is not installed.
pub fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("WS_SIDECAR_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CHROMIUM));
    path.is_file().then_some(path)
}

impl Browser {
    /// Starts `chromium` headless with a `width`×`height` page open on about:blank.
    pub async fn launch(chromium: &Path, width: u32, height: u32, within: Duration) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut cmd = tokio::process::Command::new(chromium);
        cmd.args([
            "--headless",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-sync",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--mute-audio",
            "--hide-scrollbars",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--user-data-dir={}", profile.path().display()));
        // Chromium refuses to run as root with its sandbox on.
        if crate::my_ids().0 == 0 {
            cmd.arg("--no-sandbox");
        }
        cmd.arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn chromium");
        let stderr = child.stderr.take().expect("chromium stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        let ws_url = tokio::time::timeout(within, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return Some(url.trim().to_owned());
                }
                seen.push(line);
            }
            None
        })
        .await;
        let ws_url = match ws_url {
            Ok(Some(url)) => url,
            _ => panic!(
                "chromium printed no DevTools URL; its stderr:\n{}",
                seen.join("\n")
            ),
        };
        // Chromium keeps logging to stderr: drain it so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let host = ws_url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .expect("ws://host:port/… DevTools URL")
            .to_owned();
        let stream = TcpStream::connect(&host)
            .await
            .expect("connect to DevTools");
        let (ws, _) = tokio_tungstenite::client_async(ws_url.as_str(), stream)
            .await
            .expect("DevTools WebSocket handshake");
        let mut b = Browser {
            child,
            ws,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = b
            .call(
                "Target.createTarget",
                json!({ "url": "about:blank" }),
                within,
            )
            .await;
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
                within,
            )
            .await;
        b.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        b.call("Page.enable", json!({}), within).await;
        b.call("Runtime.enable", json!({}), within).await;
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
            within,
        )
        .await;
        b
    }

    /// Sends one command (to the page once attached) and returns its result; events and other
    /// replies in between are skipped.
    async fn call(&mut self, method: &str, params: Value, within: Duration) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send to DevTools");
        let reply = tokio::time::timeout(within, async {
            while let Some(frame) = self.ws.next().await {
                let Ok(Message::Text(text)) = frame else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                if v["id"] == id {
                    return Some(v);
                }
            }
            None
        })
        .await;
        match reply {
            Ok(Some(v)) => {
                assert!(v.get("error").is_none(), "{method} failed: {v}");
                v["result"].clone()
            }
            Ok(None) => panic!("DevTools connection closed during {method}"),
            Err(_) => panic!("no answer to {method} within {within:?}"),
        }
    }

    /// Opens `url` in the page and waits for it to load.
    pub async fn navigate(&mut self, url: &str, within: Duration) {
        self.call("Page.navigate", json!({ "url": url }), within)
            .await;
        self.wait_for(
            "the page to load",
            within,
            "document.readyState === 'complete'",
        )
        .await;
    }

    /// Evaluates `expr` in the page and returns its value (as JSON).
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true }),
                Duration::from_secs(10),
            )
            .await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expr} threw: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is `true`; panics with `what` after `within`.
    pub async fn wait_for(&mut self, what: &str, within: Duration, expr: &str) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.eval(expr).await == json!(true) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited {within:?} for {what} ({expr})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the page as it is drawn now.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
                Duration::from_secs(10),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot is base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium's helpers (renderer, GPU, zygote) share its process group: end them all.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}

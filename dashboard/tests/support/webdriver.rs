//! A small WebDriver client for the browser tests: headless Chromium and
//! chromedriver (Debian's `chromium` and `chromium-driver`), driven over the
//! W3C WebDriver protocol with plain HTTP/1.1 on loopback: no client crate.
//!
//! Both processes are started by the test with `PR_SET_PDEATHSIG`, so they
//! die with the test's thread even when the test binary is killed: Chromium
//! runs with a remote-debugging port and chromedriver attaches to it
//! (`debuggerAddress`), instead of chromedriver launching a browser of its own
//! that would outlive a killed test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The key W3C WebDriver uses for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long any single wait may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// The two binaries, when installed.
pub struct Binaries {
    pub chromium: PathBuf,
    pub chromedriver: PathBuf,
}

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/lib/chromium")]) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Chromium and chromedriver, or what is missing.
pub fn find_binaries() -> Result<Binaries, String> {
    let chromium = on_path(&["chromium", "chromium-browser", "google-chrome"]);
    let chromedriver = on_path(&["chromedriver"]);
    match (chromium, chromedriver) {
        (Some(chromium), Some(chromedriver)) => Ok(Binaries {
            chromium,
            chromedriver,
        }),
        (c, d) => Err(format!(
            "missing {}{}(Debian: apt-get install chromium chromium-driver)",
            if c.is_none() { "chromium " } else { "" },
            if d.is_none() { "chromedriver " } else { "" },
        )),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Spawns `cmd` so that it is killed when the spawning thread exits.
fn spawn_dying_with_us(mut cmd: Command) -> Child {
    // SAFETY: prctl is async-signal-safe and touches only this child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()))
}

/// Waits until something listens on `port`.
fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 exchange with JSON bodies.
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to chromedriver");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .expect("send to chromedriver");
    // Read the head, then exactly the body: chromedriver may keep the
    // connection open whatever the request says.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let split = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = stream.read(&mut buf).expect("read chromedriver's answer");
        assert!(n > 0, "chromedriver closed the connection mid-answer");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut payload = raw[split + 4..].to_vec();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let complete = match length {
            Some(len) => payload.len() >= len,
            None if chunked => payload.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if complete {
            break;
        }
        let n = stream.read(&mut buf).expect("read chromedriver's answer");
        if n == 0 {
            break;
        }
        payload.extend_from_slice(&buf[..n]);
    }
    if chunked {
        payload = dechunk(&payload);
    }
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("an HTTP status");
    let value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
    (status, value)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
}

/// A browser session: headless Chromium driven by chromedriver.
pub struct Browser {
    driver_port: u16,
    session: String,
    chromium: Child,
    chromedriver: Child,
    profile: PathBuf,
}

impl Browser {
    pub fn start(bins: &Binaries) -> Self {
        let profile = std::env::temp_dir().join(format!(
            "cc-dashboard-chromium-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&profile).expect("profile directory");
        let debug_port = free_port();
        let mut chromium = Command::new(&bins.chromium);
        chromium.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,1000",
            "--remote-debugging-address=127.0.0.1",
            &format!("--remote-debugging-port={debug_port}"),
            &format!("--user-data-dir={}", profile.display()),
            "about:blank",
        ]);
        let chromium = spawn_dying_with_us(chromium);
        wait_for_port(debug_port, "chromium");

        let driver_port = free_port();
        let mut driver = Command::new(&bins.chromedriver);
        driver.arg(format!("--port={driver_port}"));
        let chromedriver = spawn_dying_with_us(driver);
        wait_for_port(driver_port, "chromedriver");

        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "goog:chromeOptions": { "debuggerAddress": format!("127.0.0.1:{debug_port}") }
            }}
        });
        let (status, answer) = http(driver_port, "POST", "/session", Some(&caps));
        assert_eq!(status, 200, "new WebDriver session: {answer}");
        let session = answer["value"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        Self {
            driver_port,
            session,
            chromium,
            chromedriver,
            profile,
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let (status, answer) = http(
            self.driver_port,
            method,
            &format!("/session/{}{path}", self.session),
            body.as_ref(),
        );
        if status == 200 {
            Ok(answer["value"].clone())
        } else {
            Err(answer["value"].clone())
        }
    }

    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.cmd(method, path, body.clone())
            .unwrap_or_else(|e| panic!("WebDriver {method} {path} {body:?}: {e}"))
    }

    pub fn goto(&self, url: &str) {
        self.ok("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.ok("GET", "/url", None)
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// The element matching `css`, if there is one now.
    pub fn find(&self, css: &str) -> Option<String> {
        self.cmd(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        )
        .ok()
        .and_then(|v| v[ELEMENT].as_str().map(str::to_owned))
    }

    /// Waits for an element matching `css` to appear.
    pub fn wait_for(&self, css: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(e) = self.find(css) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {css} within {WAIT:?} on {}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `js` (a function body; `arguments` holds `args`) and returns its value.
    pub fn script(&self, js: &str, args: Value) -> Value {
        self.ok(
            "POST",
            "/execute/sync",
            Some(json!({ "script": js, "args": args })),
        )
    }

    /// Runs `js`, which calls `arguments[arguments.length - 1]` with its result.
    pub fn async_script(&self, js: &str, args: Value) -> Value {
        self.ok(
            "POST",
            "/execute/async",
            Some(json!({ "script": js, "args": args })),
        )
    }

    /// Waits until the JS expression `condition` is true; returns how long it took.
    pub fn wait_until(&self, condition: &str) -> Duration {
        let began = Instant::now();
        let js = format!("return !!({condition});");
        loop {
            if self.script(&js, json!([])) == Value::Bool(true) {
                return began.elapsed();
            }
            assert!(
                began.elapsed() < WAIT,
                "not true within {WAIT:?}: {condition} on {}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Clicks an element, first scrolled to the middle of the viewport so that
    /// the sticky header cannot cover it.
    pub fn click(&self, element: &str) {
        self.script(
            "arguments[0].scrollIntoView({ block: 'center' });",
            json!([{ ELEMENT: element }]),
        );
        self.ok(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    pub fn text(&self, element: &str) -> String {
        self.ok("GET", &format!("/element/{element}/text"), None)
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Presses keys one after the other, as a user on the page would.
    pub fn press(&self, keys: &str) {
        let mut actions = Vec::new();
        for c in keys.chars() {
            let key = c.to_string();
            actions.push(json!({ "type": "keyDown", "value": key }));
            actions.push(json!({ "type": "keyUp", "value": key }));
        }
        self.ok(
            "POST",
            "/actions",
            Some(json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": actions }] })),
        );
        self.cmd("DELETE", "/actions", None).ok();
    }

    /// Sends a Chrome DevTools Protocol command (through chromedriver).
    pub fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.ok(
            "POST",
            "/goog/cdp/execute",
            Some(json!({ "cmd": cmd, "params": params })),
        )
    }

    /// Emulates the system's light or dark setting (`prefers-color-scheme`).
    pub fn color_scheme(&self, scheme: &str) {
        self.cdp(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
        );
    }

    /// Saves a PNG of the viewport.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let data = self.ok("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("base64 PNG"))
            .expect("a PNG");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.cmd("DELETE", "", None);
        let _ = self.chromedriver.kill();
        let _ = self.chromium.kill();
        let _ = self.chromedriver.wait();
        let _ = self.chromium.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

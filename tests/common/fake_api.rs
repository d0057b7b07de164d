//! A local HTTP server that answers as a rate-limited API would (GitHub's
//! API cannot be reached from the tests): each request is answered by the
//! reply set for its bearer token (or, without one, its path), and counted.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
pub enum Reply {
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Accept the request and never answer.
    Hang,
}

impl Reply {
    pub fn new(status: u16, headers: &[(&str, &str)], body: &str) -> Self {
        Reply::Answer {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.to_owned(),
        }
    }
}

#[derive(Default)]
struct State {
    replies: HashMap<String, Reply>,
    /// Requests per key, and every header line seen (to check what was sent).
    counts: HashMap<String, usize>,
    header_lines: Vec<String>,
}

pub struct FakeApi {
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FakeApi {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (s, st) = (s.clone(), st.clone());
                std::thread::spawn(move || serve(conn, &s, &st));
            }
        });
        FakeApi { port, state, stop }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sets the reply for a bearer token, or for a path when no token is sent.
    pub fn set(&self, key: &str, reply: Reply) {
        self.state
            .lock()
            .expect("lock")
            .replies
            .insert(key.to_owned(), reply);
    }

    /// Requests seen for a token (or path).
    pub fn count(&self, key: &str) -> usize {
        *self
            .state
            .lock()
            .expect("lock")
            .counts
            .get(key)
            .unwrap_or(&0)
    }

    pub fn header_lines(&self) -> Vec<String> {
        self.state.lock().expect("lock").header_lines.clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(mut conn: TcpStream, state: &Mutex<State>, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_owned();
    let header_lines: Vec<String> = lines
        .take_while(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let token = header_lines.iter().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        if !name.eq_ignore_ascii_case("authorization") {
            return None;
        }
        let value = value.trim();
        Some(
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("token "))
                .unwrap_or(value)
                .to_owned(),
        )
    });
    let key = token.unwrap_or(path);
    let reply = {
        let mut s = state.lock().expect("lock");
        *s.counts.entry(key.clone()).or_default() += 1;
        s.header_lines.extend(header_lines);
        s.replies.get(&key).cloned()
    };
    match reply {
        None => {
            let _ = conn.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
        Some(Reply::Hang) => {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Some(Reply::Answer {
            status,
            headers,
            body,
        }) => {
            let mut out = format!(
                "HTTP/1.1 {status} Fake\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            out.push_str(&body);
            let _ = conn.write_all(out.as_bytes());
        }
    }
}

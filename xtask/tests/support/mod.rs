//! Test helpers shared by the xtask tests: a tiny HTTP server on 127.0.0.1 and fixture builders.
//!
//! The server answers fixed routes, one connection at a time, each with `Connection: close`; it
//! records the paths it was asked for and stops when dropped. Nothing here reaches beyond this
//! machine.

#![allow(dead_code)] // each test file uses a different part of this module

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

/// What the server answers on one path.
#[derive(Clone)]
pub enum Route {
    /// 200 with this body and its exact Content-Length.
    Body(Vec<u8>),
    /// 302 to this location (a path on this server or a full URL).
    Redirect(String),
    /// 200 announcing `claimed_len` bytes but sending only `body`, then closing.
    Truncated { body: Vec<u8>, claimed_len: u64 },
    /// This status with an empty body.
    Status(u16),
}

pub struct TestServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    hits: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts serving `routes` (keys are paths such as `/a.gz`); any other path gets a 404.
    pub fn start(routes: impl IntoIterator<Item = (String, Route)>) -> Self {
        let routes: HashMap<String, Route> = routes.into_iter().collect();
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a port on 127.0.0.1");
        let addr = listener.local_addr().expect("reading the bound address");
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let stop = Arc::clone(&stop);
            let hits = Arc::clone(&hits);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        serve_one(stream, &routes, &hits);
                    }
                }
            })
        };
        TestServer {
            addr,
            stop,
            hits,
            thread: Some(thread),
        }
    }

    /// Full URL of `path` (which starts with `/`) on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The paths requested so far, in order.
    pub fn hits(&self) -> Vec<String> {
        self.hits.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_one(mut stream: TcpStream, routes: &HashMap<String, Route>, hits: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let path = text
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_owned();
    if let Ok(mut hits) = hits.lock() {
        hits.push(path.clone());
    }
    let route = routes.get(&path).cloned().unwrap_or(Route::Status(404));
    let (head, body) = match route {
        Route::Body(body) => (
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n", body.len()),
            body,
        ),
        Route::Redirect(location) => (
            format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n"),
            Vec::new(),
        ),
        Route::Truncated { body, claimed_len } => (
            format!("HTTP/1.1 200 OK\r\nContent-Length: {claimed_len}\r\n"),
            body,
        ),
        Route::Status(code) => (
            format!("HTTP/1.1 {code} Test\r\nContent-Length: 0\r\n"),
            Vec::new(),
        ),
    };
    let _ = stream.write_all(head.as_bytes());
    let _ =
        stream.write_all(b"Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(&body);
    let _ = stream.flush();
}

/// A URL on 127.0.0.1 where nothing listens: the port was bound and released.
pub fn dead_url(path: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a port on 127.0.0.1");
    let addr = listener.local_addr().expect("reading the bound address");
    drop(listener);
    format!("http://{addr}{path}")
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    xtask::verify::to_hex(&Sha256::digest(bytes))
}

pub fn md5_hex(bytes: &[u8]) -> String {
    use md5::Md5;
    xtask::verify::to_hex(&Md5::digest(bytes))
}

/// A raw IDX label file (magic 0x801) holding `labels`.
pub fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&0x0000_0801u32.to_be_bytes());
    bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    bytes.extend_from_slice(labels);
    bytes
}

/// A raw IDX image file (magic 0x803) of `count` images of `rows` x `cols` pixels.
pub fn idx_images(count: usize, rows: usize, cols: usize, pixels: &[u8]) -> Vec<u8> {
    assert_eq!(pixels.len(), count * rows * cols);
    let mut bytes = Vec::new();
    for value in [0x0000_0803u32, count as u32, rows as u32, cols as u32] {
        bytes.extend_from_slice(&value.to_be_bytes());
    }
    bytes.extend_from_slice(pixels);
    bytes
}

/// Every entry of `dir` (names only, sorted); empty when the folder does not exist.
pub fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

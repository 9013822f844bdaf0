//! A server on `127.0.0.1:0` that answers every HTTP/1.1 request with one canned response and
//! closes the connection: a stand-in for "some other server" at meshctl's `--server` (a web
//! server's 404 page, a server error with control bytes in it, a 413 sent before the body was
//! read). Plain threads and sockets, no HTTP library.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

pub struct CannedHttp {
    pub addr: SocketAddr,
}

impl CannedHttp {
    /// Answers `status` (e.g. `404 Not Found`) with `content_type` and `body`. With
    /// `read_body: false` it answers as soon as the request's head is read and closes the
    /// connection with the body unread (as a server refusing a too-large body may).
    pub fn start(status: &str, content_type: &str, body: &[u8], read_body: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let mut response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(body);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let response = response.clone();
                std::thread::spawn(move || answer(stream, &response, read_body));
            }
        });
        Self { addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn answer(mut stream: TcpStream, response: &[u8], read_body: bool) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    if read_body {
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let length = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let _ = std::io::copy(&mut (&mut stream).take(length), &mut std::io::sink());
    }
    let _ = stream.write_all(response);
    let _ = stream.flush();
}

//! A loopback HTTP/1.1 server for tests: records every request and answers as scripted,
//! including a response that drips one byte a second.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// How the server answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// A fixed status and body.
    Respond(u16, String),
    /// 200 with a 1000-byte body announced, then one byte a second.
    Drip,
    /// Reflects the request's `authorization` back, as debug endpoints and error pages do:
    /// in a response header, and in a chunked body (sent in small pieces) raw, base64, hex,
    /// percent-encoded and JSON-escaped.
    Echo,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A running server; it stops when the test's runtime ends.
pub struct TestServer {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    pub async fn start(behaviour: Behaviour) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let record = record.clone();
                let behaviour = behaviour.clone();
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut socket).await else {
                        return;
                    };
                    record.lock().unwrap().push(request);
                    match behaviour {
                        Behaviour::Respond(status, body) => {
                            let head = format!(
                                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = socket.write_all(head.as_bytes()).await;
                            let _ = socket.write_all(body.as_bytes()).await;
                        }
                        Behaviour::Echo => {
                            use base64::Engine as _;
                            let auth = request_header(&record, "authorization");
                            let value = auth.strip_prefix("Bearer ").unwrap_or(&auth).to_string();
                            let body = format!(
                                "you sent: {auth}\nb64: {}\nb64url: {}\nhex: {}\nHEX: {}\npct: {}\njson: {}\n",
                                base64::engine::general_purpose::STANDARD
                                    .encode(format!("u:{value}")),
                                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&value),
                                hex::encode(&value),
                                hex::encode_upper(&value),
                                value
                                    .bytes()
                                    .map(|b| format!("%{b:02X}"))
                                    .collect::<String>(),
                                serde_json::to_string(&value).unwrap_or_default(),
                            );
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-echo: {auth}\r\nconnection: close\r\n\r\n"
                            );
                            let _ = socket.write_all(head.as_bytes()).await;
                            for piece in body.as_bytes().chunks(7) {
                                let chunk = format!("{:x}\r\n", piece.len());
                                let _ = socket.write_all(chunk.as_bytes()).await;
                                let _ = socket.write_all(piece).await;
                                let _ = socket.write_all(b"\r\n").await;
                                let _ = socket.flush().await;
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                            let _ = socket.write_all(b"0\r\n\r\n").await;
                        }
                        Behaviour::Drip => {
                            let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\nconnection: close\r\n\r\n";
                            let _ = socket.write_all(head.as_bytes()).await;
                            for _ in 0..1000 {
                                if socket.write_all(b"x").await.is_err() {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                    let _ = socket.shutdown().await;
                });
            }
        });
        TestServer { port, seen }
    }

    /// Requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }
}

/// A header of the last request recorded.
fn request_header(record: &Mutex<Vec<Seen>>, name: &str) -> String {
    record
        .lock()
        .unwrap()
        .last()
        .and_then(|r| r.header(name).map(str::to_string))
        .unwrap_or_default()
}

async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Seen> {
    let (method, target, headers, body) = crate::standin::read_raw(socket).await?;
    Some(Seen {
        method,
        target,
        headers,
        body,
    })
}

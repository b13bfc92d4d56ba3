//! cargo-fuzz target: the webhook client's answer (`egress_http::Client::post_json`, reqwest and
//! hyper underneath). Each input is written, byte for byte, as the whole answer of a stand-in
//! webhook on 127.0.0.1 to one real POST, and the connection is closed. Asserted:
//!
//! - an accepted answer has a three-digit status (100..=999), a `body_start` of at most 200
//!   characters with no control characters, and a `retry_after` only when the answer names it;
//! - a refused answer's error, in Display and in Debug, never holds the webhook URL's secret path.
//!
//! No allocation guard here (hyper's own buffers are hyper's business); our code reads at most 512
//! bytes of body.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use egress_http::{Client, Proxy, WebhookUrl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SECRET: &str = "T0FUZZ/B0FUZZ/xoxSECRETpath";

struct Env {
    rt: tokio::runtime::Runtime,
    listener: TcpListener,
    client: Client,
    url: WebhookUrl,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("a loopback port");
        let port = listener.local_addr().expect("bound").port();
        let url = WebhookUrl::parse(&format!("http://127.0.0.1:{port}/services/{SECRET}")).expect("url");
        let client = Client::new(Proxy::Direct).expect("client");
        Env {
            rt,
            listener,
            client,
            url,
        }
    })
}

/// Reads the POST (head and its 2-byte body) so the client is not cut off while sending.
async fn read_request(s: &mut tokio::net::TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.ends_with(b"\r\n\r\n{}") && buf.len() < 16 * 1024 {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let e = env();
    let result = e.rt.block_on(async {
        let serve = async {
            if let Ok((mut s, _)) = e.listener.accept().await {
                let _ = tokio::time::timeout(Duration::from_secs(1), read_request(&mut s)).await;
                let _ = s.write_all(data).await;
                let _ = s.shutdown().await;
            }
        };
        let post = e.client.post_json(&e.url, b"{}", Duration::from_secs(2));
        tokio::join!(serve, post).1
    });
    match result {
        Ok(r) => {
            assert!((100..=999).contains(&r.status), "status {}", r.status);
            assert!(r.body_start.chars().count() <= 200, "body_start {:?}", r.body_start);
            assert!(
                !r.body_start.chars().any(char::is_control),
                "control characters in {:?}",
                r.body_start
            );
            if r.retry_after.is_some() {
                let lower = String::from_utf8_lossy(data).to_ascii_lowercase();
                assert!(lower.contains("retry-after"), "retry_after without the header");
            }
        }
        Err(err) => {
            for text in [err.to_string(), format!("{err:?}")] {
                assert!(!text.contains("SECRET"), "the secret path in an error: {text}");
            }
        }
    }
});

//! A small client for HAProxy's runtime API (the admin socket, unix or TCP): one command per
//! connection, the answer read to EOF under a deadline and a size cap.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::RuntimeApiAddr;

/// Largest answer read (a `show servers state` line is ~200 bytes; 10,000 servers fit easily).
pub const MAX_ANSWER: usize = 32 * 1024 * 1024;

/// A runtime-API failure.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeApiError {
    /// Connect, write or read failed.
    #[error("runtime API I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The deadline passed.
    #[error("runtime API command timed out")]
    Timeout,
    /// The answer exceeded [`MAX_ANSWER`].
    #[error("runtime API answer larger than {MAX_ANSWER} bytes")]
    TooLarge,
    /// The command contains a line break (it would smuggle a second command).
    #[error("runtime API command must be one line")]
    BadCommand,
    /// HAProxy answered with an error or an unexpected format.
    #[error("runtime API answer: {0}")]
    Answer(String),
}

/// Where to send commands, and the deadline for each.
#[derive(Clone, Debug)]
pub struct RuntimeApi {
    addr: RuntimeApiAddr,
    timeout: Duration,
}

impl RuntimeApi {
    /// A client for `addr`; each command must complete within `timeout`.
    pub fn new(addr: RuntimeApiAddr, timeout: Duration) -> Self {
        RuntimeApi { addr, timeout }
    }

    /// Send one command and return the whole answer.
    pub async fn command(&self, cmd: &str) -> Result<String, RuntimeApiError> {
        if cmd.contains(['\n', '\r']) {
            return Err(RuntimeApiError::BadCommand);
        }
        let run = async {
            match &self.addr {
                RuntimeApiAddr::Unix(path) => {
                    exchange(tokio::net::UnixStream::connect(path).await?, cmd).await
                }
                RuntimeApiAddr::Tcp(addr) => exchange(tokio::net::TcpStream::connect(addr).await?, cmd).await,
            }
        };
        tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| RuntimeApiError::Timeout)?
    }

    /// `show servers state <backend>`, parsed.
    pub async fn servers_state(
        &self,
        backend: &str,
    ) -> Result<Vec<HashMap<String, String>>, RuntimeApiError> {
        if !crate::config::valid_name(backend) {
            return Err(RuntimeApiError::BadCommand);
        }
        let text = self.command(&format!("show servers state {backend}")).await?;
        parse_servers_state(&text)
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, cmd: &str) -> Result<String, RuntimeApiError> {
    // Without "prompt" mode HAProxy answers one command and closes (management.txt §9.3).
    s.write_all(format!("{cmd}\n").as_bytes()).await?;
    let mut out = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        if out.len() + n > MAX_ANSWER {
            return Err(RuntimeApiError::TooLarge);
        }
        out.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(out).map_err(|_| RuntimeApiError::Answer("not UTF-8".into()))
}

/// Parse `show servers state` (format version 1) into one map per server, keyed by the header's
/// column names (`be_name`, `srv_name`, `srv_addr`, `srv_port`, `srv_op_state`, ...), so columns
/// added by later HAProxy versions do not break us.
pub fn parse_servers_state(text: &str) -> Result<Vec<HashMap<String, String>>, RuntimeApiError> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let version = lines
        .next()
        .ok_or_else(|| RuntimeApiError::Answer("empty answer".into()))?
        .trim();
    if version != "1" {
        return Err(RuntimeApiError::Answer(format!(
            "unsupported servers-state format {version:?}"
        )));
    }
    let header = lines
        .next()
        .ok_or_else(|| RuntimeApiError::Answer("no header".into()))?;
    let header: Vec<&str> = header
        .strip_prefix('#')
        .ok_or_else(|| RuntimeApiError::Answer("header does not start with #".into()))?
        .split_whitespace()
        .collect();
    let mut rows = Vec::new();
    for line in lines {
        if line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Every row carries every header column ("-" when empty): a shorter row is a cut-off dump
        // (HAProxy reloading), and a partial server list would make the checker forget servers.
        if fields.len() < header.len() {
            return Err(RuntimeApiError::Answer(format!(
                "short line ({} of {} columns): {line:?}",
                fields.len(),
                header.len()
            )));
        }
        rows.push(
            header
                .iter()
                .zip(fields)
                .map(|(h, v)| ((*h).to_owned(), v.to_owned()))
                .collect(),
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 egress 1 s1 127.0.0.1 2 0 100 100 4 6 3 4 6 0 0 0 - 3128 - 0 0 - 127.0.0.1 5555\n3 egress 2 s2 127.0.0.2 0 8 100 100 1 6 3 0 6 0 0 0 - 3129 - 0 0 - 127.0.0.1 5555\n\n";

    #[test]
    fn parses_by_header_name() {
        let rows = parse_servers_state(SAMPLE).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["srv_name"], "s1");
        assert_eq!(rows[1]["srv_addr"], "127.0.0.2");
        assert_eq!(rows[1]["srv_port"], "3129");
        assert_eq!(rows[1]["srv_admin_state"], "8");
    }

    #[test]
    fn refuses_unknown_formats() {
        assert!(parse_servers_state("").is_err());
        assert!(parse_servers_state("2\n# a b\n").is_err());
        assert!(parse_servers_state("1\nbe_id be_name\n").is_err());
        assert!(parse_servers_state("Unknown command\n").is_err());
        assert_eq!(parse_servers_state("1\n# be_id be_name\n").unwrap().len(), 0);
    }

    #[test]
    fn a_cut_off_row_fails_the_whole_answer() {
        // A dump cut short (HAProxy reloading): the last row lost its trailing columns.
        let cut = SAMPLE.trim_end().trim_end_matches(" - 127.0.0.1 5555");
        let err = parse_servers_state(cut).unwrap_err().to_string();
        assert!(err.contains("short line (22 of 25 columns)"), "{err}");
    }

    #[tokio::test]
    async fn command_over_tcp_with_cap_and_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            // First connection answers; the second never answers.
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 64];
            let n = s.read(&mut b).await.unwrap();
            assert_eq!(&b[..n], b"show servers state egress\n");
            s.write_all(SAMPLE.as_bytes()).await.unwrap();
            drop(s);
            let (_s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let api = RuntimeApi::new(RuntimeApiAddr::Tcp(addr), Duration::from_millis(300));
        assert_eq!(api.servers_state("egress").await.unwrap().len(), 2);
        assert!(matches!(
            api.command("show info").await,
            Err(RuntimeApiError::Timeout)
        ));
        assert!(matches!(
            api.command("a\nb").await,
            Err(RuntimeApiError::BadCommand)
        ));
    }
}

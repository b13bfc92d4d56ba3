//! The client for HAProxy's runtime API (the admin socket, unix or TCP): one command per
//! connection, the answer read to EOF under a deadline and a size cap.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::addr::{RuntimeApiAddr, valid_name};

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

impl RuntimeApiError {
    /// A short, stable label for this error's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io(_) => "io",
            Self::Timeout => "timeout",
            Self::TooLarge => "too_large",
            Self::BadCommand => "bad_command",
            Self::Answer(_) => "answer",
        }
    }

    /// True when HAProxy could not be reached or did not answer in time (connect refused, reset,
    /// name resolution, the deadline): the instance may answer later. A Unix socket path that does
    /// not exist is not: the address names nothing, which is the configuration's error.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Io(e) => e.kind() != std::io::ErrorKind::NotFound,
            Self::Timeout => true,
            Self::TooLarge | Self::BadCommand | Self::Answer(_) => false,
        }
    }
}

/// One row of a runtime-API table (`show servers state`, `show stat`): column name → value, as
/// HAProxy printed it.
pub type Row = HashMap<String, String>;

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
        check_command(cmd)?;
        let run = async {
            match &self.addr {
                RuntimeApiAddr::Unix(path) => {
                    exchange(tokio::net::UnixStream::connect(path).await?, cmd).await
                }
                RuntimeApiAddr::Tcp(addr) => exchange(tokio::net::TcpStream::connect(addr).await?, cmd).await,
                RuntimeApiAddr::TcpHost(host, port) => {
                    exchange(tokio::net::TcpStream::connect((host.as_str(), *port)).await?, cmd).await
                }
            }
        };
        tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| RuntimeApiError::Timeout)?
    }

    /// `show servers state <backend>`, parsed.
    pub async fn servers_state(&self, backend: &str) -> Result<Vec<Row>, RuntimeApiError> {
        if !valid_name(backend) {
            return Err(RuntimeApiError::BadCommand);
        }
        let text = self.command(&format!("show servers state {backend}")).await?;
        parse_servers_state(&text)
    }
}

/// One command per line: a line break would smuggle a second command.
fn check_command(cmd: &str) -> Result<(), RuntimeApiError> {
    if cmd.contains(['\n', '\r']) {
        Err(RuntimeApiError::BadCommand)
    } else {
        Ok(())
    }
}

/// The answer so far, checked against [`MAX_ANSWER`] as each chunk arrives.
#[derive(Default)]
struct Answer(Vec<u8>);

impl Answer {
    fn push(&mut self, chunk: &[u8]) -> Result<(), RuntimeApiError> {
        if self.0.len() + chunk.len() > MAX_ANSWER {
            return Err(RuntimeApiError::TooLarge);
        }
        self.0.extend_from_slice(chunk);
        Ok(())
    }

    fn text(self) -> Result<String, RuntimeApiError> {
        String::from_utf8(self.0).map_err(|_| RuntimeApiError::Answer("not UTF-8".into()))
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, cmd: &str) -> Result<String, RuntimeApiError> {
    // Without "prompt" mode HAProxy answers one command and closes (management.txt §9.3).
    s.write_all(format!("{cmd}\n").as_bytes()).await?;
    let mut out = Answer::default();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        out.push(&chunk[..n])?;
    }
    out.text()
}

/// The same exchange without a runtime, for programs that block (the test harness, the lab): one
/// command, the answer read to EOF, each read and write bounded by `timeout`.
pub fn command_blocking(
    addr: &RuntimeApiAddr,
    cmd: &str,
    timeout: Duration,
) -> Result<String, RuntimeApiError> {
    use std::io::{Read, Write};
    fn run<S: Read + Write>(mut s: S, cmd: &str) -> Result<String, RuntimeApiError> {
        s.write_all(format!("{cmd}\n").as_bytes())?;
        let mut out = Answer::default();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => out.push(&chunk[..n])?,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(RuntimeApiError::Timeout);
                }
                Err(e) => return Err(e.into()),
            }
        }
        out.text()
    }
    check_command(cmd)?;
    let t = Some(timeout);
    match addr {
        RuntimeApiAddr::Unix(path) => {
            let s = std::os::unix::net::UnixStream::connect(path)?;
            s.set_read_timeout(t)?;
            s.set_write_timeout(t)?;
            run(s, cmd)
        }
        RuntimeApiAddr::Tcp(a) => {
            let s = std::net::TcpStream::connect_timeout(a, timeout)?;
            s.set_read_timeout(t)?;
            s.set_write_timeout(t)?;
            run(s, cmd)
        }
        RuntimeApiAddr::TcpHost(h, p) => {
            let s = std::net::TcpStream::connect((h.as_str(), *p))?;
            s.set_read_timeout(t)?;
            s.set_write_timeout(t)?;
            run(s, cmd)
        }
    }
}

/// Parse `show servers state` (format version 1) into one map per server, keyed by the header's
/// column names (`be_name`, `srv_name`, `srv_addr`, `srv_port`, `srv_op_state`, ...), so columns
/// added by later HAProxy versions do not break us.
pub fn parse_servers_state(text: &str) -> Result<Vec<Row>, RuntimeApiError> {
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

/// One row of `show stat` (management.txt §9.1), typed where the rotator and checker need it.
/// Columns are found by the header's names, so column order and added columns do not matter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatRow {
    /// `pxname`.
    pub proxy: String,
    /// `svname` (`FRONTEND`, `BACKEND` or a server name).
    pub name: String,
    /// `scur`: current sessions (0 when empty).
    pub scur: u64,
    /// `status`: UP, DOWN, MAINT, DRAIN, "DOWN (agent)", ...
    pub status: String,
    /// `weight`: effective weight (0 when empty).
    pub weight: u64,
    /// `addr`, when the column exists and is set.
    pub addr: Option<String>,
    /// Every column by name, as HAProxy printed it.
    pub fields: Row,
}

/// Parse `show stat` CSV: the first line is `# col,col,...`; every other non-empty line is one row.
/// Never panics; a row with fewer fields than the header, a missing `pxname`/`svname`/`scur`/`status`
/// column, or a non-numeric `scur` is an error (a cut-off dump must not read as "0 sessions").
pub fn parse_show_stat(text: &str) -> Result<Vec<StatRow>, RuntimeApiError> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .ok_or_else(|| RuntimeApiError::Answer("empty show stat answer".into()))?;
    let header: Vec<&str> = header
        .strip_prefix("# ")
        .or_else(|| header.strip_prefix('#'))
        .ok_or_else(|| {
            RuntimeApiError::Answer(format!("show stat header expected, got {:?}", truncate(header)))
        })?
        .split(',')
        .collect();
    {
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = header.iter().find(|h| !h.is_empty() && !seen.insert(**h)) {
            return Err(RuntimeApiError::Answer(format!(
                "show stat header names {:?} twice",
                truncate(dup)
            )));
        }
    }
    let col = |name: &str| header.iter().position(|h| *h == name);
    let need = |name: &str| {
        col(name).ok_or_else(|| RuntimeApiError::Answer(format!("show stat has no {name} column")))
    };
    let (px, sv, scur, status) = (need("pxname")?, need("svname")?, need("scur")?, need("status")?);
    let (weight, addr) = (col("weight"), col("addr"));
    let mut rows = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        // HAProxy ends every line with a trailing comma, so rows carry one more empty field than
        // the header names; fewer than the header is a cut-off line.
        if fields.len() < header.len() {
            return Err(RuntimeApiError::Answer(format!(
                "short show stat line ({} of {} columns): {:?}",
                fields.len(),
                header.len(),
                truncate(line)
            )));
        }
        let num = |i: usize, name: &str| -> Result<u64, RuntimeApiError> {
            let v = fields[i];
            if v.is_empty() {
                return Ok(0);
            }
            v.parse().map_err(|_| {
                RuntimeApiError::Answer(format!("show stat {name} {:?} is not a number", truncate(v)))
            })
        };
        rows.push(StatRow {
            proxy: fields[px].to_owned(),
            name: fields[sv].to_owned(),
            scur: num(scur, "scur")?,
            status: fields[status].to_owned(),
            weight: match weight {
                Some(i) => num(i, "weight")?,
                None => 0,
            },
            addr: addr
                .map(|i| fields[i])
                .filter(|a| !a.is_empty())
                .map(str::to_owned),
            fields: header
                .iter()
                .zip(&fields)
                .filter(|(h, _)| !h.is_empty())
                .map(|(h, v)| ((*h).to_owned(), (*v).to_owned()))
                .collect(),
        });
    }
    Ok(rows)
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// `srv_admin_state` bits meaning "in maintenance" (FMAINT, IMAINT, CMAINT, RMAINT, HMAINT;
/// HAProxy's server.h).
pub const ADMIN_MAINT_BITS: u32 = 0x01 | 0x02 | 0x04 | 0x20 | 0x40;
/// `srv_admin_state` bits meaning "draining" (FDRAIN, IDRAIN).
pub const ADMIN_DRAIN_BITS: u32 = 0x08 | 0x10;

/// A server's admin state as `set server ... state` sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminState {
    /// Takes traffic (clears drain and maint).
    Ready,
    /// No new connections; existing ones go on.
    Drain,
    /// No traffic and no health checks.
    Maint,
}

impl AdminState {
    /// The word in `set server <b>/<s> state <word>`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }

    /// From a `show servers state` row's `srv_admin_state` (a bitmask); `None` when unparsable.
    pub fn from_servers_state_row(row: &Row) -> Option<AdminState> {
        let bits: u32 = row.get("srv_admin_state")?.parse().ok()?;
        Some(if bits & ADMIN_MAINT_BITS != 0 {
            AdminState::Maint
        } else if bits & ADMIN_DRAIN_BITS != 0 {
            AdminState::Drain
        } else {
            AdminState::Ready
        })
    }
}

/// The CLI's answer to a state-changing command: empty on success, otherwise HAProxy's message.
fn expect_empty(cmd: &str, answer: &str) -> Result<(), RuntimeApiError> {
    let a = answer.trim();
    if a.is_empty() {
        Ok(())
    } else {
        Err(RuntimeApiError::Answer(format!("{cmd}: {a}")))
    }
}

impl RuntimeApi {
    /// The address this client talks to.
    pub fn addr(&self) -> &RuntimeApiAddr {
        &self.addr
    }

    /// `show stat`, parsed.
    pub async fn show_stat(&self) -> Result<Vec<StatRow>, RuntimeApiError> {
        parse_show_stat(&self.command("show stat").await?)
    }

    /// `show cli level`: `admin`, `operator` or `user`.
    pub async fn cli_level(&self) -> Result<String, RuntimeApiError> {
        Ok(self.command("show cli level").await?.trim().to_owned())
    }

    /// Fail unless this socket runs at `level admin` (needed for `set server` and `shutdown sessions`).
    pub async fn require_admin(&self) -> Result<(), RuntimeApiError> {
        let level = self.cli_level().await?;
        if level == "admin" {
            Ok(())
        } else {
            Err(RuntimeApiError::Answer(format!(
                "the socket runs at level {level:?}; rotation needs `stats socket ... level admin`"
            )))
        }
    }

    /// The `show servers state` row of one server, `None` when HAProxy does not know it.
    pub async fn server_state(&self, backend: &str, server: &str) -> Result<Option<Row>, RuntimeApiError> {
        if !valid_name(server) {
            return Err(RuntimeApiError::BadCommand);
        }
        Ok(self
            .servers_state(backend)
            .await?
            .into_iter()
            .find(|r| r.get("srv_name").map(String::as_str) == Some(server)))
    }

    /// `set server <b>/<s> state <state>`.
    pub async fn set_state(
        &self,
        backend: &str,
        server: &str,
        state: AdminState,
    ) -> Result<(), RuntimeApiError> {
        let cmd = format!(
            "set server {} state {}",
            server_ref(backend, server)?,
            state.as_str()
        );
        expect_empty(&cmd, &self.command(&cmd).await?)
    }

    /// `shutdown sessions server <b>/<s>`: kills every stream on the server.
    pub async fn shutdown_sessions(&self, backend: &str, server: &str) -> Result<(), RuntimeApiError> {
        let cmd = format!("shutdown sessions server {}", server_ref(backend, server)?);
        expect_empty(&cmd, &self.command(&cmd).await?)
    }

    /// The server's current sessions (`scur` of its `show stat` row).
    pub async fn scur(&self, backend: &str, server: &str) -> Result<u64, RuntimeApiError> {
        self.show_stat()
            .await?
            .into_iter()
            .find(|r| r.proxy == backend && r.name == server)
            .map(|r| r.scur)
            .ok_or_else(|| RuntimeApiError::Answer(format!("show stat has no row for {backend}/{server}")))
    }
}

fn server_ref(backend: &str, server: &str) -> Result<String, RuntimeApiError> {
    if valid_name(backend) && valid_name(server) {
        Ok(format!("{backend}/{server}"))
    } else {
        Err(RuntimeApiError::BadCommand)
    }
}

/// Several HAProxy instances that must agree (an HA pair, every replica in Kubernetes): every
/// command goes to all of them, and any one failing fails the call, naming the instance.
#[derive(Clone, Debug)]
pub struct Fleet {
    instances: Vec<RuntimeApi>,
}

/// A fleet failure: which instance, and why.
#[derive(Debug, thiserror::Error)]
#[error("HAProxy instance {instance}: {source}")]
pub struct FleetError {
    /// The instance's address, as configured.
    pub instance: String,
    /// The cause.
    #[source]
    pub source: RuntimeApiError,
}

impl Fleet {
    /// A fleet of these instances (at least one).
    pub fn new(instances: Vec<RuntimeApi>) -> Self {
        Fleet { instances }
    }

    /// The instances.
    pub fn instances(&self) -> &[RuntimeApi] {
        &self.instances
    }

    fn err(api: &RuntimeApi, source: RuntimeApiError) -> FleetError {
        FleetError {
            instance: api.addr().to_string(),
            source,
        }
    }

    /// Every instance reachable, at level admin, and knowing `backend/server`; nothing is changed.
    /// Returns each instance's admin state of the server.
    pub async fn preflight(&self, backend: &str, server: &str) -> Result<Vec<AdminState>, FleetError> {
        let mut states = Vec::new();
        for api in &self.instances {
            api.require_admin().await.map_err(|e| Self::err(api, e))?;
            let row = api
                .server_state(backend, server)
                .await
                .map_err(|e| Self::err(api, e))?
                .ok_or_else(|| {
                    Self::err(
                        api,
                        RuntimeApiError::Answer(format!("HAProxy has no server {backend}/{server}")),
                    )
                })?;
            states.push(AdminState::from_servers_state_row(&row).unwrap_or(AdminState::Ready));
        }
        Ok(states)
    }

    /// `set server ... state` on every instance (all are tried; the first failure is returned).
    pub async fn set_state(&self, backend: &str, server: &str, state: AdminState) -> Result<(), FleetError> {
        let mut first = None;
        for api in &self.instances {
            if let Err(e) = api.set_state(backend, server, state).await {
                first.get_or_insert(Self::err(api, e));
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// `shutdown sessions server` on every instance.
    pub async fn shutdown_sessions(&self, backend: &str, server: &str) -> Result<(), FleetError> {
        let mut first = None;
        for api in &self.instances {
            if let Err(e) = api.shutdown_sessions(backend, server).await {
                first.get_or_insert(Self::err(api, e));
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The server's sessions summed over every instance.
    pub async fn scur(&self, backend: &str, server: &str) -> Result<u64, FleetError> {
        let mut total = 0;
        for api in &self.instances {
            total += api.scur(backend, server).await.map_err(|e| Self::err(api, e))?;
        }
        Ok(total)
    }

    /// Poll [`scur`](Self::scur) every `poll` until no instance has a session on the server or
    /// `deadline` passes; returns the sessions left (0: drained). A drain-rotation's wait.
    pub async fn wait_for_no_sessions(
        &self,
        backend: &str,
        server: &str,
        deadline: std::time::Instant,
        poll: Duration,
    ) -> Result<u64, FleetError> {
        loop {
            let n = self.scur(backend, server).await?;
            let now = std::time::Instant::now();
            if n == 0 || now >= deadline {
                return Ok(n);
            }
            tokio::time::sleep(poll.min(deadline.saturating_duration_since(now))).await;
        }
    }
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

    const REAL_SHOW_STAT: &str = include_str!("../tests/fixtures/show_stat_haproxy_2.6.csv");

    #[test]
    fn parses_real_haproxy_2_6_show_stat() {
        let rows = parse_show_stat(REAL_SHOW_STAT).unwrap();
        let names: Vec<(&str, &str)> = rows.iter().map(|r| (r.proxy.as_str(), r.name.as_str())).collect();
        assert_eq!(
            names,
            [
                ("egress", "FRONTEND"),
                ("egress", "s1"),
                ("egress", "s2"),
                ("egress", "BACKEND")
            ]
        );
        let s1 = &rows[1];
        assert_eq!(s1.scur, 0);
        assert_eq!(s1.weight, 100);
        assert_eq!(s1.addr.as_deref(), Some("127.0.0.1:18766"));
        assert_eq!(s1.fields["check_status"], "L4CON");
        assert_eq!(s1.status, "UP 1/3");
        assert_eq!(rows[2].status, "no check");
    }

    #[test]
    fn show_stat_columns_are_found_by_name() {
        let text = "# status,svname,scur,pxname,weight\nUP,s1,7,egress,3,\n";
        let rows = parse_show_stat(text).unwrap();
        assert_eq!(
            (rows[0].proxy.as_str(), rows[0].name.as_str(), rows[0].scur),
            ("egress", "s1", 7)
        );
        assert!(
            parse_show_stat("# pxname,svname,status\nx,y,UP\n")
                .unwrap_err()
                .to_string()
                .contains("scur")
        );
        assert!(
            parse_show_stat("# pxname,svname,scur,status\nx,y,1\n")
                .unwrap_err()
                .to_string()
                .contains("short")
        );
        assert!(parse_show_stat("# pxname,svname,scur,status\nx,y,-1,UP\n").is_err());
        assert!(parse_show_stat("Permission denied\n").is_err());
        assert!(parse_show_stat("").is_err());
        assert!(
            parse_show_stat("# pxname,svname,scur,status,pxname\nx,y,1,UP,z\n")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn admin_state_from_bits() {
        let row = |b: &str| HashMap::from([("srv_admin_state".to_owned(), b.to_owned())]);
        assert_eq!(
            AdminState::from_servers_state_row(&row("0")),
            Some(AdminState::Ready)
        );
        assert_eq!(
            AdminState::from_servers_state_row(&row("1")),
            Some(AdminState::Maint)
        );
        assert_eq!(
            AdminState::from_servers_state_row(&row("8")),
            Some(AdminState::Drain)
        );
        assert_eq!(
            AdminState::from_servers_state_row(&row("9")),
            Some(AdminState::Maint)
        );
        assert_eq!(AdminState::from_servers_state_row(&row("x")), None);
    }

    proptest::proptest! {
        #[test]
        fn show_stat_parser_never_panics(s in ".{0,400}") {
            let _ = parse_show_stat(&s);
        }
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

    #[tokio::test]
    async fn unreachable_is_refused_or_late_never_a_path_that_names_nothing() {
        // A port that was just free: nothing listens, the connect is refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let refused = RuntimeApi::new(RuntimeApiAddr::Tcp(closed), Duration::from_secs(5))
            .command("show info")
            .await
            .unwrap_err();
        assert!(refused.is_unreachable(), "{refused}");
        assert_eq!(refused.kind(), "io");
        assert!(RuntimeApiError::Timeout.is_unreachable());

        let missing = RuntimeApi::new(
            RuntimeApiAddr::Unix("/nonexistent/haproxy.sock".into()),
            Duration::from_secs(5),
        )
        .command("show info")
        .await
        .unwrap_err();
        assert!(!missing.is_unreachable(), "{missing}");
        for answer in [
            RuntimeApiError::Answer("Unknown command".into()),
            RuntimeApiError::TooLarge,
            RuntimeApiError::BadCommand,
        ] {
            assert!(!answer.is_unreachable(), "{answer}");
        }
    }
}

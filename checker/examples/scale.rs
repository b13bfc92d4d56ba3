//! Scale benchmark: N backends at one probe per second each, against a fake CONNECT server listening
//! on many ports (answers `200` to every CONNECT, then closes). Spawns the `egress-checker` binary and
//! reports its CPU (from /proc utime+stime), peak RSS, probe rate and probe-lateness p99 (from its
//! /metrics histogram).
//!
//! ```text
//! cargo build --release -p egress-checker --bins --examples
//! target/release/examples/scale --bin target/release/egress-checker --servers 10000 --ports 1000 --secs 30
//! ```

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use egress_common::http1;
use egress_harness::metrics;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

struct Args {
    bin: String,
    servers: usize,
    ports: usize,
    secs: u64,
}

fn args() -> Args {
    let mut a = Args {
        bin: "target/release/egress-checker".into(),
        servers: 10_000,
        ports: 1000,
        secs: 30,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--bin" => a.bin = v,
            "--servers" => a.servers = v.parse().expect("--servers N"),
            "--ports" => a.ports = v.parse().expect("--ports N"),
            "--secs" => a.secs = v.parse().expect("--secs N"),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

async fn fake_connect_server(l: TcpListener) {
    while let Ok((mut s, _)) = l.accept().await {
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(256);
            let read = http1::read_request_head(&mut s, &mut buf, 1024);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), read).await {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
            }
        });
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" of the command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0 // CLK_TCK is 100 on Linux
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// (upper bound, cumulative count) of a histogram.
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    metrics::samples(text)
        .filter(|s| s.name == bucket)
        .filter_map(|s| {
            let le = match s.label("le")? {
                "+Inf" => f64::INFINITY,
                le => le.parse().ok()?,
            };
            Some((le, s.value))
        })
        .collect()
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut addrs = Vec::new();
    rt.block_on(async {
        for _ in 0..a.ports {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            addrs.push(l.local_addr().unwrap());
            tokio::spawn(fake_connect_server(l));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("scale.toml");
    let mut f = std::fs::File::create(&cfg).unwrap();
    writeln!(
        f,
        "[probe]\ninterval = \"1s\"\nmax_concurrency = 1024\nmax_rate = 20000\n"
    )
    .unwrap();
    // Never dialled: the fake server answers 200 without connecting anywhere.
    writeln!(
        f,
        "[[targets]]\naddress = \"127.0.0.1:9\"\n[[targets]]\naddress = \"127.0.0.1:19\"\n"
    )
    .unwrap();
    for i in 0..a.servers {
        writeln!(
            f,
            "[[backends.servers]]\nbackend = \"egress\"\nname = \"s{i}\"\naddress = \"{}\"",
            addrs[i % addrs.len()]
        )
        .unwrap();
    }
    drop(f);
    let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = std::process::Command::new(&a.bin)
        .arg("--config")
        .arg(&cfg)
        .arg("--log")
        .arg("warn")
        .arg("run")
        .arg("--agent-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--metrics-listen")
        .arg(metrics_addr.to_string())
        .spawn()
        .expect("spawn egress-checker");
    let pid = child.id();
    // Warm up: every server gets its first probes and the schedule settles.
    std::thread::sleep(Duration::from_secs(5));
    let m0 = metrics::scrape(metrics_addr).unwrap_or_default();
    let me = std::process::id();
    let (c0, f0, t0) = (cpu_seconds(pid), cpu_seconds(me), Instant::now());
    let mut peak = 0;
    while t0.elapsed() < Duration::from_secs(a.secs) {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(500));
    }
    let (c1, f1, wall) = (cpu_seconds(pid), cpu_seconds(me), t0.elapsed().as_secs_f64());
    let m1 = metrics::scrape(metrics_addr).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();

    let probes = metrics::sum(&m1, "egress_checker_probes_total", &[])
        - metrics::sum(&m0, "egress_checker_probes_total", &[]);
    let ok = metrics::sum(&m1, "egress_checker_probes_total", &[("result", "ok")])
        - metrics::sum(&m0, "egress_checker_probes_total", &[("result", "ok")]);
    let quantile = |name: &str, q: f64| {
        let (b0, b1) = (buckets(&m0, name), buckets(&m1, name));
        let window: Vec<(f64, f64)> = b1
            .iter()
            .map(|(le, n)| {
                (
                    *le,
                    n - b0.iter().find(|(l, _)| l == le).map(|x| x.1).unwrap_or(0.0),
                )
            })
            .collect();
        let total = window.last().map(|x| x.1).unwrap_or(0.0);
        window
            .iter()
            .find(|(_, n)| *n >= q * total)
            .map(|x| x.0)
            .unwrap_or(f64::NAN)
    };
    let lat = "egress_checker_probe_lateness_seconds";
    let dur = "egress_checker_probe_duration_seconds";
    println!("servers={} ports={} window={wall:.1}s", a.servers, a.ports);
    println!("probes/s={:.0} ok/s={:.0}", probes / wall, ok / wall);
    println!("checker cpu={:.2} cores", (c1 - c0) / wall);
    println!(
        "fake CONNECT server (this process) cpu={:.2} cores",
        (f1 - f0) / wall
    );
    println!("checker peak rss={:.1} MiB", peak as f64 / 1024.0);
    println!(
        "probe lateness p50<={}s p99<={}s (histogram bucket bounds)",
        quantile(lat, 0.5),
        quantile(lat, 0.99)
    );
    println!(
        "probe duration p50<={}s p99<={}s",
        quantile(dur, 0.5),
        quantile(dur, 0.99)
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "host load average (other processes share the cores): {}",
        load.trim()
    );
}

//! Writes (or checks) the files generated from `haproxy/pool.txt` and `haproxy/haproxy.cfg.in`:
//! `egress-gen --write` rewrites them, `egress-gen --check` exits 1 naming any committed file that
//! differs from the generator's output. Run through `scripts/gen-config`.

use std::process::ExitCode;

use egress_gen::shipped::{generated_files, repo_root, stale_files};

fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let result = match mode.as_str() {
        "--write" => write(),
        "--check" => check(),
        _ => {
            eprintln!("usage: egress-gen --write | --check");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("egress-gen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn write() -> anyhow::Result<ExitCode> {
    for (rel, text) in generated_files()? {
        let path = repo_root().join(&rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, text)?;
        println!("wrote {rel}");
    }
    Ok(ExitCode::SUCCESS)
}

fn check() -> anyhow::Result<ExitCode> {
    let stale = stale_files()?;
    if stale.is_empty() {
        println!("generated files are up to date");
        return Ok(ExitCode::SUCCESS);
    }
    for rel in &stale {
        eprintln!("stale: {rel} (run scripts/gen-config)");
    }
    Ok(ExitCode::FAILURE)
}

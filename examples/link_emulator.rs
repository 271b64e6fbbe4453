//! The integration tests' link emulator (`tests/it/support/link.rs`, this same file) as a
//! program, for `contrib/bench.sh` and for trying a link by hand (not part of the tool):
//! a TCP proxy on 127.0.0.1 in front of an S3 endpoint, driven by text commands on stdin
//! and on an optional control port.
//!
//!   link_emulator --target HOST:PORT [--listen 127.0.0.1:PORT] [--control 127.0.0.1:PORT]
//!                 [COMMAND ...]
//!
//! Each COMMAND argument (say `"rate both 25MB"`, `"rtt 40"`) is run at start. It prints
//! `listening 127.0.0.1:PORT` (and `control 127.0.0.1:PORT`), then answers each command
//! line with `ok ...` or `error: ...`. Commands: see `Link::command`
//! (`pass`, `refuse`, `blackhole`, `pause`, `resume`, `reset`, `status`,
//! `rate up|down|both RATE|off`, `latency up|down|both MS`, `rtt MS`,
//! `trickle SECONDS|off`, `blackhole-after|reset-after|pause-after|refuse-after BYTES PATTERN
//! [reused]`).
//! It runs until killed; the end of stdin does not stop it.

#[allow(dead_code)]
#[path = "../tests/it/support/link.rs"]
mod link;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;

fn usage(why: &str) -> ! {
    eprintln!(
        "link_emulator: {why}\nusage: link_emulator --target HOST:PORT [--listen 127.0.0.1:PORT] \
         [--control 127.0.0.1:PORT] [COMMAND ...]"
    );
    std::process::exit(2)
}

fn addr(flag: &str, v: Option<String>) -> SocketAddr {
    let v = v.unwrap_or_else(|| usage(&format!("{flag} needs an address")));
    v.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| usage(&format!("{flag} {v}: not an address")))
}

fn answer(link: &link::Link, line: &str) -> String {
    match link.command(line) {
        Ok(s) => format!("ok {s}"),
        Err(e) => format!("error: {e}"),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut target, mut listen, mut control) = (None, None, None);
    let mut commands = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--target" => target = Some(addr("--target", args.next())),
            "--listen" => listen = Some(addr("--listen", args.next())),
            "--control" => control = Some(addr("--control", args.next())),
            "-h" | "--help" => usage("a link emulator in front of --target"),
            _ if a.starts_with('-') => usage(&format!("unknown flag {a}")),
            _ => commands.push(a),
        }
    }
    let target = target.unwrap_or_else(|| usage("--target is required"));
    let listen = listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let link = match link::Link::start_on(listen, target) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!("link_emulator: listening on {listen}: {e}");
            std::process::exit(1)
        }
    };
    for c in &commands {
        let a = answer(&link, c);
        if a.starts_with("error") {
            eprintln!("link_emulator: {c:?}: {a}");
            std::process::exit(2)
        }
    }
    println!("listening {}", link.addr());
    if let Some(c) = control {
        let l = match TcpListener::bind(c) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("link_emulator: the control port {c}: {e}");
                std::process::exit(1)
            }
        };
        println!("control {}", l.local_addr().unwrap_or(c));
        let link = link.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let link = link.clone();
                std::thread::spawn(move || {
                    let Ok(mut out) = conn.try_clone() else {
                        return;
                    };
                    for line in BufReader::new(conn).lines().map_while(Result::ok) {
                        if writeln!(out, "{}", answer(&link, &line)).is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
    let _ = std::io::stdout().flush();
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        println!("{}", answer(&link, &line));
        let _ = std::io::stdout().flush();
    }
    loop {
        std::thread::park();
    }
}

//! Load generator for the ingest benchmarks (benches/ingest.sh): sends
//! client-protocol heartbeats to a loopwatch on 127.0.0.1.
//!
//!     ingest_load paced ADDR LOOPS RATE SECONDS   # LOOPS loops, RATE heartbeats/s each, over UDP
//!     ingest_load udp ADDR SECONDS                # as fast as one thread can, over UDP
//!     ingest_load http ADDR SECONDS               # NDJSON batches of 1,000, as fast as possible
//!
//! Prints the number of messages sent.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

fn heartbeat(app: usize, seq: u64) -> String {
    format!(
        r#"{{"v":1,"type":"heartbeat","app":"load{}","loop":"l{}","pid":4242,"interval_s":0.25,"stall_threshold_s":0.5,"lag_s":0.0004,"tasks_pending":12,"tasks_created":{seq},"slow_callbacks":0,"failures":[{{"task":"poll_feed","exception":"ValueError","count":1}}],"cancellations":[]}}"#,
        app % 50,
        app / 50,
    )
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("argument {i}: {what}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    let addr: String = arg(&args, 2, "ADDR (host:port)");
    let sent = match mode {
        "paced" => {
            let loops: usize = arg(&args, 3, "LOOPS");
            let rate: f64 = arg(&args, 4, "RATE");
            let seconds: f64 = arg(&args, 5, "SECONDS");
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let period = Duration::from_secs_f64(1.0 / rate);
            let start = Instant::now();
            let mut sent = 0u64;
            let mut round = 0u64;
            while start.elapsed().as_secs_f64() < seconds {
                let due = start + period * round as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                // Loops tick independently: spread their sends over the period.
                for l in 0..loops {
                    let at = due + period.mul_f64(l as f64 / loops as f64);
                    if let Some(wait) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let _ = sock.send_to(heartbeat(l, round).as_bytes(), &addr);
                    sent += 1;
                }
                round += 1;
            }
            sent
        }
        "udp" => {
            let seconds: f64 = arg(&args, 3, "SECONDS");
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed().as_secs_f64() < seconds {
                for l in 0..100 {
                    if sock.send_to(heartbeat(l, sent).as_bytes(), &addr).is_ok() {
                        sent += 1;
                    }
                }
            }
            sent
        }
        "http" => {
            let seconds: f64 = arg(&args, 3, "SECONDS");
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed().as_secs_f64() < seconds {
                let mut body = String::new();
                for l in 0..1000 {
                    body.push_str(&heartbeat(l % 100, sent + l as u64));
                    body.push('\n');
                }
                let mut stream = TcpStream::connect(&addr).expect("connect");
                write!(
                    stream,
                    "POST /api/v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .expect("send");
                let mut answer = String::new();
                stream.read_to_string(&mut answer).expect("answer");
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                sent += 1000;
            }
            sent
        }
        _ => {
            eprintln!(
                "usage: ingest_load paced ADDR LOOPS RATE SECONDS | udp ADDR SECONDS | http ADDR SECONDS"
            );
            std::process::exit(2);
        }
    };
    println!("{sent}");
}

//! `ticketd-load`: drives a running ticketd over HTTP with N concurrent clients doing a realistic
//! help-desk mix, and reports requests per second and latency percentiles per operation.
//!
//! Each client is a customer with an agent colleague working their tickets: it opens tickets,
//! comments (both sides), moves statuses, marks reads and fetches tickets.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use serde_json::{json, Value};

use common::{percentile, secret, token, Rng};

/// The org of every load client's tokens.
const ORG: Option<&str> = Some("loadorg");

#[derive(Parser, Debug, Clone)]
#[command(about = "HTTP load generator for ticketd")]
struct Args {
    /// Base URL of the running service.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// How long to run, in seconds, after the warm-up.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Warm-up seconds not counted in the figures.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// The service's JWT secret; defaults to the contents of --secret-file.
    #[arg(long, env = "TICKETD_JWT_SECRET")]
    jwt_secret: Option<String>,
    /// Where the embedded default keeps its generated secret.
    #[arg(long, default_value = "./data/jwt-secret")]
    secret_file: String,
    /// Sample each projection's lag from `/metrics` this often (milliseconds; 0: never) and
    /// report its percentiles.
    #[arg(long, default_value_t = 100)]
    lag_sample_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Open,
    Comment,
    Status,
    MarkRead,
    Get,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Open => "open",
            Op::Comment => "comment",
            Op::Status => "status",
            Op::MarkRead => "read (command)",
            Op::Get => "get ticket",
        }
    }
    fn is_command(self) -> bool {
        self != Op::Get
    }
}

struct Sample {
    op: Op,
    micros: u32,
    ok: bool,
}

async fn client(
    id: usize,
    args: Args,
    secret: String,
    warm_until: Instant,
    stop_at: Instant,
) -> anyhow::Result<Vec<Sample>> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let customer = token(&secret, &format!("load-customer-{id}"), "customer", ORG)?;
    let agent = token(&secret, &format!("load-agent-{id}"), "agent", ORG)?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1));
    let mut tickets: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    while Instant::now() < stop_at {
        let roll = rng.below(100);
        let op = if tickets.is_empty() || roll < 15 {
            Op::Open
        } else if roll < 45 {
            Op::Comment
        } else if roll < 65 {
            Op::Status
        } else if roll < 75 {
            Op::MarkRead
        } else {
            Op::Get
        };
        let ticket = if tickets.is_empty() {
            String::new()
        } else {
            tickets[rng.below(tickets.len() as u64) as usize].clone()
        };
        let base = &args.url;
        let began = Instant::now();
        let request = match op {
            Op::Open => http
                .post(format!("{base}/v1/tickets"))
                .bearer_auth(&customer)
                .json(&json!({"subject": "Printer on fire", "description": "It is on fire again.", "priority": "high"})),
            Op::Comment => {
                let by_agent = rng.below(2) == 0;
                http.post(format!("{base}/v1/tickets/{ticket}/comments"))
                    .bearer_auth(if by_agent { &agent } else { &customer })
                    .json(&json!({"body": "Any news on this? Here are more details."}))
            }
            Op::Status => {
                let to = ["in_progress", "awaiting_customer", "resolved", "on_hold"]
                    [rng.below(4) as usize];
                http.post(format!("{base}/v1/tickets/{ticket}/status"))
                    .bearer_auth(&agent)
                    .json(&json!({"status": to}))
            }
            Op::MarkRead => http
                .post(format!("{base}/v1/tickets/{ticket}/read"))
                .bearer_auth(&customer),
            Op::Get => http
                .get(format!("{base}/v1/tickets/{ticket}"))
                .bearer_auth(&agent),
        };
        let response = request.send().await;
        let (ok, body) = match response {
            Ok(r) => {
                let ok = r.status().is_success();
                let body = if op == Op::Open {
                    r.json::<Value>().await.ok()
                } else {
                    r.bytes().await.ok().map(|_| Value::Null)
                };
                (ok, body)
            }
            Err(_) => (false, None),
        };
        let micros = began.elapsed().as_micros().min(u32::MAX as u128) as u32;
        if op == Op::Open {
            if let Some(id) = body.as_ref().and_then(|b| b["id"].as_str()) {
                // Keep a small working set per client, like an agent's queue.
                if tickets.len() >= 20 {
                    tickets.remove(0);
                }
                tickets.push(id.to_owned());
            }
        }
        if began >= warm_until {
            samples.push(Sample { op, micros, ok });
        }
    }
    Ok(samples)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let secret = secret(args.jwt_secret.as_deref(), &args.secret_file)?;
    let start = Instant::now();
    let warm_until = start + Duration::from_secs(args.warmup);
    let stop_at = warm_until + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for id in 0..args.clients {
        tasks.push(tokio::spawn(client(
            id,
            args.clone(),
            secret.clone(),
            warm_until,
            stop_at,
        )));
    }
    let lags = (args.lag_sample_ms > 0).then(|| {
        tokio::spawn(sample_lag(
            args.url.clone(),
            Duration::from_millis(args.lag_sample_ms),
            warm_until,
            stop_at,
        ))
    });
    let mut all: Vec<Sample> = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = args.seconds as f64;
    let errors = all.iter().filter(|s| !s.ok).count();
    let mut by_op: BTreeMap<Op, Vec<u32>> = BTreeMap::new();
    let mut commands: Vec<u32> = Vec::new();
    let mut everything: Vec<u32> = Vec::new();
    for s in &all {
        by_op.entry(s.op).or_default().push(s.micros);
        if s.op.is_command() {
            commands.push(s.micros);
        }
        everything.push(s.micros);
    }
    println!(
        "clients={} seconds={} url={}",
        args.clients, args.seconds, args.url
    );
    println!(
        "{:<16} {:>9} {:>10} {:>9} {:>9}",
        "operation", "count", "per_s", "p50_ms", "p99_ms"
    );
    let row = |name: &str, v: &mut Vec<u32>| {
        v.sort_unstable();
        println!(
            "{:<16} {:>9} {:>10.0} {:>9.2} {:>9.2}",
            name,
            v.len(),
            v.len() as f64 / secs,
            percentile(v, 50.0),
            percentile(v, 99.0)
        );
    };
    for (op, v) in by_op.iter_mut() {
        row(op.name(), v);
    }
    row("ALL COMMANDS", &mut commands);
    row("ALL REQUESTS", &mut everything);
    println!("errors={errors}");
    if let Some(lags) = lags {
        let mut lags = lags.await??;
        println!(
            "{:<16} {:>9} {:>9} {:>9} {:>9}",
            "projection lag", "samples", "p50_ms", "p99_ms", "max_ms"
        );
        for (name, v) in lags.iter_mut() {
            v.sort_unstable();
            println!(
                "{:<16} {:>9} {:>9.2} {:>9.2} {:>9.2}",
                name,
                v.len(),
                percentile(v, 50.0),
                percentile(v, 99.0),
                v.last().map_or(0.0, |m| f64::from(*m) / 1000.0)
            );
        }
    }
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}

/// Scrapes `ticketd_projection_lag_seconds` from `/metrics` every `every` during the measured
/// window: per projection, the lag samples in microseconds.
async fn sample_lag(
    url: String,
    every: Duration,
    from: Instant,
    until: Instant,
) -> anyhow::Result<BTreeMap<String, Vec<u32>>> {
    let http = reqwest::Client::new();
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    tokio::time::sleep_until(from.into()).await;
    let mut tick = tokio::time::interval(every);
    while Instant::now() < until {
        tick.tick().await;
        let text = http
            .get(format!("{url}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("ticketd_projection_lag_seconds{projection=\"")
            else {
                continue;
            };
            let Some((name, value)) = rest.split_once("\"} ") else {
                continue;
            };
            if let Ok(secs) = value.trim().parse::<f64>() {
                out.entry(name.to_owned())
                    .or_default()
                    .push((secs * 1e6).min(f64::from(u32::MAX)) as u32);
            }
        }
    }
    Ok(out)
}

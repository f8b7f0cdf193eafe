//! `ticketd-query`: drives the read side of a running server over HTTP with N concurrent
//! clients and reports p50/p99 latency per kind of query, for data made by `ticketd-gen`
//! (its customers `customer-0…4999` in orgs `org-0…199`, its vocabulary of subjects).
//!
//! Kinds: `overdue` (a customer's "my overdue requests", `view=mine&overdue=true`), `list` (an
//! agent's filtered and sorted page), `page2` (the page after it, by cursor), `search` (an
//! agent's two-word `q`) and `search_customer` (a customer's one-word `q` over what they see).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use serde_json::Value;

use common::{percentile, secret, token, token_with, Rng};
use ticketd_projections::tickets::Sort;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ticketd-query",
    about = "Measure ticketd's query latencies over HTTP"
)]
struct Args {
    /// Base URL of the running service.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
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
    /// Customers and orgs the data has (as `ticketd-gen` makes them).
    #[arg(long, default_value_t = 5_000)]
    customers: u64,
    #[arg(long, default_value_t = 200)]
    orgs: u64,
    /// Run only this kind of query (overdue, list, page2, search, search_customer; or one the
    /// mix leaves out: search_page2, an agent search's second page; list_all, an agent's list
    /// of every ticket in one of the sorts; mine, a customer's own requests; customer, all a
    /// customer may see; colleague, the same for an org-wide customer; colleague_sorted, an
    /// org-wide customer's in an order other than the default; org_sorted, an agent's list of
    /// one organization in such an order; mine_sorted, a customer's own requests in one;
    /// assigned, an agent's `view=mine` in any order, which finds tickets only where some
    /// are assigned: `ticketd-gen` assigns none).
    #[arg(long)]
    only: Option<String>,
}

const LISTS: [&str; 5] = [
    "status=awaiting_customer&priority=high&sort=-last_activity",
    "active=true&sort=due",
    "status=in_progress,awaiting_customer&channel=web&sort=created",
    "active=true&sort=-priority",
    "status=resolved&priority=urgent&sort=-created",
];
const THINGS: [&str; 12] = [
    "printer",
    "laptop",
    "monitor",
    "router",
    "invoice",
    "refund",
    "password",
    "scanner",
    "battery",
    "database",
    "shipment",
    "dashboard",
];
const TROUBLES: [&str; 10] = [
    "jams",
    "crashes",
    "freezes",
    "overheats",
    "expired",
    "flickers",
    "reboots",
    "leaks",
    "beeps",
    "blocked",
];

#[derive(Default)]
struct Kind {
    micros: Vec<u32>,
    items: u64,
    errors: u64,
}

/// The kinds of query, by their number in [`client`]'s choice; the mix takes the first five.
const KINDS: [&str; 14] = [
    "overdue",
    "list",
    "page2",
    "search",
    "search_customer",
    "search_page2",
    "list_all",
    "mine",
    "customer",
    "colleague",
    "colleague_sorted",
    "org_sorted",
    "mine_sorted",
    "assigned",
];

/// A token for a customer of the data, in their organization (`ticketd-gen` makes them).
fn customer_token(
    rng: &mut Rng,
    args: &Args,
    secret: &str,
    org_wide: bool,
) -> anyhow::Result<String> {
    let c = rng.below(args.customers);
    let org = format!("org-{}", c % args.orgs);
    token_with(
        secret,
        &format!("customer-{c}"),
        "customer",
        Some(&org),
        org_wide,
    )
}

/// A search for two common words, as an agent types it.
fn two_words(rng: &mut Rng) -> String {
    format!(
        "{}%20{}",
        THINGS[rng.below(THINGS.len() as u64) as usize],
        TROUBLES[rng.below(TROUBLES.len() as u64) as usize]
    )
}

/// One of the lists' orders other than the default (`-last_activity`, either way).
fn other_order(rng: &mut Rng) -> &'static str {
    let others: Vec<&'static str> = Sort::NAMES
        .iter()
        .copied()
        .filter(|s| !s.ends_with("last_activity"))
        .collect();
    others[rng.below(others.len() as u64) as usize]
}

/// The path of the page after the first of `query` (read now, not timed), if there is one.
async fn next_page(
    http: &reqwest::Client,
    base: &str,
    query: &str,
    who: &str,
) -> anyhow::Result<Option<String>> {
    let first = http
        .get(format!("{base}/v1/tickets?{query}"))
        .bearer_auth(who)
        .send()
        .await?
        .json::<Value>()
        .await?;
    Ok(first["next_cursor"]
        .as_str()
        .map(|c| format!("/v1/tickets?{query}&cursor={c}")))
}

async fn client(
    id: usize,
    args: Args,
    secret: String,
    warm_until: Instant,
    stop_at: Instant,
) -> anyhow::Result<BTreeMap<&'static str, Kind>> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let agent = token(&secret, &format!("agent-{}", id % 50), "agent", None)?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1));
    let mut out: BTreeMap<&'static str, Kind> = BTreeMap::new();
    let base = &args.url;
    let mut turn = 0usize;
    while Instant::now() < stop_at {
        turn += 1;
        let pick = match args.only.as_deref() {
            None => turn % 5,
            Some(k) => KINDS.iter().position(|x| *x == k).unwrap_or(4),
        };
        let (kind, path, who) = match pick {
            0 => {
                let t = customer_token(&mut rng, &args, &secret, false)?;
                (
                    "overdue",
                    "/v1/tickets?view=mine&overdue=true".to_owned(),
                    t,
                )
            }
            1 => {
                let q = LISTS[rng.below(LISTS.len() as u64) as usize];
                ("list", format!("/v1/tickets?{q}&limit=50"), agent.clone())
            }
            2 => {
                let q = LISTS[rng.below(LISTS.len() as u64) as usize];
                match next_page(&http, base, &format!("{q}&limit=50"), &agent).await? {
                    Some(path) => ("page2", path, agent.clone()),
                    None => continue,
                }
            }
            5 => {
                let q = format!("q={}&limit=50", two_words(&mut rng));
                match next_page(&http, base, &q, &agent).await? {
                    Some(path) => ("search_page2", path, agent.clone()),
                    None => continue,
                }
            }
            // Every ticket, no filter: on PostgreSQL two walks merged (migration 0016).
            6 => {
                let sorts = Sort::NAMES;
                let sort = sorts[rng.below(sorts.len() as u64) as usize];
                (
                    "list_all",
                    format!("/v1/tickets?sort={sort}&limit=50"),
                    agent.clone(),
                )
            }
            7 => {
                let t = customer_token(&mut rng, &args, &secret, false)?;
                ("mine", "/v1/tickets?view=mine&limit=50".to_owned(), t)
            }
            // Everything a customer may see (on PostgreSQL read in parts, `Visible`): their
            // own requests and CCs, or, org-wide, their organization's tickets too.
            8 | 9 => {
                let t = customer_token(&mut rng, &args, &secret, pick == 9)?;
                (KINDS[pick], "/v1/tickets?limit=50".to_owned(), t)
            }
            // An org-wide customer's list in one of the other orders, which no index of the
            // organization's tickets holds.
            10 => {
                let t = customer_token(&mut rng, &args, &secret, true)?;
                (
                    "colleague_sorted",
                    format!("/v1/tickets?sort={}&limit=50", other_order(&mut rng)),
                    t,
                )
            }
            12 => {
                let t = customer_token(&mut rng, &args, &secret, false)?;
                (
                    "mine_sorted",
                    format!(
                        "/v1/tickets?view=mine&sort={}&limit=50",
                        other_order(&mut rng)
                    ),
                    t,
                )
            }
            13 => {
                let sort = Sort::NAMES[rng.below(Sort::NAMES.len() as u64) as usize];
                (
                    "assigned",
                    format!("/v1/tickets?view=mine&sort={sort}&limit=50"),
                    agent.clone(),
                )
            }
            11 => {
                let org = rng.below(args.orgs);
                (
                    "org_sorted",
                    format!(
                        "/v1/tickets?org=org-{org}&sort={}&limit=50",
                        other_order(&mut rng)
                    ),
                    agent.clone(),
                )
            }
            3 => (
                "search",
                format!("/v1/tickets?q={}&limit=50", two_words(&mut rng)),
                agent.clone(),
            ),
            _ => {
                let t = customer_token(&mut rng, &args, &secret, false)?;
                let q = THINGS[rng.below(THINGS.len() as u64) as usize];
                ("search_customer", format!("/v1/tickets?q={q}&limit=50"), t)
            }
        };
        let began = Instant::now();
        let answer = http
            .get(format!("{base}{path}"))
            .bearer_auth(&who)
            .send()
            .await;
        let (ok, items) = match answer {
            Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                Ok(v) => (true, v["items"].as_array().map_or(0, Vec::len) as u64),
                Err(_) => (false, 0),
            },
            _ => (false, 0),
        };
        let micros = began.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        if began >= warm_until {
            let k = out.entry(kind).or_default();
            k.micros.push(micros);
            k.items += items;
            k.errors += u64::from(!ok);
        }
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if let Some(k) = &args.only {
        if !KINDS.contains(&k.as_str()) {
            bail!("--only takes one of {KINDS:?}, not {k:?}");
        }
    }
    let secret = secret(args.jwt_secret.as_deref(), &args.secret_file)?;
    let warm_until = Instant::now() + Duration::from_secs(args.warmup);
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
    let mut all: BTreeMap<&'static str, Kind> = BTreeMap::new();
    for t in tasks {
        for (name, k) in t.await?? {
            let a = all.entry(name).or_default();
            a.micros.extend(k.micros);
            a.items += k.items;
            a.errors += k.errors;
        }
    }
    println!(
        "clients={} seconds={} url={}",
        args.clients, args.seconds, args.url
    );
    println!(
        "{:<16} {:>8} {:>8} {:>9} {:>9} {:>10} {:>7}",
        "query", "count", "per_s", "p50_ms", "p99_ms", "avg_items", "errors"
    );
    let mut errors = 0;
    for (name, k) in all.iter_mut() {
        k.micros.sort_unstable();
        let n = k.micros.len();
        println!(
            "{:<16} {:>8} {:>8.0} {:>9.2} {:>9.2} {:>10.1} {:>7}",
            name,
            n,
            n as f64 / args.seconds as f64,
            percentile(&k.micros, 50.0),
            percentile(&k.micros, 99.0),
            k.items as f64 / n.max(1) as f64,
            k.errors
        );
        errors += k.errors;
    }
    if errors > 0 {
        bail!("{errors} queries failed");
    }
    Ok(())
}

//! The metrics endpoint of a running 3-node cluster (one process, real TCP, real files): the
//! exposition parses as Prometheus text, and its counters move after appends.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use corelog::client::{Client, ClientConfig};
use corelog::node::{self, metrics};

type Labels = Vec<(String, String)>;

/// One sample line: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

/// A strict parser of the text exposition: every line is a comment (`# HELP name text`,
/// `# TYPE name kind`, or any other `#` line) or `name{labels} value`; a sample's family is
/// declared by a `# TYPE` before it; names and label names are valid identifiers.
fn parse(text: &str) -> Result<(Vec<Sample>, HashMap<String, String>), String> {
    let ident = |s: &str, colon: bool| {
        !s.is_empty()
            && s.chars().enumerate().all(|(i, c)| {
                c == '_'
                    || c.is_ascii_alphabetic()
                    || (colon && c == ':')
                    || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut types = HashMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let err = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let words: Vec<&str> = c.split_whitespace().collect();
            match words.first() {
                Some(&"TYPE") => {
                    let (Some(name), Some(kind)) = (words.get(1), words.get(2)) else {
                        return Err(err("TYPE needs a name and a kind"));
                    };
                    if !ident(name, true)
                        || !["counter", "gauge", "histogram", "summary", "untyped"].contains(kind)
                    {
                        return Err(err("bad TYPE"));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(err("family declared twice"));
                    }
                }
                Some(&"HELP") if words.len() < 2 => return Err(err("HELP needs a name")),
                _ => {}
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| err("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| err("value is not a number"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').ok_or_else(|| err("unclosed labels"))?;
                let mut labels = Vec::new();
                for pair in body.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').ok_or_else(|| err("label without ="))?;
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .ok_or_else(|| err("unquoted label value"))?;
                    if !ident(k, false) || v.contains('"') {
                        return Err(err("bad label"));
                    }
                    labels.push((k.to_string(), v.to_string()));
                }
                (name, labels)
            }
        };
        if !ident(name, true) {
            return Err(err("bad metric name"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(err("sample before its TYPE"));
        }
        samples.push(Sample { name: name.to_string(), labels, value });
    }
    Ok((samples, types))
}

struct Scrape {
    samples: Vec<Sample>,
}

impl Scrape {
    fn of(addr: SocketAddr) -> Scrape {
        let text = metrics::http_get(addr, "/metrics").expect("GET /metrics");
        let (samples, types) = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        // Naming: counters end in _total; histograms of time in _seconds, of size in _bytes.
        for (name, kind) in &types {
            match kind.as_str() {
                "counter" => assert!(name.ends_with("_total"), "counter {name}"),
                "histogram" => assert!(
                    name.ends_with("_seconds") || name.ends_with("_bytes"),
                    "histogram {name} lacks a base unit"
                ),
                _ => {}
            }
        }
        let s = Scrape { samples };
        s.check_histograms(&types);
        s
    }

    /// Buckets are cumulative and the +Inf bucket equals the count.
    fn check_histograms(&self, types: &HashMap<String, String>) {
        for (family, _) in types.iter().filter(|(_, k)| *k == "histogram") {
            let bucket = format!("{family}_bucket");
            let mut series: HashMap<Labels, Vec<(f64, f64)>> = HashMap::new();
            for s in self.samples.iter().filter(|s| s.name == bucket) {
                let le = s.labels.iter().find(|(k, _)| k == "le").expect("le label");
                let le: f64 = if le.1 == "+Inf" { f64::INFINITY } else { le.1.parse().unwrap() };
                let rest: Vec<_> = s.labels.iter().filter(|(k, _)| k != "le").cloned().collect();
                series.entry(rest).or_default().push((le, s.value));
            }
            for (labels, buckets) in series {
                for w in buckets.windows(2) {
                    assert!(
                        w[0].0 < w[1].0 && w[0].1 <= w[1].1,
                        "{family}{labels:?} not cumulative"
                    );
                }
                let count = self
                    .samples
                    .iter()
                    .find(|s| s.name == format!("{family}_count") && s.labels == labels)
                    .expect("a _count per series");
                assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count.value), "{family}");
            }
        }
    }

    /// The sum of the samples named `name` whose labels include `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels.iter().all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|s| s.value)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

#[test]
fn the_parser_rejects_what_is_not_exposition() {
    assert!(parse("# TYPE a counter\na 1\n").is_ok());
    assert!(parse("# TYPE a_total counter\na_total{x=\"1\",y=\"b\"} 2.5\n").is_ok());
    assert!(parse("a 1\n").is_err(), "no TYPE");
    assert!(parse("# TYPE a counter\na\n").is_err(), "no value");
    assert!(parse("# TYPE a counter\na x\n").is_err(), "not a number");
    assert!(parse("# TYPE a counter\na{x=1} 1\n").is_err(), "unquoted");
    assert!(parse("# TYPE a counter\na{x=\"1\" 1\n").is_err(), "unclosed");
    assert!(parse("# TYPE 1a counter\n").is_err(), "bad name");
}

#[test]
fn a_running_cluster_exposes_metrics_that_move() {
    let dir = tempfile::tempdir().unwrap();
    let Cluster { nodes, addrs, endpoints, mut client, leader } = metrics_cluster(dir.path());
    let before: Vec<Scrape> = endpoints.iter().map(|a| Scrape::of(*a)).collect();
    let n = 60;
    for i in 0..n {
        client.append(0, format!("entry {i}").as_bytes()).expect("append");
    }
    // A follower asked for an append answers NotLeader (and the client then follows it).
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let mut redirected = Client::new(ClientConfig::new(vec![addrs[follower]])).unwrap();
    redirected.append(0, b"via a follower").expect("append after a redirect");
    let n = n as f64 + 1.0;
    // Followers learn the commit with the next message: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after: Vec<Scrape> = endpoints.iter().map(|a| Scrape::of(*a)).collect();
        let committed = (0..3).all(|i| {
            after[i].get("corelog_commits_total", &[]) - before[i].get("corelog_commits_total", &[])
                >= n
        });
        if committed {
            break after;
        }
        assert!(Instant::now() < deadline, "commits did not show on every node");
        std::thread::sleep(Duration::from_millis(20));
    };
    let (b, a) = (&before[leader], &after[leader]);
    let moved = |name: &str, labels: &[(&str, &str)]| a.get(name, labels) - b.get(name, labels);
    assert!(moved("corelog_appends_total", &[]) >= n);
    assert!(moved("corelog_append_requests_total", &[]) >= n);
    for (stage, _) in node::stages::STAGES {
        let c = moved("corelog_append_stage_duration_seconds_count", &[("stage", stage)]);
        assert!(c >= n, "stage {stage}: {c} appends timed");
    }
    assert!(moved("corelog_append_duration_seconds_count", &[]) >= n);
    // Zero-copy replication: the leader sends its own log frames as they are (each entry to
    // both followers here), and each follower writes the frames it received.
    let as_is = moved("corelog_peer_entries_sent_total", &[("frames", "as_is")]);
    assert!(as_is >= 2.0 * n, "{as_is} entries sent in log frames");
    for i in (0..3).filter(|i| *i != leader) {
        let written = after[i]
            .get("corelog_follower_entries_written_total", &[("frames", "as_received")])
            - before[i].get("corelog_follower_entries_written_total", &[("frames", "as_received")]);
        assert!(written >= n, "node {i} wrote {written} entries in the frames it received");
    }
    assert!(moved("corelog_append_stage_duration_seconds_sum", &[("stage", "leader_flush")]) > 0.0);
    assert!(a.get("corelog_term", &[("group", "0")]) >= 1.0);
    assert_eq!(a.get("corelog_leader_id", &[("group", "0")]), (leader + 1) as f64);
    assert!(a.get("corelog_commit_index", &[("group", "0")]) >= n);
    assert!(a.get("corelog_client_connections", &[]) >= 1.0);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let moved = |name: &str| a.get(name, &[("group", "0")]) - b.get(name, &[("group", "0")]);
        assert!(moved("corelog_log_written_bytes_total") > 0.0, "node {i} wrote nothing");
        assert!(moved("corelog_log_flushes_total") > 0.0, "node {i} flushed nothing");
        // sync = adaptive (the default): flushes that went out alone were RWF_DSYNC writes.
        let dsync = moved("corelog_log_dsync_flushes_total");
        assert!(dsync > 0.0 && dsync <= moved("corelog_log_flushes_total"), "node {i}: {dsync}");
        assert!(moved("corelog_log_flush_size_bytes_count") > 0.0, "node {i}");
        assert!(moved("corelog_log_flush_duration_seconds_count") > 0.0, "node {i}");
        assert!(moved("corelog_log_entries_appended_total") >= n, "node {i}");
        // Nothing trimmed: the log starts at 1; its first segment was zero-filled.
        assert_eq!(a.get("corelog_first_index", &[("group", "0")]), 1.0, "node {i}");
        assert!(a.get("corelog_log_segments_zero_filled_total", &[("group", "0")]) >= 1.0);
        assert!(a.has("corelog_log_segments_recycled_total"), "node {i}");
        assert!(a.has("corelog_log_frames_read_from_disk_total"), "node {i}");
        assert!(a.has("corelog_log_space_waits_total"), "node {i}");
        assert!(a.has("corelog_log_space_wait_seconds_total"), "node {i}");
        assert!(a.get("corelog_leader_changes_total", &[]) >= 1.0, "node {i} saw no leader");
        for peer in (1..=3u64).filter(|p| *p != i as u64 + 1) {
            let p = peer.to_string();
            assert_eq!(a.get("corelog_peer_links_up", &[("peer", &p)]), 1.0, "node {i} to {p}");
        }
    }
    let elections: f64 = after.iter().map(|s| s.get("corelog_elections_total", &[])).sum();
    assert!(elections >= 1.0, "someone campaigned");
    assert!(a.has("corelog_follower_lag_entries"), "the leader reports its followers' lag");
    let not_leader = |s: &Scrape| s.get("corelog_errors_total", &[("kind", "not_leader")]);
    assert!(not_leader(&after[follower]) > not_leader(&before[follower]), "NotLeader counted");
    // Other paths and methods are refused.
    let e = metrics::http_get(endpoints[0], "/nothing").unwrap_err();
    assert!(e.contains("404"), "{e}");
    let stages = metrics::fetch_stages(endpoints[leader]).expect("GET /stages");
    assert_eq!(stages.len(), node::stages::STAGE_COUNT);
    assert!(stages.iter().all(|(_, h)| h.len() as f64 >= n));
    for n in nodes {
        n.shutdown().unwrap();
    }
}

/// A 3-node cluster with metrics endpoints, one entry appended, and the index of its leader.
struct Cluster {
    nodes: Vec<node::NodeHandle>,
    addrs: Vec<SocketAddr>,
    endpoints: Vec<SocketAddr>,
    client: Client,
    leader: usize,
}

fn metrics_cluster(dir: &std::path::Path) -> Cluster {
    metrics_cluster_with(dir, |_| {}).1
}

/// [`metrics_cluster`] with settings changed by `tweak`; also the nodes' configurations.
fn metrics_cluster_with(
    dir: &std::path::Path,
    tweak: impl Fn(&mut node::NodeConfig),
) -> (Vec<node::NodeConfig>, Cluster) {
    let cfgs = common::local_configs(dir, 3, 4 << 20, |c| {
        c.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        tweak(c);
    });
    let addrs: Vec<SocketAddr> = cfgs[0].members.iter().map(|m| m.client_addr).collect();
    let nodes: Vec<_> = cfgs.iter().cloned().map(|c| node::start(c).expect("start")).collect();
    let endpoints: Vec<SocketAddr> =
        nodes.iter().map(|n| n.metrics_addr().expect("metrics endpoint")).collect();
    let mut client = Client::new(ClientConfig::new(addrs.clone())).unwrap();
    client.append(0, b"first").expect("append");
    let leader = single_leader(&endpoints);
    (cfgs, Cluster { nodes, addrs, endpoints, client, leader })
}

/// The index of the one node whose metrics say it leads group 0, waiting up to 10 s.
fn single_leader(endpoints: &[SocketAddr]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrapes: Vec<Scrape> = endpoints.iter().map(|a| Scrape::of(*a)).collect();
        let leaders: Vec<usize> = (0..scrapes.len())
            .filter(|i| scrapes[*i].get("corelog_is_leader", &[("group", "0")]) == 1.0)
            .collect();
        if leaders.len() == 1 {
            return leaders[0];
        }
        assert!(Instant::now() < deadline, "no single leader in the metrics");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A follower that was away while more than the leader's entry cache was committed catches up
/// from the leader's log on disk (the fetch path), and the counter says so; every entry
/// arrives intact and in order.
#[test]
fn a_follower_behind_the_entry_cache_catches_up_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfgs = common::local_configs(dir.path(), 3, 4 << 20, |c| {
        c.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.entry_cache_bytes_max = 16 << 10;
    });
    let addrs: Vec<SocketAddr> = cfgs[0].members.iter().map(|m| m.client_addr).collect();
    let mut nodes: Vec<_> =
        cfgs.iter().cloned().map(|c| Some(node::start(c).expect("start"))).collect();
    let endpoints: Vec<SocketAddr> =
        nodes.iter().map(|n| n.as_ref().unwrap().metrics_addr().expect("endpoint")).collect();
    let mut client = Client::new(ClientConfig::new(addrs.clone())).unwrap();
    client.append(0, b"first").expect("append");
    let leader = single_leader(&endpoints);
    let away = (0..3).find(|i| *i != leader).unwrap();
    nodes[away].take().unwrap().shutdown().unwrap();
    // 256 KiB committed while it is away: 16 times the cache.
    let payload = |i: usize| format!("{i:>1000}").into_bytes();
    let mut last = 0;
    for i in 0..256 {
        last = client.append(0, &payload(i)).expect("append with one follower away").index;
    }
    let fetched_before =
        Scrape::of(endpoints[leader]).get("corelog_leader_entries_fetched_total", &[]);
    nodes[away] = Some(node::start(cfgs[away].clone()).expect("restart"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let entries = loop {
        if let Ok((commit, got)) = client.read_from(addrs[away], 0, 1, last, 64 << 20)
            && commit >= last
            && got.last().is_some_and(|e| e.index == last)
        {
            break got;
        }
        if Instant::now() >= deadline {
            let follower = client.status_of(addrs[away], 0);
            let leader = client.status_of(addrs[leader], 0);
            panic!("the follower did not catch up: it says {follower:?}, the leader {leader:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let fetched = Scrape::of(endpoints[leader]).get("corelog_leader_entries_fetched_total", &[])
        - fetched_before;
    assert!(fetched >= 200.0, "{fetched} entries read back from the leader's log");
    let data: Vec<&[u8]> =
        entries.iter().filter(|e| e.data.len() == 1000).map(|e| e.data.as_slice()).collect();
    let want: Vec<Vec<u8>> = (0..256).map(payload).collect();
    assert_eq!(data, want.iter().map(|v| v.as_slice()).collect::<Vec<_>>());
    for n in nodes.into_iter().flatten() {
        n.shutdown().unwrap();
    }
}

/// Appends with large frames go from the leader's log to the followers in one vectored send
/// each (no copy into the link's queue), and arrive intact and in order on every replica; a
/// pipelined burst of them fills the sockets at times, and what a socket did not take goes
/// through the queue in order.
#[test]
fn large_frames_go_to_the_followers_straight_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let Cluster { nodes, addrs, endpoints, mut client, leader } = metrics_cluster(dir.path());
    // 40 KiB each, every byte depending on the entry and its offset.
    let payload = |i: usize| -> Vec<u8> {
        (0..40 << 10).map(|k: usize| (k.wrapping_mul(31) ^ i.wrapping_mul(131)) as u8).collect()
    };
    let sequential = 24;
    for i in 0..sequential {
        client.append(0, &payload(i)).expect("append");
    }
    // Then a burst, many in flight at once.
    let pipelined = corelog::client_pipelined::PipelinedClient::new(
        corelog::client_pipelined::PipelinedConfig::new(addrs.clone()),
    )
    .unwrap();
    let burst: Vec<_> = (sequential..sequential + 96)
        .map(|i| pipelined.append(0, &payload(i)).expect("submit"))
        .collect();
    let mut last = 0;
    for p in burst {
        last = last.max(p.wait().expect("burst append").index);
    }
    let total = sequential + 96;
    let want: Vec<Vec<u8>> = (0..total).map(payload).collect();
    let mut sorted_want = want.clone();
    sorted_want.sort();
    for (i, addr) in addrs.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(20);
        // Page by page: one read answers at most half of `message_bytes_max`.
        let mut read_all = || -> Option<Vec<corelog::client::ReadEntry>> {
            let mut all = Vec::new();
            let mut lo = 1;
            while lo <= last {
                let (commit, got) = client.read_from(*addr, 0, lo, last, 1 << 20).ok()?;
                if commit < last || got.is_empty() {
                    return None;
                }
                lo = got.last().expect("not empty").index + 1;
                all.extend(got);
            }
            Some(all)
        };
        let got = loop {
            if let Some(got) = read_all() {
                break got;
            }
            assert!(Instant::now() < deadline, "node {i} did not get every entry");
            std::thread::sleep(Duration::from_millis(50));
        };
        let data: Vec<Vec<u8>> =
            got.iter().filter(|e| e.data.len() == 40 << 10).map(|e| e.data.clone()).collect();
        // The sequential ones in order; the burst's order is the leader's, so compare as sets.
        assert_eq!(data[..sequential], want[..sequential], "node {i}");
        let mut sorted = data.clone();
        sorted.sort();
        assert_eq!(sorted, sorted_want, "node {i}");
    }
    let a = Scrape::of(endpoints[leader]);
    let direct: f64 = (1..=3u64)
        .filter(|p| *p != leader as u64 + 1)
        .map(|p| a.get("corelog_peer_direct_sends_total", &[("peer", &p.to_string())]))
        .sum();
    assert!(direct >= sequential as f64, "{direct} direct sends");
    assert!(a.has("corelog_peer_direct_sends_partial_total"));
    for n in nodes {
        n.shutdown().unwrap();
    }
}

/// 3 nodes whose leaders admit 64 KiB of client appends at a time (`uncommitted_bytes_max`),
/// one append committed, and the leader's index.
fn bounded_cluster(dir: &std::path::Path) -> (Vec<node::NodeConfig>, Cluster) {
    metrics_cluster_with(dir, |c| {
        c.message_bytes_max = 64 << 10;
        c.uncommitted_bytes_max = 64 << 10;
    })
}

/// Submits `n` appends of 1 KiB through a pipelined client (1,024 in flight); their outcomes
/// in submission order.
fn flood(
    addrs: &[SocketAddr],
    n: usize,
    deadline: Duration,
) -> Vec<Result<corelog::client::Position, String>> {
    use corelog::client_pipelined::{PipelinedClient, PipelinedConfig};
    let mut cfg = PipelinedConfig::new(addrs.to_vec());
    cfg.max_in_flight = 1024;
    cfg.deadline = deadline;
    let client = PipelinedClient::new(cfg).expect("client");
    let pending: Vec<_> = (0..n)
        .map(|k| {
            let mut data = format!("flood-{k}-").into_bytes();
            data.resize(1024, (k % 251) as u8);
            client.append(0, &data).expect("submit")
        })
        .collect();
    pending.into_iter().map(|p| p.wait().map_err(|e| e.to_string())).collect()
}

/// A leader whose admitted appends reach `uncommitted_bytes_max` does not refuse the next ones:
/// it stops reading their connections until commits make room (TCP backpressure), so a
/// client with far more in flight than the bound sees no `Busy` at all, and every append
/// commits once. Afterwards nothing is left admitted on any node.
#[test]
fn a_leader_at_its_uncommitted_bound_holds_appends_back_instead_of_refusing_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_, Cluster { nodes, addrs, endpoints, leader, .. }) = bounded_cluster(dir.path());
    let before = Scrape::of(endpoints[leader]);
    // 3 MiB in flight against a 64 KiB bound.
    let n = 3000;
    let outcomes = flood(&addrs, n, Duration::from_secs(60));
    let mut positions = std::collections::HashSet::new();
    for (k, o) in outcomes.iter().enumerate() {
        let p = o.as_ref().unwrap_or_else(|e| panic!("append {k}: {e}"));
        assert!(positions.insert(p.index), "append {k} at index {} twice", p.index);
    }
    let after = Scrape::of(endpoints[leader]);
    let moved =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    assert_eq!(moved("corelog_errors_total", &[("kind", "busy")]), 0.0, "appends refused");
    let waits = moved("corelog_append_admission_waits_total", &[]);
    assert!(waits > 0.0, "no append waited for room: the bound was never reached");
    assert!(moved("corelog_appends_total", &[]) >= n as f64);
    for (i, e) in endpoints.iter().enumerate() {
        let admitted = Scrape::of(*e).get("corelog_admitted_bytes", &[("group", "0")]);
        assert_eq!(admitted, 0.0, "node {i} holds {admitted} bytes admitted after all answers");
    }
    for n in nodes {
        n.shutdown().unwrap();
    }
}

/// Appends waiting for room at a leader that loses its quorum are answered (the leader steps
/// down, the appends it held are abandoned), their room is given back (a leak would leave
/// its bound full for good), and once the quorum returns, appends commit again.
#[test]
fn admitted_room_comes_back_when_a_leader_loses_its_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let (cfgs, Cluster { nodes, addrs, endpoints, leader, .. }) = bounded_cluster(dir.path());
    let mut nodes: Vec<Option<node::NodeHandle>> = nodes.into_iter().map(Some).collect();
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for i in &followers {
        nodes[*i].take().unwrap().shutdown().unwrap();
    }
    // The first of these fill the bound, the rest wait for room; none can commit.
    let outcomes = flood(&addrs[leader..=leader], 2000, Duration::from_secs(3));
    assert!(outcomes.iter().any(|o| o.is_err()), "every append committed without a quorum");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let admitted =
            Scrape::of(endpoints[leader]).get("corelog_admitted_bytes", &[("group", "0")]);
        if admitted == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{admitted} bytes still admitted without a quorum");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in &followers {
        nodes[*i] = Some(node::start(cfgs[*i].clone()).expect("restart"));
    }
    let outcomes = flood(&addrs, 1000, Duration::from_secs(60));
    assert!(outcomes.iter().all(|o| o.is_ok()), "appends after the quorum returned failed");
    for n in nodes.into_iter().flatten() {
        n.shutdown().unwrap();
    }
}

/// A leader whose commits stop (both followers gone) while it still leads: appends beyond its
/// bound wait `admission_wait_ms`, then are answered `Busy` saying why, before the leader
/// notices the lost quorum (its election timeout, 300 ms here, is longer than the wait).
#[test]
fn appends_that_find_no_room_within_the_admission_wait_are_answered_busy() {
    let dir = tempfile::tempdir().unwrap();
    let (_, Cluster { nodes, addrs, endpoints, leader, .. }) =
        metrics_cluster_with(dir.path(), |c| {
            c.message_bytes_max = 64 << 10;
            c.uncommitted_bytes_max = 64 << 10;
            c.admission_wait_ms = 50;
        });
    let mut nodes: Vec<Option<node::NodeHandle>> = nodes.into_iter().map(Some).collect();
    for i in (0..3).filter(|i| *i != leader) {
        nodes[i].take().unwrap().shutdown().unwrap();
    }
    let before = Scrape::of(endpoints[leader]);
    let outcomes = flood(&addrs[leader..=leader], 500, Duration::from_secs(2));
    assert!(outcomes.iter().all(|o| o.is_err()), "an append committed without a quorum");
    let busy = Scrape::of(endpoints[leader]).get("corelog_errors_total", &[("kind", "busy")])
        - before.get("corelog_errors_total", &[("kind", "busy")]);
    assert!(busy > 0.0, "no append was answered Busy after the admission wait");
    for n in nodes.into_iter().flatten() {
        n.shutdown().unwrap();
    }
}

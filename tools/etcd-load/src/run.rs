//! One measured run: connect every connection, warm up, measure, merge the histograms.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hdrhistogram::Histogram;
use serde_json::json;

/// Highest latency the histograms hold (µs); longer ones are clamped to it.
const MAX_US: u64 = 600_000_000;

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Every connection keeps one request in flight.
    Closed,
    /// Requests due at a fixed rate over all connections.
    Open { rate: f64 },
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub endpoints: Vec<String>,
    pub connections: usize,
    pub value_size: usize,
    pub key_space: u64,
    pub duration: Duration,
    pub warmup: Duration,
    pub seed: u64,
    pub mode: Mode,
    pub drain: Duration,
    pub timeout: Duration,
    /// Puts through etcd's gRPC API instead of its HTTP/JSON gateway.
    pub grpc: bool,
}

#[derive(Clone, Debug)]
pub struct RunResult {
    pub mode: Mode,
    /// `grpc` or `gateway` (HTTP/JSON).
    pub api: &'static str,
    pub connections: usize,
    pub value_size: usize,
    pub duration_s: f64,
    /// Puts completed inside the measured window, per second.
    pub puts_per_sec: f64,
    /// Latencies recorded: completions in the window (closed loop) or requests due in it
    /// (open loop).
    pub recorded: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Open loop: requests due in the window still unsent when the drain time ran out (their
    /// wait so far is in the histogram, a lower bound).
    pub unsent: u64,
    /// Open loop: requests due in the window that found their connection still busy.
    pub late_sends: u64,
    /// Open loop: how late the generator sent requests whose connection was idle (a
    /// sleeping thread woken late), p50 and p99, µs.
    pub wake_lag_p50_us: u64,
    pub wake_lag_p99_us: u64,
    /// CPU time of this process in the window per completed put, µs.
    pub gen_cpu_us_per_put: f64,
    /// CPU of this process in the window, % of one core.
    pub gen_cpu_pct: f64,
    /// CPU of the whole machine in the window (busy, all cores), % of all cores.
    pub machine_busy_pct: f64,
    /// CPU of the processes named `etcd` in the window, % of all cores.
    pub etcd_cpu_pct: f64,
    /// CPU of the processes named `etcd` in the window per completed put, µs.
    pub etcd_cpu_us_per_put: f64,
    /// CPU of everything else (machine minus etcd minus this generator), % of all cores: the
    /// other users of a shared machine.
    pub other_cpu_pct: f64,
    pub ncpu: usize,
    /// /proc/loadavg at the end of the window.
    pub loadavg: [f64; 3],
}

struct ThreadOut {
    lat: Histogram<u64>,
    wake_lag: Histogram<u64>,
    in_window: u64,
    unsent: u64,
    late_sends: u64,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_US)
}

/// xorshift64*: a small seeded generator for values and keys.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so nearby seeds give unrelated streams and 0 is fine.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// One connection to etcd, through its gateway or its gRPC API.
enum Client {
    Http { conn: crate::http::Conn, body: Vec<u8>, value_b64: Arc<str> },
    Grpc(crate::grpc::Conn),
}

impl Client {
    fn connect(
        cfg: &RunConfig,
        addr: &str,
        value: &[u8],
        value_b64: &Arc<str>,
    ) -> Result<Self, String> {
        if cfg.grpc {
            crate::grpc::Conn::connect(addr, cfg.timeout, bytes::Bytes::copy_from_slice(value))
                .map(Client::Grpc)
                .map_err(|e| e.to_string())
        } else {
            let conn = crate::http::Conn::connect(addr, cfg.timeout).map_err(|e| e.to_string())?;
            let body = Vec::with_capacity(value_b64.len() + 64);
            Ok(Client::Http { conn, body, value_b64: value_b64.clone() })
        }
    }

    /// Puts key number `key` and waits for the reply.
    fn put(&mut self, key: u64) -> Result<(), String> {
        match self {
            Client::Http { conn, body, value_b64 } => {
                put_body(body, key, value_b64);
                conn.put(body).map_err(|e| e.to_string())
            }
            Client::Grpc(conn) => conn.put(key_name(key).into_bytes()).map_err(|e| e.to_string()),
        }
    }
}

/// The key of key number `key`, the same through either API.
fn key_name(key: u64) -> String {
    format!("etcd-load/{key:016x}")
}

/// The JSON body of a put: `{"key":"<b64>","value":"<b64>"}`.
fn put_body(out: &mut Vec<u8>, key: u64, value_b64: &str) {
    out.clear();
    out.extend_from_slice(b"{\"key\":\"");
    out.extend_from_slice(B64.encode(key_name(key)).as_bytes());
    out.extend_from_slice(b"\",\"value\":\"");
    out.extend_from_slice(value_b64.as_bytes());
    out.extend_from_slice(b"\"}");
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    self_ticks: u64,
    /// CPU ticks of every process named `etcd` (the cluster under test, on this machine).
    etcd_ticks: u64,
    busy: u64,
    total: u64,
}

/// utime + stime of a /proc/PID/stat, and the command name.
fn proc_ticks(path: &std::path::Path) -> Option<(String, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let comm = s[s.find('(')? + 1..s.rfind(')')?].to_string();
    let f: Vec<&str> = s[s.rfind(')')? + 1..].split_whitespace().collect();
    // After the command: field 3 (state) is f[0]; utime and stime are fields 14 and 15.
    Some((comm, f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?))
}

fn sample() -> Sample {
    let at = Instant::now();
    let self_ticks = proc_ticks("/proc/self/stat".as_ref()).map_or(0, |(_, t)| t);
    let etcd_ticks = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                })
                .filter_map(|e| proc_ticks(&e.path().join("stat")))
                .filter(|(comm, _)| comm == "etcd")
                .map(|(_, t)| t)
                .sum()
        })
        .unwrap_or(0);
    let (busy, total) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("cpu "))?;
            let v: Vec<u64> =
                line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal
            let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?;
            Some((busy, busy + v.get(3)? + v.get(4)?))
        })
        .unwrap_or((0, 0));
    Sample { at, self_ticks, etcd_ticks, busy, total }
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<f64> = s.split_whitespace().take(3).filter_map(|x| x.parse().ok()).collect();
    [
        v.first().copied().unwrap_or(0.0),
        v.get(1).copied().unwrap_or(0.0),
        v.get(2).copied().unwrap_or(0.0),
    ]
}

pub fn run(cfg: &RunConfig) -> Result<RunResult, String> {
    let n = cfg.connections;
    let mut value = vec![0u8; cfg.value_size];
    let mut rng = Rng::new(cfg.seed);
    for chunk in value.chunks_mut(8) {
        let r = rng.next().to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    let value_b64: Arc<str> = B64.encode(&value).into();
    let value: Arc<[u8]> = value.into();
    let connected = Arc::new(Barrier::new(n + 1));
    let go = Arc::new(Barrier::new(n + 1));
    let start_at = Arc::new(OnceLock::<Instant>::new());
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));

    let mut handles = Vec::with_capacity(n);
    for c in 0..n {
        let cfg = cfg.clone();
        let (connected, go, start_at) = (connected.clone(), go.clone(), start_at.clone());
        let (stop, done, finished) = (stop.clone(), done.clone(), finished.clone());
        let first_error = first_error.clone();
        let (value, value_b64) = (value.clone(), value_b64.clone());
        let h = thread::Builder::new()
            .name(format!("conn-{c}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                let endpoint = &cfg.endpoints[c % cfg.endpoints.len()];
                let conn = Client::connect(&cfg, endpoint, &value, &value_b64)
                    .map_err(|e| format!("connection {c} to {endpoint}: connect: {e}"));
                connected.wait();
                go.wait();
                let start = *start_at.get().expect("start time set before the go barrier");
                let out = match conn {
                    Ok(conn) => connection(c, conn, &cfg, start, &stop, &done)
                        .map_err(|e| format!("connection {c} to {endpoint}: {e}")),
                    Err(e) => Err(e),
                };
                if let Err(e) = &out {
                    stop.store(true, Ordering::SeqCst);
                    first_error.lock().unwrap().get_or_insert_with(|| e.clone());
                }
                finished.fetch_add(1, Ordering::SeqCst);
                out.ok()
            })
            .map_err(|e| format!("spawning connection thread {c}: {e}"))?;
        handles.push(h);
    }
    connected.wait();
    let start = Instant::now() + Duration::from_millis(20);
    start_at.set(start).expect("start time set once");
    go.wait();
    let warm_end = start + cfg.warmup;
    let end = warm_end + cfg.duration;
    let label = match cfg.mode {
        Mode::Closed => format!("closed c={n}"),
        Mode::Open { rate } => format!("open {rate:.0}/s c={n}"),
    };

    // Progress once a second, and the CPU counters at the edges of the measured window.
    let (mut s0, mut s1) = (None, None);
    let mut tick = start + Duration::from_secs(1);
    let mut last_done = 0;
    // Until every thread is done and the window is over (an open loop's threads may finish
    // just before its end), or a thread failed.
    while (finished.load(Ordering::SeqCst) < n || s1.is_none()) && !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if s0.is_none() && now >= warm_end {
            s0 = Some(sample());
        }
        if s1.is_none() && now >= end {
            s1 = Some((sample(), loadavg()));
        }
        if now >= tick {
            let d = done.load(Ordering::Relaxed);
            let secs = (tick - start).as_secs();
            let phase = if tick <= warm_end {
                "warmup"
            } else if tick <= end {
                "measure"
            } else {
                "drain"
            };
            eprintln!("[{label}] {secs:>3}s {phase:<7} {:>7} puts/s", d - last_done);
            last_done = d;
            tick += Duration::from_secs(1);
        }
        let mut next = tick;
        if s0.is_none() {
            next = next.min(warm_end);
        }
        if s1.is_none() {
            next = next.min(end);
        }
        let now = Instant::now();
        thread::sleep(next.saturating_duration_since(now).min(Duration::from_millis(100)));
    }
    let failed = stop.load(Ordering::SeqCst);
    let mut outs = Vec::with_capacity(n);
    for h in handles {
        if let Some(o) = h.join().map_err(|_| "a connection thread panicked".to_string())? {
            outs.push(o);
        }
    }
    if let Some(e) = first_error.lock().unwrap().take() {
        return Err(e);
    }
    let (s0, (s1, load)) = match (s0, s1) {
        (Some(a), Some(b)) if !failed => (a, b),
        _ => return Err("a connection failed without saying why".into()),
    };

    let mut lat = new_hist();
    let mut wake_lag = new_hist();
    let (mut in_window, mut unsent, mut late_sends) = (0, 0, 0);
    for o in &outs {
        lat.add(&o.lat).expect("same histogram bounds");
        wake_lag.add(&o.wake_lag).expect("same histogram bounds");
        in_window += o.in_window;
        unsent += o.unsent;
        late_sends += o.late_sends;
    }
    let dur = cfg.duration.as_secs_f64();
    let window = (s1.at - s0.at).as_secs_f64().max(1e-9);
    let ncpu = thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let total = (s1.total - s0.total).max(1) as f64;
    let tck = clk_tck();
    let cpu_s = (s1.self_ticks - s0.self_ticks) as f64 / tck;
    let etcd_s = s1.etcd_ticks.saturating_sub(s0.etcd_ticks) as f64 / tck;
    let machine_pct = (s1.busy - s0.busy) as f64 / total * 100.0;
    let all_cores_pct = |secs: f64| secs / (window * ncpu as f64) * 100.0;
    let q = |p: f64| if lat.is_empty() { 0 } else { lat.value_at_quantile(p) };
    Ok(RunResult {
        api: if cfg.grpc { "grpc" } else { "gateway" },
        mode: cfg.mode,
        connections: n,
        value_size: cfg.value_size,
        duration_s: dur,
        puts_per_sec: in_window as f64 / dur,
        recorded: lat.len(),
        min_us: if lat.is_empty() { 0 } else { lat.min() },
        mean_us: lat.mean(),
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: if lat.is_empty() { 0 } else { lat.max() },
        unsent,
        late_sends,
        wake_lag_p50_us: if wake_lag.is_empty() { 0 } else { wake_lag.value_at_quantile(0.5) },
        wake_lag_p99_us: if wake_lag.is_empty() { 0 } else { wake_lag.value_at_quantile(0.99) },
        gen_cpu_us_per_put: if in_window == 0 { 0.0 } else { cpu_s * 1e6 / in_window as f64 },
        gen_cpu_pct: cpu_s / window * 100.0,
        machine_busy_pct: machine_pct,
        etcd_cpu_pct: all_cores_pct(etcd_s),
        etcd_cpu_us_per_put: if in_window == 0 { 0.0 } else { etcd_s * 1e6 / in_window as f64 },
        other_cpu_pct: (machine_pct - all_cores_pct(etcd_s) - all_cores_pct(cpu_s)).max(0.0),
        ncpu,
        loadavg: load,
    })
}

/// The loop of one connection; returns its histograms and counts.
fn connection(
    c: usize,
    mut conn: Client,
    cfg: &RunConfig,
    start: Instant,
    stop: &AtomicBool,
    done: &AtomicU64,
) -> Result<ThreadOut, String> {
    // Sleeps end on time (1 µs of timer slack instead of Linux's default 50 µs), as corelog
    // bench's pacers do: the lateness would count in every latency measured from a due time.
    // SAFETY: PR_SET_TIMERSLACK takes nanoseconds and touches only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
    let warm_end = start + cfg.warmup;
    let end = warm_end + cfg.duration;
    let mut rng = Rng::new(cfg.seed ^ ((c as u64 + 1) << 32));
    let mut out =
        ThreadOut { lat: new_hist(), wake_lag: new_hist(), in_window: 0, unsent: 0, late_sends: 0 };
    match cfg.mode {
        Mode::Closed => {
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let key = rng.next() % cfg.key_space;
                let t0 = Instant::now();
                conn.put(key)?;
                let t1 = Instant::now();
                done.fetch_add(1, Ordering::Relaxed);
                if t1 > warm_end && t1 <= end {
                    out.lat.saturating_record(us(t1 - t0));
                    out.in_window += 1;
                }
            }
        }
        Mode::Open { rate } => {
            let n = cfg.connections as f64;
            let deadline = end + cfg.drain;
            let due_of = |j: u64| start + Duration::from_secs_f64((c as f64 + j as f64 * n) / rate);
            let mut j = 0u64;
            loop {
                let due = due_of(j);
                if due >= end || stop.load(Ordering::Relaxed) {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    // Out of time: the rest of this connection's requests in the window were
                    // never sent; count each with its wait so far (a lower bound).
                    let mut k = j;
                    loop {
                        let d = due_of(k);
                        if d >= end {
                            break;
                        }
                        if d >= warm_end {
                            out.unsent += 1;
                            out.lat.saturating_record(us(now - d));
                        }
                        k += 1;
                    }
                    break;
                }
                let idle = now < due;
                if idle {
                    thread::sleep(due - now);
                }
                let key = rng.next() % cfg.key_space;
                let sent = Instant::now();
                conn.put(key)?;
                let t1 = Instant::now();
                done.fetch_add(1, Ordering::Relaxed);
                if due >= warm_end {
                    out.lat.saturating_record(us(t1 - due));
                    if idle {
                        out.wake_lag.saturating_record(us(sent.saturating_duration_since(due)));
                    } else {
                        out.late_sends += 1;
                    }
                }
                if t1 > warm_end && t1 <= end {
                    out.in_window += 1;
                }
                j += 1;
            }
        }
    }
    Ok(out)
}

impl RunResult {
    fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Closed => "closed",
            Mode::Open { .. } => "open",
        }
    }

    fn offered(&self) -> Option<f64> {
        match self.mode {
            Mode::Closed => None,
            Mode::Open { rate } => Some(rate),
        }
    }

    /// The human-readable report of the run.
    pub fn report(&self) -> String {
        let ms = |v: u64| format!("{:.2} ms", v as f64 / 1000.0);
        let mut s = format!(
            "{} loop, {} connections, {} B values, {:.0} s measured\n",
            self.mode_name(),
            self.connections,
            self.value_size,
            self.duration_s
        );
        if let Some(rate) = self.offered() {
            s += &format!(
                "  offered {:.0} puts/s, achieved {:.0} puts/s ({:.1}%)\n",
                rate,
                self.puts_per_sec,
                self.puts_per_sec / rate * 100.0
            );
        } else {
            s += &format!("  {:.0} puts/s\n", self.puts_per_sec);
        }
        s += &format!(
            "  latency{}: min {} mean {:.2} ms p50 {} p90 {} p99 {} p99.9 {} max {} ({} recorded)\n",
            if self.offered().is_some() { " from intended send time" } else { "" },
            ms(self.min_us),
            self.mean_us / 1000.0,
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us),
            self.recorded
        );
        if self.offered().is_some() {
            s += &format!(
                "  sent late because the connection was busy: {}; generator wake-up lag p50 {} \
                 p99 {}; unsent at the drain deadline: {}\n",
                self.late_sends,
                ms(self.wake_lag_p50_us),
                ms(self.wake_lag_p99_us),
                self.unsent
            );
        }
        s += &format!(
            "  generator CPU {:.1} µs/put ({:.0}% of one core); machine busy {:.0}% of {} cores \
             (etcd {:.0}% = {:.0} µs/put, others {:.0}%); load average {:.2} {:.2} {:.2}",
            self.gen_cpu_us_per_put,
            self.gen_cpu_pct,
            self.machine_busy_pct,
            self.ncpu,
            self.etcd_cpu_pct,
            self.etcd_cpu_us_per_put,
            self.other_cpu_pct,
            self.loadavg[0],
            self.loadavg[1],
            self.loadavg[2]
        );
        s
    }

    /// One grep-able line.
    pub fn summary_line(&self) -> String {
        format!(
            "SUMMARY etcd-load mode={} api={} connections={} value_size={} offered_per_sec={:.0} \
             puts_per_sec={:.0} p50_us={} p90_us={} p99_us={} p999_us={} max_us={} unsent={} \
             gen_cpu_us_per_put={:.1} etcd_cpu_pct={:.0} etcd_cpu_us_per_put={:.0} \
             other_cpu_pct={:.0} load1={:.2}",
            self.mode_name(),
            self.api,
            self.connections,
            self.value_size,
            self.offered().unwrap_or(0.0),
            self.puts_per_sec,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.unsent,
            self.gen_cpu_us_per_put,
            self.etcd_cpu_pct,
            self.etcd_cpu_us_per_put,
            self.other_cpu_pct,
            self.loadavg[0]
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "mode": self.mode_name(),
            "api": self.api,
            "connections": self.connections,
            "value_size": self.value_size,
            "duration_s": self.duration_s,
            "offered_per_sec": self.offered(),
            "puts_per_sec": self.puts_per_sec,
            "recorded": self.recorded,
            "min_us": self.min_us,
            "mean_us": self.mean_us,
            "p50_us": self.p50_us,
            "p90_us": self.p90_us,
            "p99_us": self.p99_us,
            "p999_us": self.p999_us,
            "max_us": self.max_us,
            "unsent": self.unsent,
            "late_sends": self.late_sends,
            "wake_lag_p50_us": self.wake_lag_p50_us,
            "wake_lag_p99_us": self.wake_lag_p99_us,
            "gen_cpu_us_per_put": self.gen_cpu_us_per_put,
            "gen_cpu_pct_of_one_core": self.gen_cpu_pct,
            "machine_busy_pct": self.machine_busy_pct,
            "etcd_cpu_pct": self.etcd_cpu_pct,
            "etcd_cpu_us_per_put": self.etcd_cpu_us_per_put,
            "other_cpu_pct": self.other_cpu_pct,
            "ncpu": self.ncpu,
            "loadavg": self.loadavg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// A fake gateway: a thread per connection answers each put after `answer(n)` says how
    /// (status, delay), n counting requests over all connections from 0.
    fn fake_gateway(answer: fn(u64) -> (u16, Duration)) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let count = Arc::new(AtomicU64::new(0));
        thread::spawn(move || {
            for s in listener.incoming() {
                let count = count.clone();
                thread::spawn(move || serve_conn(s.unwrap(), &count, answer));
            }
        });
        addr
    }

    fn serve_conn(mut s: TcpStream, count: &AtomicU64, answer: fn(u64) -> (u16, Duration)) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let head = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let text = String::from_utf8_lossy(&buf[..head]).into_owned();
            let len: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            while buf.len() < head + len {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            let body: serde_json::Value = serde_json::from_slice(&buf[head..head + len]).unwrap();
            assert!(body["key"].is_string() && body["value"].is_string());
            buf.drain(..head + len);
            let (status, delay) = answer(count.fetch_add(1, Ordering::SeqCst));
            thread::sleep(delay);
            let reply = if status == 200 { "{\"header\":{}}" } else { "{\"error\":\"no space\"}" };
            let msg =
                format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{reply}", reply.len());
            if s.write_all(msg.as_bytes()).is_err() {
                return;
            }
        }
    }

    fn cfg(addr: &str, connections: usize, mode: Mode, duration_ms: u64) -> RunConfig {
        RunConfig {
            endpoints: vec![addr.to_string()],
            connections,
            value_size: 100,
            key_space: 1000,
            duration: Duration::from_millis(duration_ms),
            warmup: Duration::from_millis(200),
            seed: 7,
            mode,
            drain: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            grpc: false,
        }
    }

    #[test]
    fn closed_loop_keeps_one_request_per_connection() {
        let addr = fake_gateway(|_| (200, Duration::from_millis(2)));
        let r = run(&cfg(&addr, 4, Mode::Closed, 1000)).unwrap();
        // Every put takes at least 2 ms and 4 are in flight: at most ~2,000/s.
        assert!(r.puts_per_sec <= 2100.0 && r.puts_per_sec >= 50.0, "{}", r.report());
        assert!(r.p50_us >= 2000 && r.min_us >= 2000, "{}", r.report());
        assert_eq!(r.recorded as f64, r.puts_per_sec * r.duration_s);
    }

    #[test]
    fn open_loop_counts_from_the_intended_send_time() {
        // 200 puts/s over 2 connections; put number 100 (0.5 s in, inside the window) stalls
        // its connection for 500 ms, during which ~50 more puts fall due on it. Measured from
        // their send time only one put would be slow; from their due time a quarter are.
        let addr = fake_gateway(|n| (200, Duration::from_millis(if n == 100 { 500 } else { 1 })));
        let r = run(&cfg(&addr, 2, Mode::Open { rate: 200.0 }, 1000)).unwrap();
        assert!(r.p90_us >= 100_000, "{}", r.report());
        assert!(r.max_us >= 490_000, "{}", r.report());
        assert!(r.late_sends >= 20, "{}", r.report());
        assert_eq!(r.unsent, 0);
        assert!(r.puts_per_sec >= 140.0 && r.puts_per_sec <= 210.0, "{}", r.report());
        // 200 due in the measured second, every one recorded.
        assert!((198..=202).contains(&r.recorded), "{}", r.report());
    }

    #[test]
    fn open_loop_counts_what_it_never_sent() {
        let addr = fake_gateway(|n| (200, Duration::from_millis(if n == 30 { 1500 } else { 1 })));
        let mut c = cfg(&addr, 1, Mode::Open { rate: 100.0 }, 500);
        c.drain = Duration::from_millis(100);
        let r = run(&c).unwrap();
        assert!(r.unsent > 0, "{}", r.report());
        assert_eq!(r.recorded, 50, "{}", r.report());
        assert!(r.max_us >= 500_000, "{}", r.report());
    }

    #[test]
    fn a_non_200_reply_fails_the_run() {
        let addr = fake_gateway(|n| (if n < 5 { 200 } else { 413 }, Duration::ZERO));
        let e = run(&cfg(&addr, 2, Mode::Closed, 300)).unwrap_err();
        assert!(e.contains("413") && e.contains("no space"), "{e}");
    }

    #[test]
    fn body_is_the_put_json() {
        let mut out = Vec::new();
        put_body(&mut out, 0x2a, "dmFs");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let key = B64.decode(v["key"].as_str().unwrap()).unwrap();
        assert_eq!(key, b"etcd-load/000000000000002a");
        assert_eq!(v["value"], "dmFs");
    }

    #[test]
    fn rng_depends_on_the_seed() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(1);
                move |_| r.next()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(2);
                move |_| r.next()
            })
            .collect();
        assert_ne!(a, b);
        assert_eq!(a, {
            let mut r = Rng::new(1);
            (0..4).map(|_| r.next()).collect::<Vec<_>>()
        });
    }
}

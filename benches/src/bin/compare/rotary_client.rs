//! The rotary side: one `Engine` on this thread, driven by `poll` and
//! `next_event`, exactly as an embedder without a host loop would.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rotary::{Config, Engine, Event, RequestId, RequestOptions, Trust};

use crate::measure::{self, Clock, Phase, Report};
use crate::ClientArgs;

fn engine(a: &ClientArgs, max_connections: usize) -> Result<Engine, String> {
    let mut config = Config::default();
    config.trust = Trust::pem_file(&a.ca);
    config.trust.post_quantum = !a.classical;
    config.policy.max_connections = max_connections;
    // Like hyper's pool: no age limit unless the workload asks for one, and
    // no idle close while measuring.
    config.policy.max_age = a.max_age;
    config.policy.idle_timeout = Some(Duration::from_secs(600));
    if a.close {
        config.policy.max_requests = Some(1);
    }
    // Default Resumption::Never: every connection is a full handshake.
    // 10,000 simultaneous handshakes queue at the server for seconds.
    config.timeouts.connect = Duration::from_secs(120);
    config.timeouts.handshake = Duration::from_secs(120);
    config.dns_threads = 1;
    Engine::new(config).map_err(|e| format!("rotary engine: {e}"))
}

fn request(a: &ClientArgs, uri: &http::Uri) -> http::Request<Bytes> {
    let mut req = http::Request::new(Bytes::new());
    *req.uri_mut() = uri.clone();
    if a.close {
        req.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    req
}

fn uri(a: &ClientArgs) -> Result<http::Uri, String> {
    a.url
        .parse()
        .map_err(|e| format!("bad url {:?}: {e}", a.url))
}

/// When each outstanding request was submitted. Ids come in allocation
/// order, so a window of slots from the oldest outstanding id does what a
/// map would without hashing: hyper's loop keeps its start time in a local,
/// and the harness should not cost one client more than the other.
#[derive(Default)]
struct Started {
    first: u64,
    slots: VecDeque<Option<Instant>>,
}

impl Started {
    fn insert(&mut self, id: RequestId) {
        if self.slots.is_empty() {
            self.first = id.get();
        }
        // Ids skipped (by requests not timed here) get empty slots.
        let at = id.get().saturating_sub(self.first) as usize;
        if at >= self.slots.len() {
            self.slots.resize(at + 1, None);
        }
        if let Some(slot) = self.slots.get_mut(at) {
            *slot = Some(Instant::now());
        }
    }

    fn remove(&mut self, id: RequestId) -> Option<Instant> {
        let at = usize::try_from(id.get().checked_sub(self.first)?).ok()?;
        let t0 = self.slots.get_mut(at)?.take();
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.first += 1;
        }
        t0
    }
}

/// Closed loop: `conns` requests always outstanding, a new one submitted as
/// each ends.
pub(crate) fn load(a: &ClientArgs) -> Result<Report, String> {
    let uri = uri(a)?;
    let max = if a.max_conns == 0 {
        a.conns
    } else {
        a.max_conns
    };
    let mut engine = engine(a, max)?;
    let stop = Arc::new(AtomicBool::new(false));
    let side = (a.side_handshakes > 0.0).then(|| {
        let (a, stop) = (a.clone(), stop.clone());
        std::thread::spawn(move || side_handshakes(&a, &stop))
    });
    let opts = RequestOptions::default();
    let mut clock = Clock::new(a.schedule);
    let mut started = Started::default();
    let mut latencies = measure::Latencies::default();
    let (mut completed, mut failed_total) = (0u64, 0u64);
    let (mut requests, mut failed) = (0u64, 0u64);
    let mut first_error: Option<String> = None;
    for _ in 0..a.conns {
        started.insert(engine.submit(request(a, &uri), opts));
    }
    while clock.phase() != Phase::Done {
        engine
            .poll(Some(Duration::from_millis(5)))
            .map_err(|e| format!("rotary poll: {e}"))?;
        while let Some(ev) = engine.next_event() {
            let (id, ok) = match ev {
                Event::Response { id, .. } => (id, true),
                Event::Failed { id, error, .. } => {
                    first_error.get_or_insert_with(|| error.to_string());
                    (id, false)
                }
                _ => continue,
            };
            let Some(t0) = started.remove(id) else {
                continue;
            };
            completed += 1;
            if !ok {
                failed_total += 1;
            }
            if clock.phase() == Phase::Measure {
                requests += 1;
                if ok {
                    latencies.record_since(t0);
                } else {
                    failed += 1;
                }
            }
            if clock.phase() != Phase::Done {
                started.insert(engine.submit(request(a, &uri), opts));
            }
        }
        clock.tick(completed)?;
    }
    stop.store(true, Ordering::Relaxed);
    let side_per_s = match side.map(|t| t.join()) {
        None => 0.0,
        Some(Ok(Ok(rate))) => rate,
        Some(Ok(Err(e))) => return Err(format!("side handshakes: {e}")),
        Some(Err(_)) => return Err("side handshakes: the thread panicked".into()),
    };
    if completed == failed_total {
        return Err(format!(
            "every request failed; first: {}",
            first_error.unwrap_or_default()
        ));
    }
    let stats = engine.stats();
    let mut w = clock.window();
    w.requests = requests;
    w.failed = failed;
    w.latencies_us = latencies;
    let mut r = Report::default();
    r.window(w)
        .put("failed_total", failed_total)
        .put("completed", completed)
        .put("opened", stats.connections_opened)
        .put("handshakes_full", stats.handshakes_full)
        .put("handshakes_resumed", stats.handshakes_resumed)
        .put("max_rss_kib", measure::cpu().max_rss_kib)
        .put("side_per_s", format!("{side_per_s:.1}"));
    engine.shutdown();
    Ok(r)
}

/// A second engine that opens connections at `a.side_handshakes` per second,
/// each carrying one `Connection: close` request (a full handshake, then a
/// close), until `stop`. Returns the rate achieved.
fn side_handshakes(a: &ClientArgs, stop: &AtomicBool) -> Result<f64, String> {
    let mut a = a.clone();
    a.close = true;
    a.max_age = None;
    let uri = uri(&a)?;
    // A few in flight at most: the pace, not a backlog, sets the rate.
    let mut engine = engine(&a, 4)?;
    let period = Duration::from_secs_f64(1.0 / a.side_handshakes);
    let started = Instant::now();
    let (mut next, mut in_flight, mut done) = (started, 0usize, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next && in_flight < 8 {
            engine.submit(request(&a, &uri), RequestOptions::default());
            in_flight += 1;
            next += period;
            continue;
        }
        let wait = next
            .saturating_duration_since(now)
            .min(Duration::from_millis(5));
        engine.poll(Some(wait)).map_err(|e| format!("poll: {e}"))?;
        while let Some(ev) = engine.next_event() {
            match ev {
                Event::Response { .. } => {
                    in_flight -= 1;
                    done += 1;
                }
                Event::Failed { error, .. } => return Err(error.to_string()),
                _ => {}
            }
        }
    }
    engine.shutdown();
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// Opens `idle` connections (each carries one request), holds them idle and
/// reports RSS per connection.
pub(crate) fn idle(a: &ClientArgs) -> Result<Report, String> {
    let uri = uri(a)?;
    let mut engine = engine(a, a.idle + 2)?;
    let opts = RequestOptions::default();
    // Warm: one connection and one exchange, so the TLS config, the codec
    // and the loop's own buffers exist before the baseline.
    engine
        .execute(request(a, &uri), opts)
        .map_err(|e| format!("warm-up request: {e}"))?;
    let before = measure::vm_rss_kib().ok_or("no VmRSS in /proc/self/status")?;
    let open_before = engine.stats().connections;
    for _ in 0..=a.idle {
        engine.submit(request(a, &uri), opts);
    }
    let (mut live, mut failed) = (a.idle + 1, 0usize);
    let mut first_error = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while live > 0 {
        if Instant::now() > deadline {
            return Err(format!("{live} of {} warming requests still open", a.idle));
        }
        engine
            .poll(Some(Duration::from_millis(100)))
            .map_err(|e| format!("rotary poll: {e}"))?;
        while let Some(ev) = engine.next_event() {
            match ev {
                Event::Response { .. } => live -= 1,
                Event::Failed { error, .. } => {
                    live -= 1;
                    failed += 1;
                    first_error.get_or_insert_with(|| error.to_string());
                }
                _ => {}
            }
        }
    }
    hold(&mut engine, Duration::from_millis(500))?;
    let after = measure::vm_rss_kib().ok_or("no VmRSS in /proc/self/status")?;
    let open = engine.stats().connections.saturating_sub(open_before);
    measure::trim_heap();
    let trimmed = measure::vm_rss_kib().unwrap_or(after);
    let mut r = Report::default();
    r.put("conns", open)
        .put("failed", failed)
        .put("rss_before_kib", before)
        .put("rss_after_kib", after)
        .put("rss_trimmed_kib", trimmed)
        .put(
            "kib_per_conn_trimmed",
            format!(
                "{:.2}",
                trimmed.saturating_sub(before) as f64 / open.max(1) as f64
            ),
        )
        .put(
            "kib_per_conn",
            format!(
                "{:.2}",
                after.saturating_sub(before) as f64 / open.max(1) as f64
            ),
        );
    if let Some(e) = first_error {
        r.put("first_error", e.replace(char::is_whitespace, "_"));
    }
    engine.shutdown();
    Ok(r)
}

fn hold(engine: &mut Engine, d: Duration) -> Result<(), String> {
    let until = Instant::now() + d;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        engine
            .poll(Some(left))
            .map_err(|e| format!("rotary poll: {e}"))?;
        while engine.next_event().is_some() {}
    }
}

/// Open file descriptors of this process (entries of `/proc/self/fd`, less
/// the one the listing itself holds open).
fn open_fds() -> Option<usize> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
    Some(n.saturating_sub(1))
}

/// The soak: `a.conns` keep-alive streams with
/// `a.max_age`, until `a.requests` completed or `a.soak_limit` passed,
/// sampling VmRSS and open fds every second; then a drain, after which
/// the engine's gauges must be zero.
pub(crate) fn soak(a: &ClientArgs) -> Result<Report, String> {
    let uri = uri(a)?;
    let max = if a.max_conns == 0 {
        a.conns
    } else {
        a.max_conns
    };
    let mut engine = engine(a, max)?;
    let fds_start = open_fds().ok_or("no /proc/self/fd")?;
    let opts = RequestOptions::default().deadline(Duration::from_secs(30));
    let total = a.requests.max(1);
    let warm_at = total / 10;
    let started = Instant::now();
    let until = started + a.soak_limit;
    let (mut submitted, mut completed, mut failed) = (0u64, 0u64, 0u64);
    let mut first_error: Option<String> = None;
    let mut rss_warm = None;
    // "t:rss_kib:fds" once a second.
    let mut series = Vec::new();
    let mut next_sample = started;
    let mut outstanding = 0usize;
    for _ in 0..a.conns {
        engine.submit(request(a, &uri), opts);
        submitted += 1;
        outstanding += 1;
    }
    while outstanding > 0 {
        engine
            .poll(Some(Duration::from_millis(50)))
            .map_err(|e| format!("rotary poll: {e}"))?;
        let now = Instant::now();
        let stop = now >= until;
        while let Some(ev) = engine.next_event() {
            let ok = match ev {
                Event::Response { response, .. } => response.status().is_success(),
                Event::Failed { error, .. } => {
                    first_error.get_or_insert_with(|| error.to_string());
                    false
                }
                _ => continue,
            };
            outstanding -= 1;
            completed += 1;
            if !ok {
                failed += 1;
            }
            if submitted < total && !stop {
                engine.submit(request(a, &uri), opts);
                submitted += 1;
                outstanding += 1;
            }
        }
        if now >= next_sample {
            let rss = measure::vm_rss_kib().unwrap_or(0);
            let fds = open_fds().unwrap_or(0);
            series.push(format!("{:.1}:{rss}:{fds}", (now - started).as_secs_f64()));
            if rss_warm.is_none() && completed >= warm_at {
                rss_warm = Some(rss);
            }
            next_sample += Duration::from_secs(1);
        }
    }
    let wall = started.elapsed();
    // Drain: no more requests; the connections expire (max age) and close.
    let drain_until = Instant::now() + Duration::from_secs(10);
    while engine.stats().connections > 0 && Instant::now() < drain_until {
        engine
            .poll(Some(Duration::from_millis(10)))
            .map_err(|e| format!("rotary poll: {e}"))?;
        while engine.next_event().is_some() {}
    }
    let stats = engine.stats();
    let rss_end = measure::vm_rss_kib().unwrap_or(0);
    let fds_end = open_fds().unwrap_or(0);
    series.push(format!(
        "{:.1}:{rss_end}:{fds_end}",
        started.elapsed().as_secs_f64()
    ));
    let rss_warm = rss_warm.unwrap_or(rss_end);
    let mut r = Report::default();
    r.put("requests", completed)
        .put("asked", total)
        .put("failed_total", failed)
        .put("wall_s", format!("{:.1}", wall.as_secs_f64()))
        .put("bounded", u8::from(completed < total))
        .put("opened", stats.connections_opened)
        .put("rss_warm_kib", rss_warm)
        .put("rss_end_kib", rss_end)
        .put(
            "rss_growth_kib",
            i64::try_from(rss_end).unwrap_or(i64::MAX) - i64::try_from(rss_warm).unwrap_or(0),
        )
        .put("fds_start", fds_start)
        .put("fds_end", fds_end)
        .put("gauge_connections", stats.connections)
        .put("gauge_timers", stats.timers)
        .put("gauge_queued", stats.queued)
        .put("gauge_in_flight", stats.in_flight)
        .put("series", series.join(","));
    if let Some(e) = first_error {
        r.put("first_error", e.replace(char::is_whitespace, "_"));
    }
    engine.shutdown();
    Ok(r)
}

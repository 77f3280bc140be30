//! Pacing and measuring the online resync: the token bucket behind `--resync-rate`, the
//! smoothed rate meter and ETA shown by `chironctl status`, and the words and numbers they are
//! shown with. Pure: every function takes the current time as an argument, so the arithmetic
//! is unit-tested with an injected clock, and the engine only calls in.

use std::time::{Duration, Instant};

/// Smallest accepted rate limit (64 KiB/s): below it one copy chunk would take longer than the
/// resync watchdog tolerates, and no real link is that slow.
pub const MIN_RATE: u64 = 64 * 1024;

/// How much the bucket may hold, in seconds of rate: bursts stay short (a quarter second), so
/// the limit holds over any window an admin would measure.
const BURST_SECONDS: f64 = 0.25;

/// Parses a rate in bytes per second: `0`, `unlimited` or `none` (no limit), or a number with
/// an optional binary suffix `K`, `M`, `G`, `T` (also `KiB`, `MB`, ...; all powers of 1024)
/// and an optional `/s`: `50M`, `2.5MiB/s`, `800K`, `1048576`.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    if matches!(lower.as_str(), "0" | "unlimited" | "none") {
        return Ok(0);
    }
    let body = lower.strip_suffix("/s").unwrap_or(&lower);
    let body = body
        .strip_suffix("ib")
        .or_else(|| body.strip_suffix('b'))
        .unwrap_or(body);
    let (number, unit) = match body.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => body.split_at(i),
        None => (body, ""),
    };
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => {
            return Err(format!(
                "'{t}' is not a rate (examples: 50M, 800K, 1G, 0 for unlimited)"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("'{t}' is not a rate (examples: 50M, 800K, 1G, 0 for unlimited)"))?;
    let bytes = value * scale as f64;
    if bytes == 0.0 {
        return Ok(0);
    }
    if bytes < MIN_RATE as f64 {
        return Err(format!(
            "rate '{t}' is below the minimum of 64K per second (use 0 for no limit)"
        ));
    }
    if bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("rate '{t}' is too large"));
    }
    Ok(bytes as u64)
}

/// A byte count for people: `512 B`, `1.5 KiB`, `12.3 MiB`, `4.0 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A rate limit for people: `unlimited` for 0, else `2.0 MiB/s`.
pub fn format_rate(bytes_per_sec: u64) -> String {
    if bytes_per_sec == 0 {
        "unlimited".into()
    } else {
        format!("{}/s", format_bytes(bytes_per_sec))
    }
}

/// A duration for people: `45s`, `12m03s`, `3h07m`, `2d04h`.
pub fn format_duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// A token bucket: `rate` bytes per second on average, bursts of at most a quarter second's
/// worth. Spending more than the bucket holds goes into debt; the caller waits the returned
/// time, which is how the copy loop is held to the rate. It starts empty, so not even the
/// first quarter second goes above the rate.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: u64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// An empty bucket at `now`; `rate` 0 means no limit.
    pub fn new(rate: u64, now: Instant) -> Self {
        let capacity = (rate as f64 * BURST_SECONDS).max(1.0);
        TokenBucket {
            rate,
            capacity,
            tokens: 0.0,
            last: now,
        }
    }

    /// The limit in bytes per second (0: none).
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The largest piece worth copying in one go: what the bucket holds when full (so one
    /// chunk never means a long silent wait), unlimited without a limit.
    pub fn chunk(&self) -> u64 {
        if self.rate == 0 {
            u64::MAX
        } else {
            self.capacity as u64
        }
    }

    /// Spends `n` bytes at `now`; returns how long to wait before going on (zero while the
    /// bucket is not in debt).
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.capacity);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate as f64)
        }
    }
}

/// Time constant of the smoothed rates: a few seconds, so the rate shown follows a change in
/// speed quickly but does not jump with every directory of small files.
const SMOOTHING_SECONDS: f64 = 5.0;

/// Samples closer together than this are ignored (the rate of a few milliseconds is noise).
const MIN_SAMPLE_GAP: Duration = Duration::from_millis(500);

/// No rate is given before the first sample is this old. Bytes are counted a chunk at a time
/// and the bucket may hold a quarter second's worth when the copy (re)starts, so a window of
/// T seconds may see up to `rate * T + capacity + chunk` = `rate * (T + 0.5)` bytes: over half
/// a second that read 2x the limit (3.0 MiB/s was shown for a 2 MiB/s limit), over two
/// seconds at most 1.25x.
const FIRST_WINDOW: Duration = Duration::from_secs(2);

/// Smoothed rates (bytes/s and entries/s) from counters sampled now and then, fed by whoever
/// looks (status file, health check, `chironctl`): for the first few seconds the average since
/// the first sample (one short window is noise), then an exponential moving average over
/// irregular intervals.
#[derive(Clone, Debug, Default)]
pub struct RateMeter {
    first: Option<(Instant, u64, u64)>,
    last: Option<(Instant, u64, u64)>,
    rates: Option<(f64, f64)>,
}

impl RateMeter {
    /// Feeds the counters' values at `now` and returns the smoothed (bytes/s, entries/s); zero
    /// until a sample [`FIRST_WINDOW`] after the first one was seen.
    pub fn sample(&mut self, now: Instant, bytes: u64, entries: u64) -> (u64, u64) {
        let (Some(first), Some((t, b, e))) = (self.first, self.last) else {
            self.first = Some((now, bytes, entries));
            self.last = self.first;
            return (0, 0);
        };
        let dt = now.saturating_duration_since(t);
        let first_window_over = now.saturating_duration_since(first.0) >= FIRST_WINDOW;
        if dt >= MIN_SAMPLE_GAP && first_window_over {
            let rate = |(t, b, e): (Instant, u64, u64)| {
                let secs = now.saturating_duration_since(t).as_secs_f64();
                (
                    bytes.saturating_sub(b) as f64 / secs,
                    entries.saturating_sub(e) as f64 / secs,
                )
            };
            let since_first = now.saturating_duration_since(first.0).as_secs_f64();
            self.rates = Some(match self.rates {
                Some((rb, re)) if since_first > SMOOTHING_SECONDS => {
                    let inst = rate((t, b, e));
                    let alpha = 1.0 - (-dt.as_secs_f64() / SMOOTHING_SECONDS).exp();
                    (rb + alpha * (inst.0 - rb), re + alpha * (inst.1 - re))
                }
                _ => rate(first),
            });
            self.last = Some((now, bytes, entries));
        }
        self.rates
            .map_or((0, 0), |(b, e)| (b.round() as u64, e.round() as u64))
    }
}

/// Seconds left for `done` of `total` at `per_sec`: None when the total or the rate is
/// unknown (never a made-up number).
pub fn eta(total: Option<u64>, done: u64, per_sec: u64) -> Option<u64> {
    let total = total?;
    if per_sec == 0 {
        return None;
    }
    Some(total.saturating_sub(done).div_ceil(per_sec))
}

/// Percent done, 0 to 100; None when the total is unknown. Capped at 99 while work remains
/// uncounted (done beyond total), so it never claims the end early.
pub fn percent(total: Option<u64>, done: u64) -> Option<u8> {
    let total = total?;
    if total == 0 {
        return Some(100);
    }
    if done >= total {
        return Some(99.min(100 * done / total) as u8);
    }
    Some((100 * done / total) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_parsed_with_binary_suffixes() {
        assert_eq!(parse_rate("0"), Ok(0));
        assert_eq!(parse_rate("unlimited"), Ok(0));
        assert_eq!(parse_rate("None"), Ok(0));
        assert_eq!(parse_rate("50M"), Ok(50 << 20));
        assert_eq!(parse_rate("50MiB/s"), Ok(50 << 20));
        assert_eq!(parse_rate("2.5m"), Ok(5 << 19));
        assert_eq!(parse_rate("800K"), Ok(800 << 10));
        assert_eq!(parse_rate("1G"), Ok(1 << 30));
        assert_eq!(parse_rate("1048576"), Ok(1 << 20));
        assert_eq!(parse_rate("64KB"), Ok(MIN_RATE));
        for bad in ["", "fast", "10X", "-5M", "1.2.3M", "M", "nan"] {
            let e = parse_rate(bad).unwrap_err();
            assert!(e.contains("not a rate"), "{bad}: {e}");
        }
        assert!(parse_rate("1K").unwrap_err().contains("minimum of 64K"));
        assert!(parse_rate("100").unwrap_err().contains("minimum"));
    }

    #[test]
    fn sizes_rates_and_durations_read_well() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(50 << 20), "50.0 MiB");
        assert_eq!(format_bytes(3 << 30), "3.0 GiB");
        assert_eq!(format_rate(0), "unlimited");
        assert_eq!(format_rate(2 << 20), "2.0 MiB/s");
        assert_eq!(format_duration(45), "45s");
        assert_eq!(format_duration(723), "12m03s");
        assert_eq!(format_duration(3 * 3600 + 7 * 60), "3h07m");
        assert_eq!(format_duration(2 * 86400 + 4 * 3600), "2d04h");
    }

    #[test]
    fn the_bucket_holds_the_rate_over_time() {
        let t0 = Instant::now();
        let rate = 1 << 20;
        let mut b = TokenBucket::new(rate, t0);
        assert_eq!(b.chunk(), rate / 4);
        // It starts empty: every chunk costs its time, the first one too.
        let wait = b.take(rate / 4, t0);
        assert!((wait.as_secs_f64() - 0.25).abs() < 1e-6, "{wait:?}");
        assert_eq!(b.take(0, t0 + wait), Duration::ZERO);
        // Copying 8 MiB as fast as the waits allow takes 8 s (the last wait included).
        let mut b = TokenBucket::new(rate, t0);
        let mut now = t0;
        let mut copied = 0;
        while copied < 8 * rate {
            let n = b.chunk();
            now += b.take(n, now);
            copied += n;
        }
        let took = now.duration_since(t0).as_secs_f64();
        assert!((7.99..=8.01).contains(&took), "{took}");
        // Idle time refills at most a full bucket.
        let later = now + Duration::from_secs(100);
        assert_eq!(b.take(rate / 4, later), Duration::ZERO);
        assert!(b.take(1, later) > Duration::ZERO);
        // No limit: never a wait, any chunk.
        let mut free = TokenBucket::new(0, t0);
        assert_eq!(free.chunk(), u64::MAX);
        assert_eq!(free.take(u64::MAX / 2, t0), Duration::ZERO);
        assert_eq!(free.rate(), 0);
    }

    #[test]
    fn the_meter_smooths_and_ignores_close_samples() {
        let t0 = Instant::now();
        let s = |secs: f64| t0 + Duration::from_secs_f64(secs);
        let mut m = RateMeter::default();
        assert_eq!(m.sample(t0, 0, 0), (0, 0));
        assert_eq!(m.sample(s(0.1), 1000, 10), (0, 0), "too close");
        // A burst at the start is no rate yet: the first window is two seconds.
        assert_eq!(m.sample(s(1.0), 1500, 100), (0, 0), "first window not over");
        // First window: its own rate.
        assert_eq!(m.sample(s(2.0), 2000, 200), (1000, 100));
        // A stall in the first seconds: the average since the start.
        assert_eq!(m.sample(s(3.0), 2000, 200), (667, 67));
        // Later, a moving average: back to steady, then a stall pulls it down gradually.
        for i in 4..=20 {
            m.sample(s(i as f64), 2000 + 1000 * (i - 3), 200);
        }
        let (b, _) = m.sample(s(21.0), 20000, 200);
        assert!((980..=1010).contains(&b), "{b}");
        let (b, e) = m.sample(s(22.0), 20000, 200);
        assert!((800..=850).contains(&b) && e < 10, "{b} {e}");
        let (b, _) = m.sample(s(60.0), 20000, 200);
        assert!(b < 10, "{b}");
    }

    #[test]
    fn eta_and_percent_are_only_given_when_known() {
        assert_eq!(eta(None, 5, 10), None);
        assert_eq!(eta(Some(100), 5, 0), None);
        assert_eq!(eta(Some(100), 5, 10), Some(10));
        assert_eq!(eta(Some(100), 150, 10), Some(0));
        assert_eq!(percent(None, 3), None);
        assert_eq!(percent(Some(0), 0), Some(100));
        assert_eq!(percent(Some(200), 50), Some(25));
        assert_eq!(percent(Some(200), 400), Some(99));
    }
}

//! The SLA policy: how long after opening a ticket of each priority is due.

use chrono::Duration;

use crate::types::Priority;

/// Response-time targets by priority; `None` means no due date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaPolicy {
    pub urgent: Option<Duration>,
    pub high: Option<Duration>,
    pub medium: Option<Duration>,
    pub low: Option<Duration>,
    pub none: Option<Duration>,
}

impl Default for SlaPolicy {
    /// CONTRACT §3: urgent 4 h, high 24 h, medium 72 h, low 120 h, none: no due date.
    fn default() -> Self {
        SlaPolicy {
            urgent: Some(Duration::hours(4)),
            high: Some(Duration::hours(24)),
            medium: Some(Duration::hours(72)),
            low: Some(Duration::hours(120)),
            none: None,
        }
    }
}

impl SlaPolicy {
    pub fn target(&self, priority: Priority) -> Option<Duration> {
        match priority {
            Priority::Urgent => self.urgent,
            Priority::High => self.high,
            Priority::Medium => self.medium,
            Priority::Low => self.low,
            Priority::None => self.none,
        }
    }

    /// Parses `urgent=4h,high=1d,low=off`: a comma-separated list of `priority=duration`, where a
    /// duration is a whole number with `m`, `h` or `d`, or `off`. Unnamed priorities keep
    /// their defaults.
    pub fn parse(spec: &str) -> Result<SlaPolicy, String> {
        let mut policy = SlaPolicy::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not priority=duration"))?;
            let priority: Priority = name.trim().parse().map_err(|e| format!("{name:?}: {e}"))?;
            let value = value.trim();
            let duration = if value == "off" {
                None
            } else {
                // At the last character, not byte: `4ü` is an error, not a panic.
                let (digits, unit) =
                    value.split_at(value.char_indices().last().map_or(0, |(i, _)| i));
                let n: i64 = digits
                    .parse()
                    .ok()
                    .filter(|n| *n > 0 && *n <= 100_000)
                    .ok_or_else(|| {
                        format!("{value:?} is not a positive whole number with m, h or d")
                    })?;
                Some(match unit {
                    "m" => Duration::minutes(n),
                    "h" => Duration::hours(n),
                    "d" => Duration::days(n),
                    _ => return Err(format!("{value:?} needs a unit: m, h or d")),
                })
            };
            match priority {
                Priority::Urgent => policy.urgent = duration,
                Priority::High => policy.high = duration,
                Priority::Medium => policy.medium = duration,
                Priority::Low => policy.low = duration,
                Priority::None => policy.none = duration,
            }
        }
        Ok(policy)
    }
}

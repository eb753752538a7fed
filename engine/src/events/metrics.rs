//! The counters behind `GET /api/v1/metrics/deliverability` (SparkPost's
//! `count_*` names): each shard counts its own events as they happen, in
//! time buckets, keyed by (routing domain, campaign, template, binding,
//! binding group); a request asks every shard for its sums and adds them.
//!
//! Owns: [`Metric`] (the names), [`ShardMetrics`] (one shard's buckets:
//! plain data in a `RefCell` of its `EventLog`, touched only by the shard's
//! thread, so the hot path takes no lock and no atomic), [`MetricsQuery`]
//! and its answer [`MetricsRows`]. Pure: the clock is passed in.
//! May call: std. Never: I/O.
//!
//! Resolution and retention: one bucket per minute for the last
//! [`METRICS_MINUTE_RETENTION_MIN`] minutes (a day), then the minute
//! buckets are added into hour buckets, kept [`METRICS_HOUR_RETENTION_H`]
//! hours (31 days), then dropped. A range is answered at the resolution
//! of the buckets it covers: a bucket counts when its start is in
//! `[from, to)`.
//!
//! Memory: a cell (one key in one bucket) is [`METRICS_CELL_BYTES`]
//! bytes; a shard keeps at most [`METRICS_CELLS_PER_SHARD_MAX`] cells
//! (about 17 MiB). Past it, the minute buckets but the current one are
//! rolled into their hours early; if that is not enough, new keys count
//! under the overflow key (every dimension `(other)`, one more cell per
//! bucket at most). Nothing is dropped before its retention. Names (domains, campaigns, ...) are interned per shard, at
//! most [`METRICS_NAMES_MAX`]; later ones are `(other)` too.
//!
//! Unique opens and clicks: the process remembers the recipients (a
//! 64-bit hash of message id, recipient and kind) seen opening or
//! clicking, at most [`METRICS_UNIQUE_SEEN_MAX`] (8 bytes each plus the
//! set's overhead, about 4 MiB), in [`UNIQUE_STRIPES`] sets each behind a
//! lock held for one insert: a tracking request may land on any shard, and
//! only a shared set counts a recipient once. This lock is on the tracking
//! endpoints' path only, never on mail's; a full stripe is cleared (its
//! recipients may then count as unique once more).
//!
//! Lost at restart: everything (the counters live in memory only; the
//! event log keeps the events).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

macro_rules! metrics {
    ($($variant:ident => $name:literal;)*) => {
        /// A counter, by SparkPost's metric name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Metric { $($variant,)* }

        impl Metric {
            pub const ALL: &'static [Metric] = &[$(Metric::$variant,)*];

            pub fn name(self) -> &'static str {
                match self { $(Metric::$variant => $name,)* }
            }
        }
    };
}

metrics! {
    Targeted => "count_targeted";
    Injected => "count_injected";
    Rejected => "count_rejected";
    PolicyRejection => "count_policy_rejection";
    Sent => "count_sent";
    Accepted => "count_accepted";
    Delivered => "count_delivered";
    DeliveredFirst => "count_delivered_first";
    DeliveredSubsequent => "count_delivered_subsequent";
    Bounce => "count_bounce";
    HardBounce => "count_hard_bounce";
    SoftBounce => "count_soft_bounce";
    BlockBounce => "count_block_bounce";
    AdminBounce => "count_admin_bounce";
    UndeterminedBounce => "count_undetermined_bounce";
    InbandBounce => "count_inband_bounce";
    Delayed => "count_delayed";
    DelayedFirst => "count_delayed_first";
    Rendered => "count_rendered";
    UniqueRendered => "count_unique_rendered";
    UniqueConfirmedOpened => "count_unique_confirmed_opened";
    Clicked => "count_clicked";
    UniqueClicked => "count_unique_clicked";
    RawClicked => "count_raw_clicked";
    MsgVolume => "total_msg_volume";
    DeliveryTimeFirst => "total_delivery_time_first";
    DeliveryTimeSubsequent => "total_delivery_time_subsequent";
}

/// How many counters a cell holds.
pub const METRIC_COUNT: usize = Metric::ALL.len();

impl Metric {
    pub fn parse(name: &str) -> Option<Metric> {
        Metric::ALL.iter().copied().find(|m| m.name() == name)
    }
}

/// Minute buckets kept (then rolled into hours).
pub const METRICS_MINUTE_RETENTION_MIN: u32 = 24 * 60;
/// Hour buckets kept (then dropped).
pub const METRICS_HOUR_RETENTION_H: u32 = 31 * 24;
/// Cells (a key in a bucket) one shard keeps at most.
pub const METRICS_CELLS_PER_SHARD_MAX: usize = 64 * 1024;
/// Bytes of one cell: its counters, key and bucket, and the hash map's
/// share (an estimate for the memory figure above).
pub const METRICS_CELL_BYTES: usize = METRIC_COUNT * 8 + 20 + 32;
/// Distinct names (domains, campaigns, templates, bindings) per shard.
pub const METRICS_NAMES_MAX: usize = 100_000;
/// Recipients remembered for unique opens and clicks (the whole process).
pub const METRICS_UNIQUE_SEEN_MAX: usize = 256 * 1024;
/// The name counted when a name cannot be kept.
pub const OTHER: &str = "(other)";

/// The dimensions a count is kept by, in the order of [`Key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Domain,
    Campaign,
    Template,
    Binding,
    BindingGroup,
}

impl Dimension {
    pub const ALL: [Dimension; 5] = [
        Dimension::Domain,
        Dimension::Campaign,
        Dimension::Template,
        Dimension::Binding,
        Dimension::BindingGroup,
    ];

    /// The field a row of `/deliverability/<dimension>` names its group by.
    pub fn field(self) -> &'static str {
        match self {
            Dimension::Domain => "domain",
            Dimension::Campaign => "campaign_id",
            Dimension::Template => "template_id",
            Dimension::Binding => "binding",
            Dimension::BindingGroup => "binding_group",
        }
    }
}

/// What one event is counted under (names as they came; domains are
/// lower-cased by [`ShardMetrics::count`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Labels<'a> {
    pub domain: &'a str,
    pub campaign: &'a str,
    pub template: &'a str,
    pub binding: &'a str,
    pub binding_group: &'a str,
}

/// Interned names: index 0 is the empty name, 1 is [`OTHER`].
type Key = [u32; 5];
type Counts = [u64; METRIC_COUNT];

const EMPTY_ID: u32 = 0;
const OTHER_ID: u32 = 1;
const OVERFLOW_KEY: Key = [OTHER_ID; 5];

/// One shard's counters.
pub struct ShardMetrics {
    names: Vec<Box<str>>,
    ids: HashMap<Box<str>, u32>,
    /// Minute number (unix minutes) → cells.
    minutes: BTreeMap<u32, HashMap<Key, Counts>>,
    /// Hour number (unix hours) → cells.
    hours: BTreeMap<u32, HashMap<Key, Counts>>,
    cells: usize,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One count: which metrics go up by how much.
pub type Increments<'a> = &'a [(Metric, u64)];

/// Rows of a shard's answer: the group's name (empty without grouping)
/// and its sums.
pub type MetricsRows = Vec<(String, Vec<u64>)>;

/// What a metrics request asks every shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsQuery {
    /// Unix minutes, `[from, to)`.
    pub from_min: u32,
    pub to_min: u32,
    pub group_by: Option<Dimension>,
    /// Per dimension (in [`Dimension::ALL`] order), the names allowed;
    /// empty: any.
    pub filters: [Vec<String>; 5],
    pub metrics: Vec<Metric>,
}

impl ShardMetrics {
    pub fn new() -> ShardMetrics {
        ShardMetrics {
            names: vec!["".into(), OTHER.into()],
            ids: HashMap::from([("".into(), EMPTY_ID), (OTHER.into(), OTHER_ID)]),
            minutes: BTreeMap::new(),
            hours: BTreeMap::new(),
            cells: 0,
        }
    }

    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        if self.names.len() >= METRICS_NAMES_MAX {
            return OTHER_ID;
        }
        let id = self.names.len() as u32;
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    /// Counts `increments` under `labels` at `unix_secs`.
    pub fn count(&mut self, unix_secs: u64, labels: &Labels<'_>, increments: Increments<'_>) {
        if increments.is_empty() {
            return;
        }
        let minute = (unix_secs / 60) as u32;
        self.roll(minute);
        let domain = labels.domain.to_ascii_lowercase();
        let mut key: Key = [
            self.intern(&domain),
            self.intern(labels.campaign),
            self.intern(labels.template),
            self.intern(labels.binding),
            self.intern(labels.binding_group),
        ];
        let bucket_new = !self.minutes.contains_key(&minute);
        let key_new = bucket_new || !self.minutes[&minute].contains_key(&key);
        if key_new && self.cells >= METRICS_CELLS_PER_SHARD_MAX {
            self.make_room(minute);
            if self.cells >= METRICS_CELLS_PER_SHARD_MAX {
                key = OVERFLOW_KEY;
            }
        }
        let bucket = self.minutes.entry(minute).or_default();
        let before = bucket.len();
        let counts = bucket.entry(key).or_insert([0; METRIC_COUNT]);
        for &(m, n) in increments {
            counts[m as usize] += n;
        }
        self.cells += bucket.len() - before;
    }

    /// Rolls minute buckets older than the retention into hours and drops
    /// hours older than theirs, as seen from `now_min`.
    fn roll(&mut self, now_min: u32) {
        let oldest_minute = now_min.saturating_sub(METRICS_MINUTE_RETENTION_MIN);
        while let Some((&m, _)) = self.minutes.first_key_value() {
            if m >= oldest_minute {
                break;
            }
            self.roll_minute(m);
        }
        let oldest_hour = (now_min / 60).saturating_sub(METRICS_HOUR_RETENTION_H);
        while let Some((&h, _)) = self.hours.first_key_value() {
            if h >= oldest_hour {
                break;
            }
            self.drop_hour(h);
        }
    }

    fn roll_minute(&mut self, minute: u32) {
        let cells = self.minutes.remove(&minute).expect("a minute bucket");
        self.cells -= cells.len();
        let hour = self.hours.entry(minute / 60).or_default();
        let before = hour.len();
        for (key, counts) in cells {
            let sum = hour.entry(key).or_insert([0; METRIC_COUNT]);
            for (s, c) in sum.iter_mut().zip(counts) {
                *s += c;
            }
        }
        self.cells += hour.len() - before;
    }

    fn drop_hour(&mut self, hour: u32) {
        let cells = self.hours.remove(&hour).expect("an hour bucket");
        self.cells -= cells.len();
    }

    /// Frees cells when full by rolling every minute but the current one
    /// into its hour (keys seen in several minutes then share a cell).
    fn make_room(&mut self, now_min: u32) {
        while self.cells >= METRICS_CELLS_PER_SHARD_MAX {
            match self.minutes.first_key_value() {
                Some((&m, _)) if m < now_min => self.roll_minute(m),
                _ => return,
            }
        }
    }

    /// Cells held (for the memory figure and tests).
    pub fn cells(&self) -> usize {
        self.cells
    }

    /// This shard's sums for `q`.
    pub fn query(&self, q: &MetricsQuery) -> MetricsRows {
        // The filters as interned ids (a name never seen matches nothing).
        let allowed: Vec<Option<HashSet<u32>>> = q
            .filters
            .iter()
            .enumerate()
            .map(|(i, names)| {
                (!names.is_empty()).then(|| {
                    names
                        .iter()
                        .filter_map(|n| {
                            let n = if i == 0 {
                                n.to_ascii_lowercase()
                            } else {
                                n.clone()
                            };
                            self.ids.get(n.as_str()).copied()
                        })
                        .collect()
                })
            })
            .collect();
        let mut groups: HashMap<u32, Vec<u64>> = HashMap::new();
        let mut add = |cells: &HashMap<Key, Counts>| {
            for (key, counts) in cells {
                let pass = allowed
                    .iter()
                    .zip(key)
                    .all(|(a, id)| a.as_ref().is_none_or(|set| set.contains(id)));
                if !pass {
                    continue;
                }
                let group = q.group_by.map_or(EMPTY_ID, |d| key[d as usize]);
                let sums = groups
                    .entry(group)
                    .or_insert_with(|| vec![0; q.metrics.len()]);
                for (s, m) in sums.iter_mut().zip(&q.metrics) {
                    *s += counts[*m as usize];
                }
            }
        };
        for (_, cells) in self.minutes.range(q.from_min..q.to_min.max(q.from_min)) {
            add(cells);
        }
        let (from_h, to_h) = (q.from_min.div_ceil(60), q.to_min.div_ceil(60));
        for (_, cells) in self.hours.range(from_h..to_h.max(from_h)) {
            add(cells);
        }
        groups
            .into_iter()
            .map(|(id, sums)| (self.names[id as usize].to_string(), sums))
            .collect()
    }
}

/// Stripes of the process-wide set of recipients seen opening or
/// clicking (a stripe's lock is held for one insert).
const UNIQUE_STRIPES: usize = 16;
static UNIQUE: [Mutex<Option<HashSet<u64>>>; UNIQUE_STRIPES] =
    [const { Mutex::new(None) }; UNIQUE_STRIPES];

/// Whether (message, recipient, kind) is seen for the first time by any
/// shard (for `count_unique_*`). A stripe that holds its share of
/// [`METRICS_UNIQUE_SEEN_MAX`] is cleared first.
pub fn first_time(message_id: &str, rcpt: &str, kind: &str) -> bool {
    // SipHash with fixed keys: every shard hashes alike.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (message_id, rcpt.to_ascii_lowercase(), kind).hash(&mut h);
    let h = h.finish();
    let mut stripe = UNIQUE[(h % UNIQUE_STRIPES as u64) as usize]
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let set = stripe.get_or_insert_with(HashSet::new);
    if set.len() >= METRICS_UNIQUE_SEEN_MAX / UNIQUE_STRIPES {
        set.clear();
    }
    set.insert(h)
}

/// Adds every shard's rows into one list, sorted by group name.
pub fn merge(parts: impl IntoIterator<Item = MetricsRows>, width: usize) -> MetricsRows {
    let mut all: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for rows in parts {
        for (name, sums) in rows {
            assert_eq!(sums.len(), width, "every shard answers the same metrics");
            let total = all.entry(name).or_insert_with(|| vec![0; width]);
            for (t, s) in total.iter_mut().zip(sums) {
                *t += s;
            }
        }
    }
    all.into_iter().collect()
}

/// Bounce class → the bounce metrics it adds to (SparkPost's categories,
/// MOMENTUM.md 4), besides `count_bounce` and `count_inband_bounce`.
pub fn bounce_category(class: u16) -> Metric {
    match class {
        10 | 30 | 90 => Metric::HardBounce,
        50..=54 => Metric::BlockBounce,
        25 | 80 => Metric::AdminBounce,
        1 => Metric::UndeterminedBounce,
        _ => Metric::SoftBounce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels<'a>(domain: &'a str, campaign: &'a str) -> Labels<'a> {
        Labels {
            domain,
            campaign,
            template: "",
            binding: "default",
            binding_group: "default",
        }
    }

    fn query(from_min: u32, to_min: u32, group_by: Option<Dimension>) -> MetricsQuery {
        MetricsQuery {
            from_min,
            to_min,
            group_by,
            filters: Default::default(),
            metrics: vec![Metric::Injected, Metric::Delivered],
        }
    }

    #[test]
    fn counts_sum_by_group_and_filter() {
        let mut m = ShardMetrics::new();
        let t = 1_800_000_000;
        m.count(t, &labels("A.example", "c1"), &[(Metric::Injected, 1)]);
        m.count(t + 1, &labels("a.example", "c2"), &[(Metric::Injected, 1)]);
        m.count(
            t + 61,
            &labels("b.example", "c1"),
            &[(Metric::Delivered, 1)],
        );
        let now = (t / 60) as u32;
        let rows = m.query(&query(now, now + 2, Some(Dimension::Domain)));
        let rows = merge([rows], 2);
        assert_eq!(
            rows,
            vec![
                ("a.example".into(), vec![2, 0]),
                ("b.example".into(), vec![0, 1])
            ]
        );
        let mut q = query(now, now + 2, Some(Dimension::Campaign));
        q.filters[0] = vec!["A.EXAMPLE".into()];
        let rows = merge([m.query(&q)], 2);
        assert_eq!(
            rows,
            vec![("c1".into(), vec![1, 0]), ("c2".into(), vec![1, 0])]
        );
        q.filters[0] = vec!["never.example".into()];
        assert!(m.query(&q).is_empty());
        let rows = merge([m.query(&query(now, now + 1, None))], 2);
        assert_eq!(rows, vec![("".into(), vec![2, 0])], "`to` excluded");
    }

    #[test]
    fn old_minutes_roll_into_hours_and_old_hours_go() {
        let mut m = ShardMetrics::new();
        let t0: u64 = 1_800_000_000 / 3600 * 3600;
        m.count(t0, &labels("a", ""), &[(Metric::Injected, 3)]);
        assert_eq!(m.cells(), 1);
        let later = t0 + u64::from(METRICS_MINUTE_RETENTION_MIN) * 60 + 120;
        m.count(later, &labels("a", ""), &[(Metric::Injected, 1)]);
        assert_eq!((m.minutes.len(), m.hours.len(), m.cells()), (1, 1, 2));
        let h0 = (t0 / 60) as u32;
        let rows = m.query(&query(h0, h0 + 60, None));
        assert_eq!(rows, vec![("".into(), vec![3, 0])], "the hour answers");
        let much_later = later + u64::from(METRICS_HOUR_RETENTION_H) * 3600;
        m.count(much_later, &labels("a", ""), &[(Metric::Injected, 1)]);
        assert_eq!(m.hours.len(), 1, "the first hour is gone");
        assert!(m.query(&query(h0, h0 + 60, None)).is_empty());
    }

    #[test]
    fn a_full_shard_rolls_early_then_counts_under_other() {
        let mut m = ShardMetrics::new();
        let t = 1_800_000_000;
        for i in 0..METRICS_CELLS_PER_SHARD_MAX {
            m.count(t, &labels(&format!("d{i}"), ""), &[(Metric::Injected, 1)]);
        }
        assert_eq!(m.cells(), METRICS_CELLS_PER_SHARD_MAX);
        m.count(t, &labels("late", ""), &[(Metric::Injected, 1)]);
        let now = (t / 60) as u32;
        let rows = m.query(&query(now, now + 1, Some(Dimension::Domain)));
        assert!(rows.iter().any(|(n, s)| n == OTHER && s[0] == 1));
        // A new minute: the full one rolls into its hour.
        m.count(t + 60, &labels("next", ""), &[(Metric::Injected, 1)]);
        assert!(
            m.cells() <= METRICS_CELLS_PER_SHARD_MAX + 2,
            "one overflow cell per bucket"
        );
        let total: u64 = m
            .query(&query(now - 60, now + 120, None))
            .iter()
            .map(|(_, s)| s[0])
            .sum();
        assert_eq!(total, METRICS_CELLS_PER_SHARD_MAX as u64 + 2);
    }

    #[test]
    fn unique_is_once_per_recipient_and_kind() {
        assert!(first_time("unique-m1", "a@b", "open"));
        assert!(!first_time("unique-m1", "A@B", "open"));
        assert!(first_time("unique-m1", "a@b", "click"));
        assert!(first_time("unique-m2", "a@b", "open"));
    }

    #[test]
    fn names_parse_and_bounces_classify() {
        assert_eq!(Metric::parse("count_clicked"), Some(Metric::Clicked));
        assert_eq!(Metric::parse("count_nothing"), None);
        assert_eq!(bounce_category(10), Metric::HardBounce);
        assert_eq!(bounce_category(51), Metric::BlockBounce);
        assert_eq!(bounce_category(22), Metric::SoftBounce);
        assert_eq!(bounce_category(1), Metric::UndeterminedBounce);
    }
}

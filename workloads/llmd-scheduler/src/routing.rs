//! The routing pipeline, as llm-d's scheduler runs it: filters (model, health, role) →
//! weighted scorers, each scoring a candidate in [0, 1] → a picker. Profiles come from the
//! routing configuration ([`crate::config::RoutingConfig`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;
use serde_json::Value;

use crate::config::{Role, RoutingConfig};
use crate::pool::Worker;
use crate::SchedulerError;

/// Default `threshold` of llm-d's load-aware scorer (waiting requests at which it reaches 0).
const LOAD_AWARE_THRESHOLD: f64 = 128.0;
/// Default uncached prompt tokens from which a request is split into prefill and decode legs
/// (llm-d's shipped P/D configuration).
pub const DEFAULT_PD_THRESHOLD: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scorer {
    /// Leading prompt blocks the worker holds (cache-manager's index), over the prompt's.
    PrecisePrefix,
    /// The same, from the scheduler's own record of what it routed where.
    ApproxPrefix,
    /// (max − q) / (max − min) over the candidates' waiting queues.
    Queue,
    /// 1 − KV cache usage.
    KvUtilization,
    /// (max − a) / (max − min) over requests this scheduler has in flight at each.
    ActiveRequests,
    /// 1 for the worker the client's session token names.
    SessionAffinity,
    /// 0.5 at an empty queue, falling linearly to 0 at `threshold` waiting requests.
    LoadAware { threshold: f64 },
    /// llm-d's no-hit-lru-scorer: for a cold prompt (no worker holds more than `threshold`
    /// of its blocks; 0: none holds any), 1 for the worker that least recently got a cold
    /// prompt falling to 0 for the most recent, so that new prefixes spread over the
    /// workers instead of following load signals that have not moved yet; 0.5 for all
    /// when the prompt is warm.
    NoHitLru { threshold: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Picker {
    MaxScore,
    Random,
    WeightedRandom,
    RoundRobin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    Prefill,
    Decode,
}

enum Plugin {
    Scorer(Scorer),
    Picker(Picker),
    Filter(Filter),
    PdHandler { threshold: usize },
}

fn plugin(kind: &str, params: Option<&Value>) -> Result<Plugin, SchedulerError> {
    let num = |key: &str| params.and_then(|p| p.get(key)).and_then(Value::as_f64);
    Ok(match kind {
        "precise-prefix-cache-scorer" => Plugin::Scorer(Scorer::PrecisePrefix),
        "prefix-cache-scorer" => Plugin::Scorer(Scorer::ApproxPrefix),
        "queue-scorer" => Plugin::Scorer(Scorer::Queue),
        "kv-cache-utilization-scorer" => Plugin::Scorer(Scorer::KvUtilization),
        "active-request-scorer" => Plugin::Scorer(Scorer::ActiveRequests),
        "session-affinity-scorer" => Plugin::Scorer(Scorer::SessionAffinity),
        "no-hit-lru-scorer" => {
            let threshold = num("threshold").unwrap_or(0.0);
            if !(0.0..1.0).contains(&threshold) {
                return Err(SchedulerError::Config(
                    "no-hit-lru-scorer threshold must be a fraction in [0, 1)".into(),
                ));
            }
            Plugin::Scorer(Scorer::NoHitLru { threshold })
        }
        "load-aware-scorer" => {
            let threshold = num("threshold").unwrap_or(LOAD_AWARE_THRESHOLD);
            if !(threshold > 0.0 && threshold.is_finite()) {
                return Err(SchedulerError::Config(
                    "load-aware-scorer threshold must be a positive number".into(),
                ));
            }
            Plugin::Scorer(Scorer::LoadAware { threshold })
        }
        "max-score-picker" => Plugin::Picker(Picker::MaxScore),
        "random-picker" => Plugin::Picker(Picker::Random),
        "weighted-random-picker" => Plugin::Picker(Picker::WeightedRandom),
        "round-robin-picker" => Plugin::Picker(Picker::RoundRobin),
        "prefill-filter" => Plugin::Filter(Filter::Prefill),
        "decode-filter" => Plugin::Filter(Filter::Decode),
        "pd-profile-handler" => {
            // llm-d names it `threshold`; its newer decider `nonCachedTokens`.
            let t = num("threshold")
                .or_else(|| num("nonCachedTokens"))
                .unwrap_or(DEFAULT_PD_THRESHOLD as f64);
            if !(t >= 0.0 && t.is_finite()) {
                return Err(SchedulerError::Config(
                    "pd-profile-handler threshold must be a non-negative number".into(),
                ));
            }
            Plugin::PdHandler {
                threshold: t as usize,
            }
        }
        other => {
            return Err(SchedulerError::Config(format!(
                "unknown routing plugin type {other:?}"
            )))
        }
    })
}

impl Scorer {
    pub fn name(self) -> &'static str {
        match self {
            Scorer::PrecisePrefix => "precise-prefix-cache-scorer",
            Scorer::ApproxPrefix => "prefix-cache-scorer",
            Scorer::Queue => "queue-scorer",
            Scorer::KvUtilization => "kv-cache-utilization-scorer",
            Scorer::ActiveRequests => "active-request-scorer",
            Scorer::SessionAffinity => "session-affinity-scorer",
            Scorer::LoadAware { .. } => "load-aware-scorer",
            Scorer::NoHitLru { .. } => "no-hit-lru-scorer",
        }
    }

    /// Whether this scorer needs the prompt's tokens.
    pub fn needs_prefix(self) -> bool {
        matches!(
            self,
            Scorer::PrecisePrefix | Scorer::ApproxPrefix | Scorer::NoHitLru { .. }
        )
    }
}

pub struct Profile {
    pub name: String,
    filters: Vec<Filter>,
    pub scorers: Vec<(Scorer, f64)>,
    pub picker: Picker,
    cursor: AtomicUsize,
    /// no-hit-lru-scorer: when each worker last got a cold prompt (a sequence number).
    cold_picks: std::sync::Mutex<HashMap<String, u64>>,
    cold_seq: std::sync::atomic::AtomicU64,
}

impl Profile {
    pub fn needs_prefix(&self) -> bool {
        self.scorers.iter().any(|(s, _)| s.needs_prefix())
    }
}

/// All profiles of a routing configuration, and which serve which leg.
pub struct Profiles {
    decode: Arc<Profile>,
    prefill: Arc<Profile>,
    pub pd_threshold: usize,
}

impl Profiles {
    /// `select` names the profile for every leg (`--profile`); without it a configuration
    /// with `decode` (and `prefill`) profiles uses them, else its `default` profile, else
    /// its only one.
    pub fn build(cfg: &RoutingConfig, select: Option<&str>) -> Result<Self, SchedulerError> {
        let mut plugins = HashMap::new();
        let mut pd_threshold = DEFAULT_PD_THRESHOLD;
        for p in &cfg.plugins {
            let built = plugin(&p.kind, p.parameters.as_ref())?;
            if let Plugin::PdHandler { threshold } = built {
                pd_threshold = threshold;
            }
            if plugins.insert(p.name().to_string(), built).is_some() {
                return Err(SchedulerError::Config(format!(
                    "two routing plugins are named {:?}",
                    p.name()
                )));
            }
        }
        let mut profiles = HashMap::new();
        for spec in &cfg.scheduling_profiles {
            let mut filters = Vec::new();
            let mut scorers = Vec::new();
            let mut picker = None;
            for r in &spec.plugins {
                let p = plugins.get(r.plugin_ref.as_str()).ok_or_else(|| {
                    SchedulerError::Config(format!(
                        "profile {:?} refers to plugin {:?}, which the config does not define",
                        spec.name, r.plugin_ref
                    ))
                })?;
                match p {
                    Plugin::Scorer(s) => {
                        let w = r.weight.unwrap_or(1.0);
                        if !(w >= 0.0 && w.is_finite()) {
                            return Err(SchedulerError::Config(format!(
                                "weight of {:?} in profile {:?} must be a non-negative number",
                                r.plugin_ref, spec.name
                            )));
                        }
                        scorers.push((*s, w));
                    }
                    Plugin::Picker(k) => {
                        if picker.replace(*k).is_some() {
                            return Err(SchedulerError::Config(format!(
                                "profile {:?} has more than one picker",
                                spec.name
                            )));
                        }
                    }
                    Plugin::Filter(f) => filters.push(*f),
                    Plugin::PdHandler { .. } => {}
                }
            }
            let profile = Profile {
                name: spec.name.clone(),
                filters,
                scorers,
                picker: picker.unwrap_or(Picker::MaxScore),
                cursor: AtomicUsize::new(0),
                cold_picks: std::sync::Mutex::new(HashMap::new()),
                cold_seq: std::sync::atomic::AtomicU64::new(0),
            };
            profiles.insert(spec.name.clone(), Arc::new(profile));
        }
        let get = |name: &str| {
            profiles.get(name).cloned().ok_or_else(|| {
                let mut known: Vec<&String> = profiles.keys().collect();
                known.sort();
                SchedulerError::Config(format!(
                    "no routing profile named {name:?} (the config has {known:?})"
                ))
            })
        };
        let (decode, prefill) = match select {
            Some(name) => (get(name)?, get(name)?),
            None if profiles.contains_key("decode") => {
                let d = get("decode")?;
                (d.clone(), profiles.get("prefill").cloned().unwrap_or(d))
            }
            None if profiles.contains_key("default") => (get("default")?, get("default")?),
            None if profiles.len() == 1 => {
                let only = profiles.values().next().cloned().ok_or_else(|| {
                    SchedulerError::Config("the routing config has no profile".into())
                })?;
                (only.clone(), only)
            }
            None => {
                return Err(SchedulerError::Config(
                    "the routing config needs a `default` or `decode` profile, or --profile".into(),
                ))
            }
        };
        Ok(Self {
            decode,
            prefill,
            pd_threshold,
        })
    }

    pub fn decode(&self) -> &Arc<Profile> {
        &self.decode
    }

    pub fn prefill(&self) -> &Arc<Profile> {
        &self.prefill
    }

    pub fn needs_prefix(&self) -> bool {
        self.decode.needs_prefix() || self.prefill.needs_prefix()
    }
}

/// What the scorers know of the request.
pub struct RequestView<'a> {
    /// Full blocks of the prompt (0: not tokenized).
    pub total_blocks: usize,
    /// Leading blocks each worker holds per the cache-manager; `None`: not asked or no
    /// answer (then the precise scorer gives every worker 0 and load alone decides).
    pub precise: Option<&'a HashMap<String, usize>>,
    /// Leading blocks per the scheduler's own record.
    pub approx: &'a HashMap<String, usize>,
    /// Whether a cache-manager is configured; without one the precise scorer reads the
    /// scheduler's own record.
    pub has_cache_manager: bool,
    pub session: Option<&'a str>,
}

impl RequestView<'_> {
    /// Leading blocks of the prompt `worker` holds, by the best source there is.
    pub fn held_blocks(&self, worker: &str) -> usize {
        match (self.has_cache_manager, self.precise) {
            (true, Some(p)) => p.get(worker).copied().unwrap_or(0),
            (true, None) => 0,
            (false, _) => self.approx.get(worker).copied().unwrap_or(0),
        }
    }

    /// The share of the prompt's blocks `worker` holds.
    fn held_fraction(&self, worker: &str) -> f64 {
        if self.total_blocks == 0 {
            return 0.0;
        }
        self.held_blocks(worker) as f64 / self.total_blocks as f64
    }
}

/// One candidate's scores.
#[derive(Debug, Clone)]
pub struct Scored {
    pub worker: Arc<Worker>,
    pub parts: Vec<(&'static str, f64)>,
    pub total: f64,
}

/// Which leg a pick is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// A whole request or the decode leg.
    Decode,
    Prefill,
}

/// The candidates for `leg` of a request for `model`: healthy, serving the model, in the
/// right role, passing the profile's filters.
pub fn candidates(
    profile: &Profile,
    workers: &[Arc<Worker>],
    model: &str,
    leg: Leg,
) -> Vec<Arc<Worker>> {
    workers
        .iter()
        .filter(|w| w.healthy() && w.serves(model))
        .filter(|w| match leg {
            Leg::Decode => w.role.decodes(),
            Leg::Prefill => w.role == Role::Prefill,
        })
        .filter(|w| {
            profile.filters.iter().all(|f| match f {
                Filter::Prefill => w.role == Role::Prefill,
                Filter::Decode => w.role.decodes(),
            })
        })
        .cloned()
        .collect()
}

/// Scores every candidate, then orders them: the picked one first, then the rest by score
/// (the order retries follow).
pub fn rank(profile: &Profile, cands: Vec<Arc<Worker>>, view: &RequestView) -> Vec<Scored> {
    if cands.is_empty() {
        return Vec::new();
    }
    let loads: Vec<_> = cands.iter().map(|w| w.load()).collect();
    let (qmin, qmax) = min_max(loads.iter().map(|l| l.waiting));
    let (amin, amax) = min_max(loads.iter().map(|l| l.active as f64));
    let spread = |v: f64, min: f64, max: f64| {
        if max > min {
            (max - v) / (max - min)
        } else {
            1.0
        }
    };
    // no-hit-lru-scorer: is the prompt cold, and each candidate's rank by how long ago it
    // got a cold prompt (never first).
    let no_hit = profile.scorers.iter().find_map(|(s, _)| match s {
        Scorer::NoHitLru { threshold } => Some(*threshold),
        _ => None,
    });
    let cold = no_hit.is_some_and(|threshold| {
        let best = cands
            .iter()
            .map(|w| view.held_fraction(&w.id))
            .fold(0.0, f64::max);
        best <= threshold
    });
    let lru_score: HashMap<String, f64> = if cold {
        let picks = profile
            .cold_picks
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let mut order: Vec<(Option<u64>, &str)> = cands
            .iter()
            .map(|w| (picks.get(&w.id).copied(), w.id.as_str()))
            .collect();
        order.sort();
        let n = order.len();
        order
            .iter()
            .enumerate()
            .map(|(i, &(_, id))| {
                let v = if n > 1 {
                    1.0 - i as f64 / (n - 1) as f64
                } else {
                    1.0
                };
                (id.to_string(), v)
            })
            .collect()
    } else {
        HashMap::new()
    };
    let mut scored: Vec<Scored> = cands
        .into_iter()
        .zip(&loads)
        .map(|(w, l)| {
            let mut total = 0.0;
            let parts = profile
                .scorers
                .iter()
                .map(|&(s, weight)| {
                    let v = match s {
                        Scorer::PrecisePrefix if view.total_blocks > 0 => {
                            view.held_blocks(&w.id) as f64 / view.total_blocks as f64
                        }
                        Scorer::ApproxPrefix if view.total_blocks > 0 => {
                            view.approx.get(&w.id).copied().unwrap_or(0) as f64
                                / view.total_blocks as f64
                        }
                        Scorer::PrecisePrefix | Scorer::ApproxPrefix => 0.0,
                        Scorer::Queue => spread(l.waiting, qmin, qmax),
                        Scorer::KvUtilization => (1.0 - l.kv_usage).clamp(0.0, 1.0),
                        Scorer::ActiveRequests => spread(l.active as f64, amin, amax),
                        Scorer::SessionAffinity => f64::from(u8::from(view.session == Some(&w.id))),
                        Scorer::LoadAware { threshold } => {
                            0.5 * (1.0 - (l.waiting / threshold).min(1.0))
                        }
                        Scorer::NoHitLru { .. } if cold => {
                            lru_score.get(&w.id).copied().unwrap_or(0.0)
                        }
                        Scorer::NoHitLru { .. } => 0.5,
                    };
                    total += weight * v;
                    (s.name(), v)
                })
                .collect();
            Scored {
                worker: w,
                parts,
                total,
            }
        })
        .collect();
    let pick = match profile.picker {
        Picker::MaxScore => {
            let best = scored.iter().map(|s| s.total).fold(f64::MIN, f64::max);
            // Ties go to the one with the fewest requests in flight from here, then to a
            // random one: a burst of cold prompts arrives before any load is scraped, and
            // a random pick alone would stack several on one worker while others idle
            // (with 64 workers, a third got nothing) — and prefix affinity keeps them there.
            let ties: Vec<usize> = (0..scored.len())
                .filter(|&i| scored[i].total >= best - 1e-9)
                .collect();
            let least = ties
                .iter()
                .map(|&i| loads_of(&scored[i]))
                .min()
                .unwrap_or(0);
            let ties: Vec<usize> = ties
                .into_iter()
                .filter(|&i| loads_of(&scored[i]) == least)
                .collect();
            ties[rand::rng().random_range(0..ties.len())]
        }
        Picker::Random => rand::rng().random_range(0..scored.len()),
        Picker::WeightedRandom => {
            let sum: f64 = scored.iter().map(|s| s.total.max(0.0)).sum();
            if sum > 0.0 {
                let mut x = rand::rng().random_range(0.0..sum);
                let mut chosen = scored.len() - 1;
                for (i, s) in scored.iter().enumerate() {
                    x -= s.total.max(0.0);
                    if x < 0.0 {
                        chosen = i;
                        break;
                    }
                }
                chosen
            } else {
                rand::rng().random_range(0..scored.len())
            }
        }
        Picker::RoundRobin => profile.cursor.fetch_add(1, Ordering::Relaxed) % scored.len(),
    };
    let first = scored.swap_remove(pick);
    if cold {
        let seq = profile.cold_seq.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = profile.cold_picks.lock() {
            m.insert(first.worker.id.clone(), seq);
        }
    }
    scored.sort_by(|a, b| b.total.total_cmp(&a.total));
    scored.insert(0, first);
    scored
}

fn loads_of(s: &Scored) -> usize {
    s.worker.active.load(Ordering::Relaxed)
}

fn min_max(it: impl Iterator<Item = f64>) -> (f64, f64) {
    it.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::WorkerSpec;
    use crate::pool::Load;

    fn worker(port: u16, role: Role, waiting: f64, kv: f64) -> Arc<Worker> {
        let w = Worker::new(&WorkerSpec {
            url: format!("http://127.0.0.1:{port}"),
            role,
            model: Some("m".into()),
        })
        .unwrap();
        w.set_healthy_for_test(Load {
            waiting,
            running: 0.0,
            kv_usage: kv,
            active: 0,
        });
        Arc::new(w)
    }

    fn view<'a>(
        total: usize,
        precise: Option<&'a HashMap<String, usize>>,
        approx: &'a HashMap<String, usize>,
    ) -> RequestView<'a> {
        RequestView {
            total_blocks: total,
            precise,
            approx,
            has_cache_manager: true,
            session: None,
        }
    }

    #[test]
    fn default_profile_prefers_the_cached_worker_and_then_the_idle_one() {
        let p = Profiles::build(&RoutingConfig::builtin(), None).unwrap();
        let ws = vec![
            worker(1, Role::Decode, 0.0, 0.1),
            worker(2, Role::Decode, 0.0, 0.1),
            worker(3, Role::Decode, 5.0, 0.1),
            worker(4, Role::Prefill, 0.0, 0.0),
        ];
        let c = candidates(p.decode(), &ws, "m", Leg::Decode);
        assert_eq!(c.len(), 3);
        let precise: HashMap<String, usize> = [("127.0.0.1:2".to_string(), 8)].into();
        let none = HashMap::new();
        let r = rank(p.decode(), c.clone(), &view(10, Some(&precise), &none));
        assert_eq!(r[0].worker.id, "127.0.0.1:2");
        assert_eq!(r[0].parts[0], ("precise-prefix-cache-scorer", 0.8));
        // No prefix anywhere: the loaded worker is never picked.
        for _ in 0..20 {
            let r = rank(p.decode(), c.clone(), &view(10, Some(&none), &none));
            assert_ne!(r[0].worker.id, "127.0.0.1:3");
            assert_eq!(r.len(), 3);
        }
        // Cache-manager unreachable: prefix scores 0, load decides.
        let r = rank(p.decode(), c, &view(10, None, &none));
        assert_eq!(r[0].parts[0].1, 0.0);
    }

    /// Equal scores (a cold prompt before any load is scraped) go to the worker with the
    /// fewest requests in flight from this scheduler, not to a random one.
    #[test]
    fn max_score_ties_go_to_the_least_busy() {
        let p = Profiles::build(&RoutingConfig::builtin(), None).unwrap();
        let ws: Vec<_> = (1..=4).map(|i| worker(i, Role::Both, 0.0, 0.0)).collect();
        for (i, w) in ws.iter().enumerate() {
            w.active
                .store(if i == 2 { 0 } else { 2 }, Ordering::Relaxed);
        }
        let none = HashMap::new();
        for _ in 0..20 {
            let c = candidates(p.decode(), &ws, "m", Leg::Decode);
            let r = rank(p.decode(), c, &view(10, Some(&none), &none));
            assert_eq!(r[0].worker.id, "127.0.0.1:3");
        }
    }

    /// no-hit-lru-scorer: cold prompts (below the hit threshold everywhere) go to the
    /// worker that least recently got one, so new prefixes spread even before any load is
    /// scraped; a warm prompt is left to the prefix scorer.
    #[test]
    fn no_hit_lru_spreads_cold_prompts() {
        let cfg: RoutingConfig = serde_yaml_ng::from_str(
            "plugins:\n- type: precise-prefix-cache-scorer\n- type: no-hit-lru-scorer\n  parameters: {threshold: 0.25}\n- type: max-score-picker\nschedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: precise-prefix-cache-scorer\n    weight: 3\n  - pluginRef: no-hit-lru-scorer\n    weight: 2\n  - pluginRef: max-score-picker\n",
        )
        .unwrap();
        let p = Profiles::build(&cfg, None).unwrap();
        let ws: Vec<_> = (1..=4).map(|i| worker(i, Role::Both, 0.0, 0.0)).collect();
        let none = HashMap::new();
        // One shared leading block (a chat template) on worker 1: still cold.
        let template: HashMap<String, usize> = [("127.0.0.1:1".to_string(), 1)].into();
        let mut seen = Vec::new();
        for _ in 0..4 {
            let c = candidates(p.decode(), &ws, "m", Leg::Decode);
            let r = rank(p.decode(), c, &view(30, Some(&template), &none));
            seen.push(r[0].worker.id.clone());
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 4, "four cold prompts, four workers: {seen:?}");
        // Warm: the holder wins and the LRU scorer is neutral.
        let warm: HashMap<String, usize> = [("127.0.0.1:2".to_string(), 25)].into();
        let c = candidates(p.decode(), &ws, "m", Leg::Decode);
        let r = rank(p.decode(), c, &view(30, Some(&warm), &none));
        assert_eq!(r[0].worker.id, "127.0.0.1:2");
        assert_eq!(r[0].parts[1], ("no-hit-lru-scorer", 0.5));
        let bad: RoutingConfig = serde_yaml_ng::from_str(
            "plugins:\n- type: no-hit-lru-scorer\n  parameters: {threshold: 1.5}\nschedulingProfiles:\n- name: x\n  plugins:\n  - pluginRef: no-hit-lru-scorer\n",
        )
        .unwrap();
        assert!(Profiles::build(&bad, None).is_err());
    }

    #[test]
    fn round_robin_cycles() {
        let p = Profiles::build(&RoutingConfig::builtin(), Some("round-robin")).unwrap();
        let ws: Vec<_> = (1..=4).map(|i| worker(i, Role::Both, 0.0, 0.0)).collect();
        let none = HashMap::new();
        let picks: Vec<String> = (0..8)
            .map(|_| {
                let c = candidates(p.decode(), &ws, "m", Leg::Decode);
                rank(p.decode(), c, &view(0, None, &none))[0]
                    .worker
                    .id
                    .clone()
            })
            .collect();
        assert_eq!(picks[..4], picks[4..]);
        let mut first: Vec<_> = picks[..4].to_vec();
        first.sort();
        first.dedup();
        assert_eq!(first.len(), 4);
    }

    #[test]
    fn scorer_formulas() {
        let cfg: RoutingConfig = serde_yaml_ng::from_str(
            "plugins:\n- type: load-aware-scorer\n  parameters: {threshold: 10}\n- type: active-request-scorer\n- type: session-affinity-scorer\nschedulingProfiles:\n- name: x\n  plugins:\n  - pluginRef: load-aware-scorer\n  - pluginRef: active-request-scorer\n  - pluginRef: session-affinity-scorer\n",
        )
        .unwrap();
        let p = Profiles::build(&cfg, None).unwrap();
        let ws = vec![
            worker(1, Role::Both, 5.0, 0.0),
            worker(2, Role::Both, 20.0, 0.0),
        ];
        ws[0].active.store(3, Ordering::Relaxed);
        let none = HashMap::new();
        let mut v = view(0, None, &none);
        v.session = Some("127.0.0.1:2");
        let r = rank(p.decode(), ws.clone(), &v);
        let by: HashMap<_, _> = r
            .iter()
            .map(|s| (s.worker.id.clone(), s.parts.clone()))
            .collect();
        assert_eq!(by["127.0.0.1:1"][0].1, 0.25);
        assert_eq!(by["127.0.0.1:2"][0].1, 0.0);
        assert_eq!(by["127.0.0.1:1"][1].1, 0.0);
        assert_eq!(by["127.0.0.1:2"][1].1, 1.0);
        assert_eq!(by["127.0.0.1:2"][2].1, 1.0);
        assert_eq!(by["127.0.0.1:1"][2].1, 0.0);
    }

    #[test]
    fn pd_profiles_and_threshold() {
        let cfg: RoutingConfig = serde_yaml_ng::from_str(
            "plugins:\n- type: pd-profile-handler\n  parameters: {threshold: 64}\n- type: queue-scorer\n- type: prefill-filter\n- type: decode-filter\nschedulingProfiles:\n- name: prefill\n  plugins: [{pluginRef: prefill-filter}, {pluginRef: queue-scorer}]\n- name: decode\n  plugins: [{pluginRef: decode-filter}, {pluginRef: queue-scorer, weight: 2}]\n",
        )
        .unwrap();
        let p = Profiles::build(&cfg, None).unwrap();
        assert_eq!(p.pd_threshold, 64);
        assert_eq!(p.prefill().name, "prefill");
        assert_eq!(p.decode().scorers, vec![(Scorer::Queue, 2.0)]);
        assert!(Profiles::build(&cfg, Some("nope")).is_err());
    }
}

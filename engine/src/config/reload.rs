//! `config reload`: a new configuration read while the daemon runs, with
//! the options that only a restart can change kept at their running value.
//! Owns: [`RESTART_OPTIONS`] and the merge of a freshly loaded `Config`
//! with the running one (`Config::reload`).
//! May call: `model` (settings), the file system through `Config::load`.
//! Never: shards, sockets, logging.

use std::path::Path;

use super::model::{DomainScope, Settings};
use super::{Config, ConfigError};

/// Options (and stanzas) a reload cannot change, as Momentum marks them
/// "restart": the spool's place and shape, the pid file, the console
/// sockets, the log paths, the identity the daemon runs as, the resolver's
/// servers, the spool compaction task's pace, the set of bindings (a
/// queued message names its binding by an index into the table built at
/// start, so bindings can change their options on reload, not come or go)
/// the `opendkim` stanza (its keys are loaded once, before privileges
/// are dropped), the `webhook` stanzas (the webhook thread's endpoints),
/// the `Datasource` stanzas and `api_store_datasource` (the API's store
/// is chosen once),
/// and `delivery_shards` in every scope (it decides which shard owns a
/// queue: shards must never disagree on it, and queued entries stay where
/// they are).
pub const RESTART_OPTIONS: &[&str] = &[
    "spoolbase",
    "shards",
    "pidfile",
    "nameservers",
    "spool_compaction_bytes_per_second",
    "spool_compaction_live_percent",
    "Control_Listener",
    "ec_logger",
    "Security",
    "binding",
    "delivery_shards",
    "opendkim",
    "webhook",
    "Datasource",
    "api_store_datasource",
];

impl Config {
    /// Reads `path` as `Config::load` does (syntax, ranges, supported
    /// options) for a reload of the running `self`: the result keeps
    /// `self`'s value of every [`RESTART_OPTIONS`] entry, and the names of
    /// those the file changed come back with it (the operator is told they
    /// need a restart).
    pub fn reload(&self, path: &Path) -> Result<(Config, Vec<&'static str>), ConfigError> {
        let mut new = Config::load(path)?;
        let kept = new.keep_restart_settings(self);
        Ok((new, kept))
    }

    /// Puts back `old`'s value of every restart-only setting; returns the
    /// names of those that differed.
    pub(super) fn keep_restart_settings(&mut self, old: &Config) -> Vec<&'static str> {
        let mut kept = Vec::new();
        let (new, old) = (&mut self.settings, &old.settings);
        macro_rules! keep {
            ($name:literal, $($field:tt)+) => {
                if new.$($field)+ != old.$($field)+ {
                    new.$($field)+ = old.$($field)+.clone();
                    kept.push($name);
                }
            };
        }
        keep!("spoolbase", global.spoolbase);
        keep!("shards", global.shards);
        keep!("pidfile", global.pidfile);
        keep!("nameservers", global.nameservers);
        keep!(
            "spool_compaction_bytes_per_second",
            global.spool_compaction_bytes_per_second
        );
        keep!(
            "spool_compaction_live_percent",
            global.spool_compaction_live_percent
        );
        keep!("Control_Listener", control_listeners);
        if new.logs.heartbeat != old.logs.heartbeat {
            // The heartbeat is the one reloadable logger option.
            let heartbeat = new.logs.heartbeat;
            keep!("ec_logger", logs);
            new.logs.heartbeat = heartbeat;
        } else {
            keep!("ec_logger", logs);
        }
        keep!("Security", security);
        // The shards hold the signers and the webhook thread its endpoints
        // as loaded at start.
        keep!("opendkim", opendkim);
        keep!("webhook", webhooks);
        // Datasource workers are opened once at start and shared by shards.
        keep!("Datasource", datasources);
        // The API store is chosen once, on first use.
        keep!("api_store_datasource", global.api_store_datasource);
        if keep_delivery_shards(new, old) {
            kept.push("delivery_shards");
        }
        let old_names: Vec<&String> = old.bindings.keys().collect();
        let new_names: Vec<&String> = new.bindings.keys().collect();
        if old_names != new_names {
            new.bindings
                .retain(|name, _| old.bindings.contains_key(name));
            for (name, scope) in &old.bindings {
                if !new.bindings.contains_key(name) {
                    new.bindings.insert(name.clone(), scope.clone());
                }
            }
            for scope in new.bindings.values() {
                if !new.groups.contains_key(&scope.group) {
                    let group = old.groups.get(&scope.group).cloned().unwrap_or_default();
                    new.groups.insert(scope.group.clone(), group);
                }
            }
            kept.push("binding");
        }
        kept
    }
}

/// `delivery_shards` of `scope` in `old` (`None`: unset or no such scope).
type Shards = Option<u32>;

fn domains_shards(
    new: &mut std::collections::BTreeMap<String, DomainScope>,
    old: Option<&std::collections::BTreeMap<String, DomainScope>>,
) -> bool {
    let mut changed = false;
    for (name, scope) in new.iter_mut() {
        let was: Shards = old
            .and_then(|o| o.get(name))
            .and_then(|d| d.overrides.delivery_shards);
        changed |= put_back(&mut scope.overrides.delivery_shards, was);
    }
    // A scope the new file dropped that set it: the old value is lost with
    // the scope, and the fallback value may differ; report it.
    if let Some(old) = old {
        changed |= old
            .iter()
            .any(|(name, d)| d.overrides.delivery_shards.is_some() && !new.contains_key(name));
    }
    changed
}

fn put_back(field: &mut Shards, was: Shards) -> bool {
    let changed = *field != was;
    *field = was;
    changed
}

/// Puts `old`'s `delivery_shards` back in every scope of `new`; true when
/// any differed.
fn keep_delivery_shards(new: &mut Settings, old: &Settings) -> bool {
    let mut changed = new.delivery.delivery_shards != old.delivery.delivery_shards;
    new.delivery.delivery_shards = old.delivery.delivery_shards;
    changed |= domains_shards(&mut new.domains, Some(&old.domains));
    for (name, group) in new.groups.iter_mut() {
        let was = old.groups.get(name);
        changed |= put_back(
            &mut group.overrides.delivery_shards,
            was.and_then(|g| g.overrides.delivery_shards),
        );
        changed |= domains_shards(&mut group.domains, was.map(|g| &g.domains));
    }
    for (name, binding) in new.bindings.iter_mut() {
        let was = old.bindings.get(name);
        changed |= put_back(
            &mut binding.overrides.delivery_shards,
            was.and_then(|b| b.overrides.delivery_shards),
        );
        changed |= domains_shards(&mut binding.domains, was.map(|b| &b.domains));
        changed |= domains_shards(&mut binding.group_domains, was.map(|b| &b.group_domains));
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("t.conf")).unwrap()
    }

    #[test]
    fn reloadable_options_change_and_restart_ones_are_kept() {
        let old = parse(
            "spoolbase = \"/a\"\nmax_outbound_connections = 5\nbinding \"b1\" { }\n\
             ESMTP_Listener { Listen \"127.0.0.1:2525\" { } }\n",
        );
        let mut new = parse(
            "spoolbase = \"/b\"\nmax_outbound_connections = 7\nbinding \"b2\" { }\n\
             ESMTP_Listener { Listen \"127.0.0.1:2526\" { } }\n",
        );
        let kept = new.keep_restart_settings(&old);
        assert_eq!(kept, vec!["spoolbase", "binding"]);
        assert_eq!(new.spoolbase(), Path::new("/a"));
        assert_eq!(
            new.delivery("default", "x.test").max_outbound_connections,
            7
        );
        let names: Vec<&str> = new.bindings().collect();
        assert_eq!(names, vec!["b1", "default"]);
        assert_eq!(new.esmtp_listeners()[0].address.port(), 2526);
    }

    #[test]
    fn delivery_shards_keeps_its_running_value_in_every_scope() {
        let old = parse("delivery_shards = 2\ndomain \"a.test\" { delivery_shards = 1 }\n");
        let mut new = parse(
            "delivery_shards = 3\nmax_outbound_connections = 4\n\
             domain \"a.test\" { delivery_shards = 2 }\n\
             binding \"b\" { domain \"c.test\" { delivery_shards = 5 } }\n",
        );
        let kept = new.keep_restart_settings(&old);
        assert!(kept.contains(&"delivery_shards"), "{kept:?}");
        assert_eq!(new.delivery("default", "x.test").delivery_shards, 2);
        assert_eq!(new.delivery("default", "a.test").delivery_shards, 1);
        assert_eq!(
            new.delivery("default", "x.test").max_outbound_connections,
            4
        );
        let mut same = parse("delivery_shards = 2\ndomain \"a.test\" { delivery_shards = 1 }\n");
        assert!(same.keep_restart_settings(&old).is_empty());
    }

    #[test]
    fn an_unchanged_file_keeps_nothing() {
        let text = "shards = 2\nmax_outbound_connections = 5\n";
        let mut new = parse(text);
        assert!(new.keep_restart_settings(&parse(text)).is_empty());
    }

    #[test]
    fn heartbeat_is_reloadable_but_log_paths_are_not() {
        let old = parse("ec_logger \"ec_logger\" { mainlog = \"/a\" heartbeat = 60 }\n");
        let mut new = parse("ec_logger \"ec_logger\" { mainlog = \"/b\" heartbeat = 5 }\n");
        assert_eq!(new.keep_restart_settings(&old), vec!["ec_logger"]);
        assert_eq!(new.logs().mainlog, Path::new("/a"));
        assert_eq!(new.logs().heartbeat.as_secs(), 5);
    }
}

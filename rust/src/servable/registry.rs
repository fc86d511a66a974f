//! name -> version -> loaded servable. Version 0 in a request means the newest loaded version; versions are
//! added at start-up (and later swapped in by repository calls) without blocking requests in flight. Servables
//! that failed to load at start-up are remembered with their reason, so readiness and the repository index can
//! say which one is not serving and why.

use super::ServableVersion;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// The table every request is routed through.
#[derive(Default)]
pub struct Registry {
    servables: RwLock<HashMap<String, BTreeMap<u64, Arc<ServableVersion>>>>,
    /// servable name -> why it failed to load (start-up with `rustserve start`, which keeps the others serving).
    failures: RwLock<BTreeMap<String, String>>,
    /// The servables the server was started to serve: while one has no loaded version (unloaded through the
    /// repository API), the server is not ready.
    expected: RwLock<BTreeSet<String>>,
}

impl Registry {
    /// Adds or replaces a servable version the server was started with (readiness then expects its servable).
    pub fn insert(&self, servable: ServableVersion) {
        self.expect(&servable.name);
        let mut table = self
            .servables
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        table
            .entry(servable.name.clone())
            .or_default()
            .insert(servable.version, Arc::new(servable));
    }

    /// The requested version, or the newest one for version 0.
    pub fn get(&self, name: &str, version: u64) -> Option<Arc<ServableVersion>> {
        let table = self.servables.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let versions = table.get(name)?;
        if version == 0 {
            versions.values().next_back().cloned()
        } else {
            versions.get(&version).cloned()
        }
    }

    /// Every loaded version, sorted by name then version.
    pub fn all(&self) -> Vec<Arc<ServableVersion>> {
        let table = self.servables.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<Arc<ServableVersion>> = table.values().flat_map(|v| v.values().cloned()).collect();
        out.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        out
    }

    /// True when `(name, version)` is loaded.
    pub fn contains(&self, name: &str, version: u64) -> bool {
        let table = self.servables.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        table.get(name).is_some_and(|v| v.contains_key(&version))
    }

    /// Replaces every version of servable `name` with `versions` in one step (requests see the old set or the new
    /// one, never a mix); returns the versions that were replaced.
    pub fn replace(&self, name: &str, versions: Vec<ServableVersion>) -> Vec<Arc<ServableVersion>> {
        let fresh: BTreeMap<u64, Arc<ServableVersion>> =
            versions.into_iter().map(|v| (v.version, Arc::new(v))).collect();
        let mut table = self
            .servables
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = if fresh.is_empty() {
            table.remove(name)
        } else {
            // A servable that loads now (a repository load after a fix) is no longer failed.
            self.clear_failure(name);
            table.insert(name.to_owned(), fresh)
        };
        old.map(|v| v.into_values().collect()).unwrap_or_default()
    }

    /// Removes every version of servable `name`; returns them (empty when it was not loaded). Requests holding a
    /// version keep it until they finish.
    pub fn remove(&self, name: &str) -> Vec<Arc<ServableVersion>> {
        self.replace(name, Vec::new())
    }

    fn expect(&self, name: &str) {
        self.expected
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned());
    }

    /// Records that servable `name` failed to load, with the reason (the full error text).
    pub fn set_failure(&self, name: &str, reason: &str) {
        self.expect(name);
        self.failures
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned(), reason.to_owned());
    }

    /// Forgets the load failure of servable `name`, if any.
    pub fn clear_failure(&self, name: &str) {
        self.failures
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
    }

    /// The load failure of servable `name`, if it has one.
    pub fn failure(&self, name: &str) -> Option<String> {
        self.failures
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Every (servable, reason) that failed to load, sorted by name.
    pub fn failures(&self) -> Vec<(String, String)> {
        self.failures
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(name, reason)| (name.clone(), reason.clone()))
            .collect()
    }

    /// "not ready" text naming every servable that failed to load; `None` when all loaded.
    pub fn failure_summary(&self) -> Option<String> {
        let failures = self.failures();
        if failures.is_empty() {
            return None;
        }
        let names: Vec<String> = failures.iter().map(|(name, _)| format!("'{name}'")).collect();
        Some(format!(
            "servable(s) {} failed to load (see /v2/repository/index for the reasons)",
            names.join(", ")
        ))
    }

    /// Why the server is not ready for everything it was started to serve: a servable that failed to load, or one
    /// that was unloaded and not loaded again; `None` when all serve.
    pub fn not_ready_reason(&self) -> Option<String> {
        if let Some(summary) = self.failure_summary() {
            return Some(summary);
        }
        let table = self.servables.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let expected = self.expected.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let missing: Vec<String> = expected
            .iter()
            .filter(|name| table.get(*name).is_none_or(BTreeMap::is_empty))
            .map(|name| format!("'{name}'"))
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "servable(s) {} not loaded (unloaded through the repository API; load to serve again)",
                missing.join(", ")
            )
        })
    }

    /// Drops every servable (their model threads stop when the last request holding them ends).
    pub fn clear(&self) {
        self.servables
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::ModelSet;

    fn version(name: &str, version: u64) -> ServableVersion {
        ServableVersion {
            name: name.into(),
            version,
            models: Arc::new(ModelSet::default()),
            methods: HashMap::new(),
            attached: Vec::new(),
        }
    }

    #[test]
    fn version_zero_is_newest() {
        let registry = Registry::default();
        registry.insert(version("add", 2));
        registry.insert(version("add", 10));
        registry.insert(version("add", 1));
        assert_eq!(registry.get("add", 0).unwrap().version, 10);
        assert_eq!(registry.get("add", 2).unwrap().version, 2);
        assert!(registry.get("add", 3).is_none());
        assert!(registry.get("nope", 0).is_none());
        assert_eq!(registry.all().len(), 3);
    }

    #[test]
    fn an_unloaded_start_up_servable_makes_the_server_not_ready() {
        let registry = Registry::default();
        registry.insert(version("add", 1));
        // Loaded later through the repository: not expected.
        registry.replace("extra", vec![version("extra", 1)]);
        assert!(registry.not_ready_reason().is_none());
        registry.remove("extra");
        assert!(registry.not_ready_reason().is_none());
        registry.remove("add");
        assert_eq!(
            registry.not_ready_reason().as_deref(),
            Some("servable(s) 'add' not loaded (unloaded through the repository API; load to serve again)")
        );
        registry.replace("add", vec![version("add", 2)]);
        assert!(registry.not_ready_reason().is_none());
    }

    #[test]
    fn replace_and_remove_swap_whole_servables() {
        let registry = Registry::default();
        registry.insert(version("add", 1));
        registry.insert(version("add", 2));
        registry.insert(version("other", 1));
        let old = registry.replace("add", vec![version("add", 3)]);
        assert_eq!(old.iter().map(|v| v.version).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(registry.get("add", 0).unwrap().version, 3);
        assert!(registry.get("add", 1).is_none());
        assert_eq!(registry.remove("add").len(), 1);
        assert!(registry.get("add", 0).is_none());
        assert!(registry.remove("add").is_empty());
        assert_eq!(registry.get("other", 0).unwrap().version, 1);
    }

    #[test]
    fn failures_are_listed_until_the_servable_loads() {
        let registry = Registry::default();
        assert!(registry.failure_summary().is_none());
        registry.set_failure("broken", "import broken.servable_config failed");
        registry.set_failure("absent", "model file missing");
        assert_eq!(
            registry.failure("broken").as_deref(),
            Some("import broken.servable_config failed")
        );
        assert_eq!(
            registry.failure_summary().as_deref(),
            Some("servable(s) 'absent', 'broken' failed to load (see /v2/repository/index for the reasons)")
        );
        registry.replace("broken", vec![version("broken", 1)]);
        assert!(registry.failure("broken").is_none());
        assert_eq!(registry.failures().len(), 1);
        registry.clear_failure("absent");
        assert!(registry.failure_summary().is_none());
    }
}

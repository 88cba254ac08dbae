//! What the api knows about models: a copy of the Redis registry, refreshed in the background
//! so that no request waits on Redis to learn whether its model exists. A model missing from
//! the copy triggers one immediate refresh before the api calls it unknown, so a worker that
//! has just started is usable at once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use switchyard_broker::registry::Registry;
use switchyard_schemas::ModelCard;
use tokio::sync::Mutex;

use crate::error::ApiError;

#[derive(Debug, Clone)]
pub struct ModelEntry {
    pub card: ModelCard,
    pub live_workers: usize,
}

#[derive(Clone)]
pub struct Directory {
    registry: Registry,
    models: Arc<RwLock<HashMap<String, ModelEntry>>>,
    /// Serialises on-demand refreshes so a burst of unknown names costs one Redis round.
    refreshing: Arc<Mutex<Instant>>,
}

impl Directory {
    pub fn new(registry: Registry) -> Self {
        Self { registry, models: Arc::default(), refreshing: Arc::new(Mutex::new(Instant::now() - Duration::from_secs(3600))) }
    }

    /// Keeps the copy fresh every `every` until the process ends.
    pub fn spawn_refresher(&self, every: Duration) {
        let directory = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            loop {
                ticker.tick().await;
                if let Err(e) = directory.refresh().await {
                    tracing::warn!(error = %e, "refreshing the model registry failed");
                }
            }
        });
    }

    pub async fn refresh(&self) -> Result<(), ApiError> {
        let (known, workers) = tokio::try_join!(self.registry.known_models(), self.registry.live_workers())?;
        let mut live: HashMap<&str, usize> = HashMap::new();
        for worker in &workers {
            for card in &worker.models {
                *live.entry(card.name.as_str()).or_default() += 1;
            }
        }
        let models = known
            .into_iter()
            .map(|card| {
                let live_workers = live.get(card.name.as_str()).copied().unwrap_or(0);
                (card.name.clone(), ModelEntry { card, live_workers })
            })
            .collect();
        *self.models.write().unwrap() = models;
        Ok(())
    }

    /// The model called `name`, refreshing once from Redis if it is not known yet.
    pub async fn lookup(&self, name: &str) -> Result<ModelEntry, ApiError> {
        if let Some(entry) = self.get(name) {
            return Ok(entry);
        }
        let requested = Instant::now();
        let mut last = self.refreshing.lock().await;
        // Somebody else refreshed while we waited for the lock: their answer is ours.
        if *last < requested {
            self.refresh().await?;
            *last = Instant::now();
        }
        drop(last);
        self.get(name).ok_or_else(|| ApiError::ModelNotFound(name.to_string()))
    }

    pub fn get(&self, name: &str) -> Option<ModelEntry> {
        self.models.read().unwrap().get(name).cloned()
    }

    /// Runs `visit` on every model with a live worker, in no order, under the lock: for
    /// looking something up without copying every card.
    pub fn visit_live(&self, mut visit: impl FnMut(&ModelEntry)) {
        self.models.read().unwrap().values().filter(|m| m.live_workers > 0).for_each(&mut visit);
    }

    /// Models with at least one live worker, sorted by name.
    pub fn live(&self) -> Vec<ModelEntry> {
        let mut live: Vec<ModelEntry> = self.models.read().unwrap().values().filter(|m| m.live_workers > 0).cloned().collect();
        live.sort_by(|a, b| a.card.name.cmp(&b.card.name));
        live
    }
}

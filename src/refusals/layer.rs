//! [`CountRefusalsLayer`]: where the counts go, and under which route.

use std::sync::Arc;

use tower::Layer;

use super::service::CountRefusals;
use crate::metrics::Metrics;

/// Counts the handshakes refused in front of a route's handler; see the
/// [module docs](super).
#[derive(Debug, Clone)]
pub struct CountRefusalsLayer {
    counter: Arc<RouteCounter>,
}

/// The counters and the route name they are recorded under: one allocation per route,
/// so a request clones one `Arc`, not two.
#[derive(Debug)]
pub(crate) struct RouteCounter {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) route: Box<str>,
}

impl CountRefusalsLayer {
    /// Records refusals in `metrics`, under `route` (the route's configured path).
    pub fn new(metrics: Arc<Metrics>, route: &str) -> Self {
        Self {
            counter: Arc::new(RouteCounter {
                metrics,
                route: route.into(),
            }),
        }
    }
}

impl<S> Layer<S> for CountRefusalsLayer {
    type Service = CountRefusals<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountRefusals::new(inner, self.counter.clone())
    }
}

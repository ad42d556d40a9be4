//! Static GET routes served beside the JSON-RPC endpoint: a page or a script a local server
//! hands to the browser from its own port (a wallet's demo dApp, a status page).

use std::sync::Arc;

/// One fixed response for `GET`/`HEAD` of an exact path, as data; add it with
/// [`ServerBuilder::static_route`](crate::service::ServerBuilder::static_route).
///
/// The origin policy applies as to every request on the port. The body is shared, not
/// copied, by every answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticRoute {
    /// The exact path, without query (`/demo`).
    pub path: String,
    /// The `Content-Type` to answer with (`text/html; charset=utf-8`).
    pub content_type: String,
    /// The body.
    pub body: Arc<[u8]>,
}

impl StaticRoute {
    /// A route answering `GET path` with `body` as `content_type`.
    pub fn new(
        path: impl Into<String>,
        content_type: impl Into<String>,
        body: impl Into<Arc<[u8]>>,
    ) -> Self {
        Self { path: path.into(), content_type: content_type.into(), body: body.into() }
    }
}

/// The route for `path` among `routes`, if any.
pub fn find<'r>(routes: &'r [StaticRoute], path: &str) -> Option<&'r StaticRoute> {
    routes.iter().find(|r| r.path == path)
}

//! The web page at `/`: a chat playground and a live KV dashboard, hand-written HTML, CSS and
//! JavaScript (web/) compiled into the binary, so the page needs no network, CDN or build step.
//! The page reads only the public API (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/kv/state`); `--no-web-ui` leaves these routes out.
//!
//! Must not know: the engine, request shapes (the page is a client like any other).

use axum::extract::{Path, Request};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::error::ApiError;

const INDEX: &str = include_str!("web/index.html");

/// Every asset under `/ui/`: name, content type, text.
const ASSETS: [(&str, &str, &str); 4] = [
    ("common.js", "text/javascript; charset=utf-8", include_str!("web/common.js")),
    ("playground.js", "text/javascript; charset=utf-8", include_str!("web/playground.js")),
    ("dashboard.js", "text/javascript; charset=utf-8", include_str!("web/dashboard.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("web/style.css")),
];

/// The page's routes, to merge into the server's router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(index)).route("/ui/{asset}", get(asset))
}

async fn index() -> Html<&'static str> {
    Html(INDEX)
}

async fn asset(Path(name): Path<String>, request: Request) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, text)) => ([(header::CONTENT_TYPE, *content_type)], *text).into_response(),
        None => ApiError::route_not_found(request.method().as_str(), request.uri().path()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_every_asset_and_nothing_from_elsewhere() {
        for (name, _, text) in ASSETS {
            assert!(INDEX.contains(&format!("/ui/{name}")), "{name}");
            assert!(!text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"), "{name}: no external URL");
        }
        assert!(!INDEX.contains("http://") && !INDEX.contains("https://"));
        assert!(ASSETS.iter().any(|(_, _, text)| text.contains("/v1/kv/state")));
    }
}

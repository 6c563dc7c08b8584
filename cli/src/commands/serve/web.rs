//! The web page at `/`: a chat playground and a live KV dashboard, hand-written HTML, CSS and
//! JavaScript (web/) compiled into the binary, so the page needs no network, CDN or build step.
//! The page reads only the public API (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/kv/state`); `--no-web-ui` leaves these routes out.
//!
//! Must not know: the engine, request shapes (the page is a client like any other).

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const STYLE_CSS: &str = include_str!("web/style.css");

/// The page's routes, to merge into the server's router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(index)).route("/ui/app.js", get(app_js)).route("/ui/style.css", get(style_css))
}

async fn index() -> Html<&'static str> {
    Html(INDEX)
}

async fn app_js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS).into_response()
}

async fn style_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE_CSS).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_references_only_embedded_assets() {
        for asset in ["/ui/app.js", "/ui/style.css"] {
            assert!(INDEX.contains(asset), "{asset}");
        }
        for text in [INDEX, APP_JS, STYLE_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"), "no external URL");
        }
        assert!(APP_JS.contains("/v1/kv/state"));
    }
}

//! The status page (`GET /status`): one self-contained HTML document, its
//! style and script inlined from `status.html`, `status.css` and
//! `status.js` next to this file, and the Content-Security-Policy that
//! allows exactly those.
//!
//! Served without a token: it holds no data. Its script asks
//! `GET /api/status` for everything with a bearer token the operator typed
//! into its login form or passed as `#token=...` (a fragment never reaches
//! the server or its logs). The policy allows only the inlined script and
//! style, and requests to this origin.

use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

/// The page with its inlined style and script, and the policy that allows
/// exactly those; built once.
struct Page {
    html: String,
    csp: HeaderValue,
}

const PAGE_HTML: &str = include_str!("status.html");
const PAGE_CSS: &str = include_str!("status.css");
const PAGE_JS: &str = include_str!("status.js");
/// The coverage panel's script, apart from the meter table's.
const COVERAGE_JS: &str = include_str!("coverage.js");

static PAGE: LazyLock<Page> = LazyLock::new(|| {
    let hash = |text: &str| base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text));
    let html = PAGE_HTML
        .replace("/*STYLE*/", PAGE_CSS)
        .replace("/*SCRIPT*/", PAGE_JS)
        .replace("/*COVERAGE_SCRIPT*/", COVERAGE_JS);
    let csp = format!(
        "default-src 'none'; script-src 'sha256-{}' 'sha256-{}'; style-src 'sha256-{}'; \
         img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
        hash(PAGE_JS),
        hash(COVERAGE_JS),
        hash(PAGE_CSS)
    );
    Page {
        html,
        // Built from base64 and fixed text only, so it is a valid header;
        // the fallback keeps the page loadable (without a policy) anyway.
        csp: HeaderValue::from_str(&csp).unwrap_or(HeaderValue::from_static("default-src 'self'")),
    }
});

/// The status page: an HTML shell that loads its data from `/api/status`.
///
/// No token needed for the page itself: it contains no data. It asks for a
/// read token (stored in the browser), or takes one from `#token=...`.
#[utoipa::path(
    get,
    path = "/status",
    tag = "status",
    responses(
        (status = 200, description = "The status page (HTML)", content_type = "text/html"),
    )
)]
pub async fn status_page() -> Response {
    let page = &*PAGE;
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CONTENT_SECURITY_POLICY, page.csp.clone()),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        page.html.clone(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_inlines_its_assets_and_the_policy_allows_exactly_them() {
        let page = &*PAGE;
        assert!(!page.html.contains("/*STYLE*/") && !page.html.contains("/*SCRIPT*/"));
        assert!(!page.html.contains("/*COVERAGE_SCRIPT*/"));
        assert!(!page.html.contains("src=\"http") && !page.html.contains("href=\"http"));
        let csp = page.csp.to_str().unwrap();
        assert!(csp.contains("script-src 'sha256-"), "{csp}");
        assert!(csp.contains("connect-src 'self'"), "{csp}");
    }
}

//! Serves the tenant console (`web/`, built by Vite into `web/dist`) next to the API.
//!
//! `/assets/*` are content-hashed files, cached for a year; every other path that is not an API
//! route answers `index.html` (the console routes in the browser), never cached. When the build
//! is missing the console paths answer 503 with a page that says how to build it; the API works
//! either way. Every console response carries a strict Content-Security-Policy: the console
//! loads only its own files and talks only to this origin.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; object-src 'none'; \
    base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// The console's files on disk.
#[derive(Debug, Clone)]
pub struct Console {
    dir: PathBuf,
}

impl Console {
    pub fn new(dir: impl Into<PathBuf>) -> Console {
        Console { dir: dir.into() }
    }

    /// Whether a built console is there (`index.html` exists).
    pub fn is_built(&self) -> bool {
        self.dir.join("index.html").is_file()
    }

    /// Answers a GET/HEAD for a console path.
    pub async fn serve(&self, method: &Method, uri: &Uri) -> Response {
        if method != Method::GET && method != Method::HEAD {
            return crate::Error::MethodNotAllowed.into_response();
        }
        let path = uri.path();
        let Some(rel) = safe_relative(path) else {
            return crate::Error::NotFound("file").into_response();
        };
        if rel.starts_with("assets/") {
            return match tokio::fs::read(self.dir.join(&rel)).await {
                Ok(bytes) => file_response(&rel, bytes, "public, max-age=31536000, immutable"),
                Err(_) => crate::Error::NotFound("file").into_response(),
            };
        }
        // Top-level files Vite copies from web/public (favicon, robots.txt).
        if !rel.is_empty() && !rel.contains('/') && rel.contains('.') {
            if let Ok(bytes) = tokio::fs::read(self.dir.join(&rel)).await {
                return file_response(&rel, bytes, "public, max-age=3600");
            }
            return crate::Error::NotFound("file").into_response();
        }
        match tokio::fs::read(self.dir.join("index.html")).await {
            Ok(bytes) => file_response("index.html", bytes, "no-cache"),
            Err(_) => self.missing(),
        }
    }

    fn missing(&self) -> Response {
        let dir = html_escape(&self.dir.display().to_string());
        let page = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Nexus console not built</title></head>\
             <body style=\"font-family:sans-serif;max-width:40rem;margin:4rem auto;line-height:1.5\">\
             <h1>The Nexus console is not built</h1>\
             <p>This server looks for the console in <code>{dir}</code> and found no <code>index.html</code> there.</p>\
             <p>Build it from the repository root with <code>(cd web &amp;&amp; npm ci &amp;&amp; npm run build)</code>, \
             or point the server at a build with <code>--console-dir</code> / <code>NEXUS_CONSOLE_DIR</code>. \
             <code>scripts/quickstart</code> builds it for you.</p>\
             <p>The API works without it: <a href=\"/openapi.json\">/openapi.json</a>.</p></body></html>"
        );
        let mut resp = (StatusCode::SERVICE_UNAVAILABLE, page).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        secure(h);
        resp
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The request path as a relative file path, refusing anything that could leave the directory.
fn safe_relative(path: &str) -> Option<String> {
    let rel = path.trim_start_matches('/');
    let ok = rel
        .split('/')
        .all(|seg| seg != ".." && seg != "." && !seg.contains('\\') && !seg.contains('\0'))
        && !Path::new(rel).is_absolute();
    ok.then(|| rel.to_owned())
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn secure(h: &mut axum::http::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn file_response(name: &str, bytes: Vec<u8>, cache: &'static str) -> Response {
    let mut resp = (StatusCode::OK, Body::from(bytes)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(name)),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    secure(h);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside() {
        assert_eq!(
            safe_relative("/assets/a.js").as_deref(),
            Some("assets/a.js")
        );
        assert_eq!(safe_relative("/").as_deref(), Some(""));
        assert!(safe_relative("/assets/../../etc/passwd").is_none());
        assert!(safe_relative("/a\\..\\b").is_none());
    }
}

//! The console's HTML: escaping, the page frame (navigation, who is signed in, the live
//! script), and the small pieces every page uses (times, outcomes, forms with their CSRF
//! token).

use std::fmt::Write;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::server::session::SignedIn;

/// Escapes text for HTML, in element content and in quoted attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value.
pub fn url(text: &str) -> String {
    crate::pipeline::analysis::encode(text)
}

/// How long ago `ms` was, in words (`3 min ago`), with the exact time in a `<time>`.
pub fn ago(ms: i64) -> String {
    let secs = (crate::store::now_ms() - ms).max(0) / 1000;
    let words = match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    };
    let exact = crate::time::rfc3339_ms(ms);
    format!("<time datetime=\"{exact}\" title=\"{exact}\">{words}</time>")
}

/// A duration in words: `850 ms`, `12.3 s`, `4 min 5 s`.
pub fn took(ms: i64) -> String {
    match ms {
        i64::MIN..=999 => format!("{} ms", ms.max(0)),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// An outcome as a badge: its word, never its colour alone.
pub fn badge(word: &str) -> String {
    let class = match word {
        "succeeded" | "done" | "live" | "pass" | "approved" | "intact" | "passed" | "alive" => "ok",
        "failed" | "fail" | "rolled_back" | "rejected" | "error" | "interrupted" | "broken"
        | "dead" => "bad",
        "running" | "started" | "queued" | "waiting" | "inconclusive" => "busy",
        _ => "idle",
    };
    format!(
        "<span class=\"badge {class}\">{}</span>",
        esc(&word.replace('_', " "))
    )
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(s: &SignedIn<'_>) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", s.csrf)
}

/// One page: its title, its `<main>`, and the live stream that refreshes it (if any).
pub struct Page<'a> {
    /// The title.
    pub title: String,
    /// Who is signed in (`None`: the sign-in page).
    pub who: Option<&'a SignedIn<'a>>,
    /// The `<main>` content.
    pub main: String,
    /// The event stream whose events refresh `<main>` (`data-live`).
    pub live: Option<String>,
}

impl Page<'_> {
    /// The whole document; `fragment` gives only `<main>`'s content (the live script's
    /// refresh).
    pub fn render(self, fragment: bool) -> Response {
        if fragment {
            return html(StatusCode::OK, self.main);
        }
        let mut out = String::with_capacity(self.main.len() + 2048);
        let _ = write!(
            out,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{} · deploy-agent</title>\
             <link rel=\"stylesheet\" href=\"/console/console.css\">\
             <script src=\"/console/console.js\" defer></script></head><body>",
            esc(&self.title)
        );
        out.push_str("<a class=\"skip\" href=\"#main\">Skip to content</a><header><nav aria-label=\"Console\"><a class=\"brand\" href=\"/\">deploy-agent</a>");
        if let Some(who) = self.who {
            let _ = write!(
                out,
                "<a href=\"/\">Board</a><a href=\"/audit\">Audit</a>\
                 <form class=\"signout\" method=\"post\" action=\"/logout\">{}\
                 <span class=\"who\">{} <small>({})</small></span>\
                 <button type=\"submit\">Sign out</button></form>",
                csrf_field(who),
                esc(who.name),
                who.role
            );
        }
        out.push_str("</nav></header>");
        let live = self
            .live
            .map(|l| format!(" data-live=\"{}\"", esc(&l)))
            .unwrap_or_default();
        let _ = write!(
            out,
            "<main id=\"main\"{live}>{}</main></body></html>",
            self.main
        );
        html(StatusCode::OK, out)
    }
}

/// An HTML response, never cached, framed by nobody, running only the console's own script.
pub fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// A refusal or an error, as a page a person reads: what happened and what to do.
pub fn refusal(status: StatusCode, what: &str, hint: &str) -> Response {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · deploy-agent</title><link rel=\"stylesheet\" href=\"/console/console.css\"></head>\
         <body><main id=\"main\"><h1>{}</h1><p class=\"refusal\" role=\"alert\">{}</p><p>{}</p>\
         <p><a href=\"/\">Back to the board</a></p></main></body></html>",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Refused"),
        esc(what),
        esc(hint)
    );
    html(status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_could_open_markup() {
        assert_eq!(
            esc("<a href=\"x\" onclick='y'>&</a>"),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(took(850), "850 ms");
        assert_eq!(took(12_340), "12.3 s");
        assert_eq!(took(245_000), "4 min 5 s");
        assert!(badge("rolled_back").contains(">rolled back<"));
    }
}

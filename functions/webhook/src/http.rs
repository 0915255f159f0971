//! The router of the HTTP function: which handler a request path names.
//!
//! The handlers know only `shared::platform::apigw`; this module knows the
//! handlers, so the dependencies run one way.

use shared::platform::apigw::{self, ApiError, Request, Response};

use crate::{manual::ManualBookings, receiver::Receiver};

/// What a request path names; see [`apigw::match_route`] on the stage prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/kommo/webhook/{token}`, or `/kommo/webhook` with `?token=`.
    KommoWebhook {
        path_token: Option<String>,
    },
    Bookings,
    Unknown,
}

pub fn route(path: &str) -> Route {
    apigw::match_route(path, |segs| match segs {
        ["kommo", "webhook"] => Some(Route::KommoWebhook { path_token: None }),
        ["kommo", "webhook", token] => Some(Route::KommoWebhook {
            path_token: Some((*token).to_string()),
        }),
        ["bookings"] => Some(Route::Bookings),
        _ => None,
    })
    .unwrap_or(Route::Unknown)
}

/// Both routes of the HTTP function.
pub struct HttpApp {
    pub receiver: Receiver,
    pub bookings: ManualBookings,
}

impl HttpApp {
    pub async fn handle(&self, req: Request) -> Response {
        let result = match route(apigw::path(&req)) {
            Route::KommoWebhook { path_token } => self.receiver.handle(&req, path_token).await,
            Route::Bookings => self.bookings.handle(&req).await,
            Route::Unknown => {
                // The path may hold a mistyped webhook token, so it is not logged.
                tracing::info!(method = %apigw::method(&req), "no route for request");
                Err(ApiError::no_route())
            }
        };
        apigw::respond(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_tolerate_a_stage_prefix_and_a_query_token() {
        assert_eq!(
            route("/kommo/webhook/abc"),
            Route::KommoWebhook {
                path_token: Some("abc".into())
            }
        );
        assert_eq!(
            route("/prod/kommo/webhook/abc"),
            Route::KommoWebhook {
                path_token: Some("abc".into())
            }
        );
        assert_eq!(
            route("/kommo/webhook"),
            Route::KommoWebhook { path_token: None }
        );
        assert_eq!(route("/bookings"), Route::Bookings);
        assert_eq!(route("/dev/bookings/"), Route::Bookings);
        assert_eq!(route("/a/b/kommo/webhook/x"), Route::Unknown);
        assert_eq!(route("/kommo/webhook/x/y"), Route::Unknown);
        assert_eq!(route("/"), Route::Unknown);
    }
}

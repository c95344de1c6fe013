//! The one place where access is decided. Every route of the API is declared in [`routes`] together
//! with the [`Rule`] it needs, and the router is built from that list only, so a route cannot exist
//! without a rule. The check runs before the handler, on the route's template and method.

use axum::extract::{ConnectInfo, FromRequestParts, RawPathParams, Request};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use std::sync::Arc;

use super::AppState;
use super::error::ApiError;
use crate::access::{Principal, Role};

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone, without a token (`/health`).
    Public,
    /// A token of at least this role that is not limited to projections: the log, streams,
    /// metrics, tokens, the audit trail.
    Store(Role),
    /// A token of at least this role that reaches the projection named in the path (`{name}`).
    Projection(Role),
}

/// One route: its method, its path template, the rule it needs and its handler.
pub struct Route {
    /// The HTTP method.
    pub method: Method,
    /// The path template, as axum matches it (`/streams/{stream}`).
    pub path: &'static str,
    /// Who may call it.
    pub rule: Rule,
    pub(super) handler: MethodRouter<Arc<AppState>>,
}

impl Route {
    pub(super) fn new<H, T>(method: Method, path: &'static str, rule: Rule, handler: H) -> Route
    where
        H: axum::handler::Handler<T, Arc<AppState>>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("routes use standard methods");
        Route {
            method,
            path,
            rule,
            handler: on(filter, handler),
        }
    }
}

impl Route {
    /// Lets this route take bodies up to another size than the server's default.
    pub(super) fn layer(mut self, limit: axum::extract::DefaultBodyLimit) -> Route {
        self.handler = self.handler.layer(limit);
        self
    }
}

fn unauthenticated(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// Who is asking: the token's principal, or an open-mode client. `Err` is the refusal.
fn authenticate(state: &AppState, request: &Request) -> Result<Principal, ApiError> {
    let tokens = &state.access.tokens;
    if tokens.is_empty() {
        // Open mode: no token exists. Requests that did not come through a socket (tests calling
        // the router directly) and loopback clients are served; others only with --insecure.
        let peer = request
            .extensions()
            .get::<ConnectInfo<std::net::SocketAddr>>();
        let local = peer.is_none_or(|ConnectInfo(address)| address.ip().is_loopback());
        if local || state.access.insecure {
            return Ok(tokens.open_mode_principal());
        }
        return Err(unauthenticated(
            "this server has no tokens yet and serves only loopback clients; create one with `lantern token create NAME --role ROLE` on the server's machine",
        ));
    }
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return Err(unauthenticated(
            "this request needs a token: send `Authorization: Bearer <token>`",
        ));
    };
    let secret = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| unauthenticated("the Authorization header must be `Bearer <token>`"))?;
    tokens
        .authenticate(secret)
        .ok_or_else(|| unauthenticated("unknown or revoked token"))
}

/// Whether `principal` may take a route with `rule`; `Err` is the 403.
fn authorize(principal: &Principal, rule: Rule, projection: Option<&str>) -> Result<(), ApiError> {
    let (needed, projection_route) = match rule {
        Rule::Public => return Ok(()),
        Rule::Store(role) => (role, false),
        Rule::Projection(role) => (role, true),
    };
    let Some(token) = &principal.token else {
        return Ok(()); // open mode
    };
    if token.role < needed {
        return Err(forbidden(format!(
            "token {:?} has the {} role; this needs {needed}",
            token.name, token.role
        )));
    }
    if token.projections.is_some() {
        let reached = projection_route && projection.is_some_and(|p| token.reaches_projection(p));
        if !reached {
            return Err(forbidden(format!(
                "token {:?} is limited to the projections {:?}",
                token.name,
                token.projections.as_deref().unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// In front of every route (called by [`super::request::around`]): authenticates, authorizes by
/// the route's rule, and hands the [`Principal`] to the handler as a request extension.
pub(super) async fn check(state: &AppState, rule: Rule, request: Request, next: Next) -> Response {
    if rule == Rule::Public {
        return next.run(request).await;
    }
    let principal = match authenticate(state, &request) {
        Ok(principal) => principal,
        Err(refusal) => return refusal.into_response(),
    };
    let (mut parts, body) = request.into_parts();
    let params = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .ok();
    let projection = params.as_ref().and_then(|params| {
        params
            .iter()
            .find_map(|(key, value)| (key == "name").then_some(value))
    });
    if let Err(refusal) = authorize(&principal, rule, projection) {
        return refusal.into_response();
    }
    if let Some(follower) = &state.follower
        && parts.method != axum::http::Method::GET
    {
        // Read what the (authorized) client sends before answering, so it reads the answer
        // instead of a broken pipe halfway through a module upload.
        let limit = state
            .limits
            .max_module_bytes
            .max(state.limits.max_body_bytes)
            + 1;
        let _ = axum::body::to_bytes(body, limit).await;
        return ApiError::not_leader(follower.leader()).into_response();
    }
    parts.extensions.insert(principal);
    let request = Request::from_parts(parts, body);
    next.run(request).await
}

//! The routes of the HTTP API (PROTOCOL.md §5): who may call each, decided from the request's
//! head before its body is read, and the handlers. A handler works on the context and the
//! client table, through the same push, kick and stats code as the inner TCP connections and
//! the handle; one that needs the other nodes of the cluster answers later (`Outcome::Later`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use rand::RngExt;
use serde::Deserialize;
use serde_json::json;

use super::cluster::{self as cluster_glue, Answer, Partial, Waiting};
use super::conn::ClientConn;
use super::conns::{ConnRef, Table};
use super::ctx::Ctx;
use super::deliver::{self, PushBuffers, Sent};
use super::http::{Head, HttpConn, Request, Response};
use super::session::constant_time_eq;
use crate::cluster::{self, ClusterError};
use crate::history;
use crate::protocol::uri;
use crate::protocol::ws::percent_decode;
use crate::stats::Stats;

/// What the routes work on: the context and the client connections. The HTTP connection
/// itself is not reachable from a route.
pub struct Api<'a> {
    /// The HTTP connection being answered, for answers that come later.
    pub conn: ConnRef,
    pub ctx: &'a mut Ctx,
    pub clients: &'a mut Table<ClientConn>,
    pub push: &'a mut PushBuffers,
    /// A snapshot of the server's figures, for the stats and metrics routes.
    pub stats: &'a dyn Fn(&Ctx, &Table<ClientConn>) -> Stats,
}

type Handler = fn(&mut Api, &Request) -> Outcome;

/// What a route answers: a response now, or later, when the other nodes of the cluster have
/// answered their part (the connection reads nothing more until then).
pub enum Outcome {
    Now(Response),
    Later,
}

impl From<Response> for Outcome {
    fn from(response: Response) -> Self {
        Outcome::Now(response)
    }
}

/// Who may call a route.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone: clients ask where to connect, orchestrators probe health.
    Public,
    /// Back-ends: `Authorization: Bearer <InnerPassword>`.
    Inner,
    /// Back-ends, or a scraper with `MetricsToken`.
    Metrics,
}

/// Every route: path, method, who may call it, handler.
const ROUTES: [(&str, &str, Access, Handler); 11] = [
    ("/plex/v1/host", "GET", Access::Public, host),
    ("/healthz", "GET", Access::Public, healthz),
    ("/readyz", "GET", Access::Public, readyz),
    ("/plex/v1/push", "POST", Access::Inner, push),
    ("/plex/v1/broadcast", "POST", Access::Inner, broadcast),
    ("/plex/v1/online", "GET", Access::Inner, online),
    ("/plex/v1/kick", "POST", Access::Inner, kick),
    ("/plex/v1/nodes", "GET", Access::Inner, nodes),
    ("/plex/v1/history", "GET", Access::Inner, history),
    ("/plex/v1/stats", "GET", Access::Inner, stats),
    ("/metrics", "GET", Access::Metrics, metrics),
];

/// What the head of a request decides before its body is read.
pub enum Admit {
    Route(Handler),
    Refuse(Response),
}

pub fn admit(ctx: &Ctx, conn: &mut HttpConn, head: &Head) -> Admit {
    let Some(&(_, method, access, handler)) = ROUTES.iter().find(|(path, ..)| *path == head.path)
    else {
        return Admit::Refuse(Response::error(404, "no such path"));
    };
    let allowed = head.method == method || (method == "GET" && head.method == "HEAD");
    if !allowed {
        let allow = if method == "GET" { "GET, HEAD" } else { method };
        return Admit::Refuse(Response {
            allow: Some(allow),
            ..Response::error(405, "method not allowed")
        });
    }
    let inner = bearer_is(head.authorization, &ctx.limits.inner_password);
    if inner {
        conn.trusted = true;
    }
    let permitted = match access {
        Access::Public => true,
        Access::Inner => inner,
        Access::Metrics => {
            inner
                || (ctx.limits.metrics_token.as_deref())
                    .is_some_and(|token| bearer_is(head.authorization, token))
        }
    };
    if !permitted {
        return Admit::Refuse(Response::error(401, "missing or wrong bearer token"));
    }
    Admit::Route(handler)
}

fn bearer_is(authorization: Option<&[u8]>, secret: &str) -> bool {
    let Some(value) = authorization else {
        return false;
    };
    let Some((scheme, token)) = value.split_at_checked(7) else {
        return false;
    };
    scheme.eq_ignore_ascii_case(b"bearer ") && constant_time_eq(token, secret.as_bytes())
}

/// The response to a request that waited for the cluster, now that the broker answered.
pub fn finish(answer: &Answer, result: Result<cluster::Reply, ClusterError>) -> Response {
    use cluster::Reply;
    let mut response = match (&answer.what, result) {
        (Partial::Push { local }, Ok(Reply::Routed { remote })) => {
            Response::json(200, json!({ "delivered": *local as u64 + remote }))
        }
        (Partial::Kick { local }, Ok(Reply::Kicked { remote })) => {
            Response::json(200, json!({ "closed": *local as u64 + remote }))
        }
        (Partial::Online { uids, local }, Ok(Reply::Online(remote))) => {
            let online: BTreeMap<&str, u64> = (uids.iter().zip(local).zip(remote))
                .map(|((uid, &here), there)| (uid.as_str(), here as u64 + there))
                .collect();
            Response::json(200, json!({ "online": online }))
        }
        (
            Partial::History { uid },
            Ok(Reply::History {
                epoch,
                offset,
                acked,
                pushes,
            }),
        ) => {
            let log = cluster_glue::history_log(epoch, offset, acked, pushes);
            history_response(uid, &log)
        }
        (what, Err(e)) => {
            // What this node did stands; the caller learns the other nodes were not reached.
            let mut body = json!({ "error": e.to_string() });
            let local = match what {
                Partial::Push { local } => Some(("delivered", json!(local))),
                Partial::Kick { local } => Some(("closed", json!(local))),
                Partial::Online { uids, local } => {
                    let here: BTreeMap<&str, usize> = uids
                        .iter()
                        .map(String::as_str)
                        .zip(local.iter().copied())
                        .collect();
                    Some(("online", json!(here)))
                }
                Partial::History { .. } => None,
            };
            if let Some((key, local)) = local {
                body[key] = local;
            }
            Response::json(503, body)
        }
        _ => Response::error(500, "the cluster answered another question"),
    };
    response.head_only = answer.head_only;
    response
}

#[derive(Deserialize)]
struct PushBody<'a> {
    #[serde(borrow)]
    uid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    uids: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    uri: Option<Cow<'a, str>>,
    #[serde(borrow)]
    body: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct KickBody<'a> {
    #[serde(borrow)]
    uid: Option<Cow<'a, str>>,
}

fn host(api: &mut Api, _: &Request) -> Outcome {
    let cluster = api.ctx.cluster.as_ref().and_then(|c| c.least_loaded());
    let host = cluster.unwrap_or_else(|| {
        let servers = &api.ctx.limits.outer_servers;
        &servers[rand::rng().random_range(0..servers.len())]
    });
    // Browsers ask too, from pages on other origins (clients/js/plex.js): a plain GET needs
    // no preflight, only this header, and the answer is public anyway.
    Response {
        any_origin: true,
        ..Response::json(200, json!({ "host": host }))
    }
    .into()
}

/// Liveness: the process is up and its reactor turns.
fn healthz(_: &mut Api, _: &Request) -> Outcome {
    Response::json(200, json!({ "status": "ok" })).into()
}

/// Readiness: it accepts clients (its listeners close when it starts shutting down), and in
/// cluster mode it is registered with Redis.
fn readyz(api: &mut Api, _: &Request) -> Outcome {
    if api.ctx.shutdown_deadline.is_some() {
        return Response::error(503, "shutting down").into();
    }
    if let Some(cluster) = api.ctx.cluster.as_ref().filter(|c| !c.up) {
        let why = format!("cluster not ready: {}", cluster.down_reason);
        return Response::error(503, &why).into();
    }
    Response::json(200, json!({ "status": "ready" })).into()
}

/// How a request's answer is to be finished when it waits for the cluster.
fn later(conn: ConnRef, head: &Head, what: Partial) -> Waiting {
    Waiting::Http {
        conn,
        answer: Answer {
            what,
            close: !head.keep_alive,
            head_only: head.method == "HEAD",
        },
    }
}

/// What the cluster said at once (it failed), or that its answer will come.
fn asked(finished: Option<cluster_glue::Finished>) -> Outcome {
    match finished {
        None => Outcome::Later,
        Some(cluster_glue::Finished {
            waiting: Waiting::Http { answer, .. },
            result,
        }) => finish(&answer, result).into(),
        Some(_) => unreachable!("an HTTP request waits as an HTTP answer"),
    }
}

fn push(api: &mut Api, request: &Request) -> Outcome {
    let body: PushBody = match parse_json(request.body) {
        Ok(body) => body,
        Err(e) => return refuse(api, &format!("bad JSON: {e}")),
    };
    let uids: Vec<Cow<str>> = match (body.uid, body.uids) {
        (Some(uid), None) => vec![uid],
        (None, Some(uids)) => uids,
        (Some(_), Some(_)) => return refuse(api, "give uid or uids, not both"),
        (None, None) => return refuse(api, "uid or uids is required"),
    };
    if uids.is_empty() || uids.iter().any(|u| u.is_empty()) {
        return refuse(api, "uids must be non-empty strings");
    }
    let uri = body.uri.unwrap_or_default();
    if let Err(e) = uri::check_push_uri(&uri) {
        return refuse(api, &e.to_string());
    }
    let body = body.body.unwrap_or_default();
    let (conn, head) = (api.conn, &request.head);
    let waiting = |local| later(conn, head, Partial::Push { local });
    let frames = &mut api.push.frames;
    match deliver::push(
        api.ctx,
        api.clients,
        frames,
        &uids,
        &uri,
        &body,
        false,
        waiting,
    ) {
        Ok(Sent::Here(delivered)) => Response::json(200, json!({ "delivered": delivered })).into(),
        Ok(Sent::Asked) => Outcome::Later,
        Ok(Sent::Failed(finished)) => asked(Some(finished)),
        Err(e) => too_large(api, &e.to_string()),
    }
}

fn broadcast(api: &mut Api, request: &Request) -> Outcome {
    let body: PushBody = match parse_json(request.body) {
        Ok(body) => body,
        Err(e) => return refuse(api, &format!("bad JSON: {e}")),
    };
    let uri = body.uri.unwrap_or_default();
    if let Err(e) = uri::check_push_uri(&uri) {
        return refuse(api, &e.to_string());
    }
    let body = body.body.unwrap_or_default();
    let frame = &mut api.push.frames;
    match deliver::broadcast(api.ctx, api.clients, frame, &uri, &body) {
        Ok(delivered) => {
            if let Some(cluster) = &mut api.ctx.cluster {
                cluster.broadcast(&uri, &body);
            }
            Response::json(200, json!({ "delivered": delivered })).into()
        }
        Err(e) => too_large(api, &e.to_string()),
    }
}

/// A push that will not be delivered: counted, and answered 400.
fn refuse(api: &mut Api, why: &str) -> Outcome {
    api.ctx.counters.refused += 1;
    Response::error(400, why).into()
}

/// A push no client could take: counted, and answered 413 before anyone is disconnected.
fn too_large(api: &mut Api, why: &str) -> Outcome {
    api.ctx.counters.refused += 1;
    Response::error(413, why).into()
}

fn online(api: &mut Api, request: &Request) -> Outcome {
    let mut uids = Vec::new();
    for pair in request.head.query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (percent_decode(name), percent_decode(value)) {
            (Some(name), Some(value)) if name == "uid" => uids.push(value),
            (Some(_), Some(_)) => {}
            _ => return Response::error(400, "malformed query string").into(),
        }
    }
    if uids.is_empty() {
        return Response::error(400, "give at least one uid parameter").into();
    }
    let local: Vec<usize> = (uids.iter())
        .map(|u| deliver::online(api.ctx, api.clients, u))
        .collect();
    if api.ctx.cluster.is_none() {
        let online: BTreeMap<&str, usize> = uids.iter().map(String::as_str).zip(local).collect();
        return Response::json(200, json!({ "online": online })).into();
    }
    let partial = Partial::Online {
        uids: uids.clone(),
        local,
    };
    let waiting = later(api.conn, &request.head, partial);
    let cluster = api.ctx.cluster.as_mut().expect("checked above");
    asked(cluster.online(uids, waiting))
}

fn kick(api: &mut Api, request: &Request) -> Outcome {
    let uid = match parse_json::<KickBody>(request.body) {
        Ok(KickBody { uid: Some(uid) }) if !uid.is_empty() => uid,
        Ok(_) => return Response::error(400, "uid is required").into(),
        Err(e) => return Response::error(400, &format!("bad JSON: {e}")).into(),
    };
    let local = deliver::kick(api.ctx, api.clients, &uid);
    let waiting = later(api.conn, &request.head, Partial::Kick { local });
    match &mut api.ctx.cluster {
        Some(cluster) => asked(cluster.kick(&uid, waiting)),
        None => Response::json(200, json!({ "closed": local })).into(),
    }
}

/// A uid's retained pushes after `since`, its epoch and offset, and what its devices
/// acknowledged: a back-end can tell whether a push was received.
fn history(api: &mut Api, request: &Request) -> Outcome {
    let (mut uid, mut since) = (None, 0);
    for pair in request.head.query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (percent_decode(name).as_deref(), percent_decode(value)) {
            (Some("uid"), Some(value)) if !value.is_empty() => uid = Some(value),
            (Some("since"), Some(value)) => match value.parse() {
                Ok(n) => since = n,
                Err(_) => return Response::error(400, "since must be an offset").into(),
            },
            (Some(_), Some(_)) => {}
            _ => return Response::error(400, "malformed query string").into(),
        }
    }
    let Some(uid) = uid else {
        return Response::error(400, "give a uid parameter").into();
    };
    if let Some(history) = &api.ctx.history {
        return history_response(&uid, &history.log(&uid, since)).into();
    }
    let waiting = later(
        api.conn,
        &request.head,
        Partial::History { uid: uid.clone() },
    );
    match api.ctx.cluster.as_mut().filter(|c| c.history) {
        Some(cluster) => asked(cluster.history(&uid, since, waiting)),
        None => Response::error(400, "history is off (HistorySize is 0)").into(),
    }
}

/// A uid's history, as `GET /plex/v1/history` shows it.
fn history_response(uid: &str, log: &history::Log) -> Response {
    let pushes: Vec<_> = (log.pushes.iter())
        .map(|p| json!({"offset": p.offset, "seq": p.seq, "uri": p.uri, "body": p.body}))
        .collect();
    let body = json!({
        "uid": uid,
        "epoch": log.epoch,
        "offset": log.offset,
        "acked": log.acked,
        "pushes": pushes,
    });
    Response::json(200, body)
}

/// The live nodes of the cluster; a single node lists itself.
fn nodes(api: &mut Api, _: &Request) -> Outcome {
    let nodes = match &api.ctx.cluster {
        Some(cluster) => json!(cluster.nodes),
        None => {
            let stats = (api.stats)(api.ctx, api.clients);
            json!([{
                "id": "local",
                "advertise": api.ctx.limits.outer_servers[0],
                "connections": stats.connections,
                "users": stats.users,
            }])
        }
    };
    Response::json(200, json!({ "nodes": nodes })).into()
}

fn stats(api: &mut Api, _: &Request) -> Outcome {
    Response::json(200, json!((api.stats)(api.ctx, api.clients))).into()
}

fn metrics(api: &mut Api, _: &Request) -> Outcome {
    Response {
        status: 200,
        content_type: "text/plain; version=0.0.4",
        body: (api.stats)(api.ctx, api.clients)
            .to_prometheus()
            .into_bytes(),
        allow: None,
        head_only: false,
        any_origin: false,
    }
    .into()
}

/// Reads a JSON request body; all of it must be UTF-8, including values no one reads.
fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    serde_json::from_str(text).map_err(|e| e.to_string())
}

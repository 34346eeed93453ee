//! The endpoint table: every fact about an Ollama endpoint in one row — its
//! path and methods, how llamagate handles it (and, for a listing, how the
//! backends' answers merge), which API's error shape it speaks, where the
//! model is, which body fields Ollama's struct has for it, and whether it
//! streams by default — and [`classify`], which reads a
//! request's method and path the way Ollama's router does
//! (see [`crate::api`]).

use http::Method;

use crate::api::path;
pub use crate::plugin::Endpoint;

/// How llamagate serves an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handling {
    /// Answered by llamagate itself (`/`).
    Local,
    /// Sent to every backend, answers merged as [`Merge`] says.
    FanOut(Merge),
    /// Sent to one backend chosen by the policy; the body is read and inspected.
    Route,
    /// Sent to one backend chosen by the policy; the body streams through unread
    /// (blob uploads can be gigabytes).
    RouteStreaming,
}

/// What a call that succeeds changes in the fleet's model lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changes {
    /// Nothing.
    Nothing,
    /// The model it names now exists on the backend (pull, create).
    AddsModel,
    /// The model it names is gone from the backend (delete).
    RemovesModel,
    /// The model its `destination` names now exists there (copy).
    AddsDestination,
}

/// How the backends' answers to a listing become one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// `{"version": ...}`: the lowest version any backend reports.
    LowestVersion,
    /// A list of models under `list`, each named by its `name` field:
    /// concatenated without duplicates (names compared as Ollama does).
    Models {
        /// The key of the list (`models`, `data`).
        list: &'static str,
        /// The key naming each entry (`name`, `id`).
        name: &'static str,
    },
}

/// The error shape a client of this endpoint understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiStyle {
    /// `{"error":"..."}`
    Ollama,
    /// `{"error":{"message":...,"type":...}}`
    OpenAi,
}

/// Where a request names its model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelAt {
    /// Nowhere.
    None,
    /// In a body field; when several are listed the first non-empty one wins,
    /// as Ollama's `cmp.Or(req.Model, req.Name)`.
    Body(&'static [&'static str]),
    /// In the last path segment (`/v1/models/{model}`).
    Path,
    /// In the `model` part of a `multipart/form-data` body
    /// (`/v1/audio/transcriptions`; see [`crate::api::form`]).
    Form,
}

impl ModelAt {
    /// Whether a request of this endpoint must name a model (Ollama refuses it otherwise).
    pub fn required(self, endpoint: Endpoint) -> bool {
        match self {
            ModelAt::None => false,
            ModelAt::Path | ModelAt::Form => true,
            ModelAt::Body(_) => endpoint != Endpoint::Other,
        }
    }
}

/// Whether a response streams when the body does not say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Streams {
    /// Never streams.
    Never,
    /// Native endpoints: streams unless `"stream": false`.
    UnlessFalse,
    /// OpenAI endpoints: streams only with `"stream": true`.
    IfTrue,
}

/// How a route's path is matched against the decoded request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pattern {
    /// This exact path.
    Exact(&'static str),
    /// This prefix followed by one non-empty segment (gin's `:param`).
    Param(&'static str),
}

/// One endpoint's facts.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    /// The endpoint.
    pub endpoint: Endpoint,
    pattern: Pattern,
    /// The methods Ollama routes for this path.
    pub methods: &'static [Method],
    /// How llamagate serves it.
    pub handling: Handling,
    /// The error shape its clients understand.
    pub style: ApiStyle,
    /// Where the model is named.
    pub model: ModelAt,
    /// Fields of Ollama's request struct that llamagate reads (besides the
    /// model fields): `options`, `keep_alive`, `stream` where the struct has
    /// them, and fields whose reading must be unambiguous although plugins do
    /// not see them (a copy's `destination`, a create's `from`).
    pub fields: &'static [&'static str],
    /// Streaming default.
    pub streams: Streams,
    /// What it changes in the fleet's model lists when it succeeds.
    pub changes: Changes,
}

const GET_HEAD: &[Method] = &[Method::GET, Method::HEAD];
const GET: &[Method] = &[Method::GET];
const POST: &[Method] = &[Method::POST];
const DELETE: &[Method] = &[Method::DELETE];
const HEAD_POST: &[Method] = &[Method::HEAD, Method::POST];
const MODEL: ModelAt = ModelAt::Body(&["model"]);
const MODEL_OR_NAME: ModelAt = ModelAt::Body(&["model", "name"]);
const INFERENCE: &[&str] = &["options", "keep_alive", "stream"];
const EMBEDDING: &[&str] = &["options", "keep_alive"];
const STREAM: &[&str] = &["stream"];

const TAGS: Handling = Handling::FanOut(Merge::Models {
    list: "models",
    name: "name",
});
const DATA: Handling = Handling::FanOut(Merge::Models {
    list: "data",
    name: "id",
});
const VERSION: Handling = Handling::FanOut(Merge::LowestVersion);
const LOCAL: Handling = Handling::Local;
const ROUTE: Handling = Handling::Route;
const UPLOAD: Handling = Handling::RouteStreaming;
const OLLAMA: ApiStyle = ApiStyle::Ollama;
const OPENAI: ApiStyle = ApiStyle::OpenAi;

macro_rules! row {
    ($e:ident, $p:expr, $m:expr, $h:expr, $st:expr, $model:expr, $f:expr, $s:ident) => {
        row!($e, $p, $m, $h, $st, $model, $f, $s, Nothing)
    };
    ($e:ident, $p:expr, $m:expr, $h:expr, $st:expr, $model:expr, $f:expr, $s:ident, $c:ident) => {
        Row {
            endpoint: Endpoint::$e,
            pattern: $p,
            methods: $m,
            handling: $h,
            style: $st,
            model: $model,
            fields: $f,
            streams: Streams::$s,
            changes: Changes::$c,
        }
    };
}

use Pattern::{Exact, Param};

/// Every endpoint llamagate knows, as Ollama's `server/routes.go` routes them
/// and `api/types.go` (and `openai/`) decode them. Columns: endpoint, path,
/// methods, handling (a listing: how answers merge), error style, where the
/// model is, other fields read, streaming default, and (management calls) what
/// success changes in the fleet's model lists.
#[rustfmt::skip]
pub static TABLE: &[Row] = &[
    row!(Root,              Exact("/"),                    GET_HEAD,  LOCAL,   OLLAMA, ModelAt::None, &[], Never),
    row!(Version,           Exact("/api/version"),         GET_HEAD,  VERSION, OLLAMA, ModelAt::None, &[], Never),
    row!(Tags,              Exact("/api/tags"),            GET_HEAD,  TAGS,    OLLAMA, ModelAt::None, &[], Never),
    row!(Ps,                Exact("/api/ps"),              GET,       TAGS,    OLLAMA, ModelAt::None, &[], Never),
    row!(Show,              Exact("/api/show"),            POST,      ROUTE,   OLLAMA, MODEL_OR_NAME, &["options"], Never),
    row!(Generate,          Exact("/api/generate"),        POST,      ROUTE,   OLLAMA, MODEL,         INFERENCE, UnlessFalse),
    row!(Chat,              Exact("/api/chat"),            POST,      ROUTE,   OLLAMA, MODEL,         INFERENCE, UnlessFalse),
    row!(Embed,             Exact("/api/embed"),           POST,      ROUTE,   OLLAMA, MODEL,         EMBEDDING, Never),
    row!(Embeddings,        Exact("/api/embeddings"),      POST,      ROUTE,   OLLAMA, MODEL,         EMBEDDING, Never),
    row!(Pull,              Exact("/api/pull"),            POST,      ROUTE,   OLLAMA, MODEL_OR_NAME, STREAM, UnlessFalse, AddsModel),
    row!(Push,              Exact("/api/push"),            POST,      ROUTE,   OLLAMA, MODEL_OR_NAME, STREAM, UnlessFalse),
    row!(Create,            Exact("/api/create"),          POST,      ROUTE,   OLLAMA, MODEL_OR_NAME, &["stream", "from"], UnlessFalse, AddsModel),
    row!(Copy,              Exact("/api/copy"),            POST,      ROUTE,   OLLAMA, ModelAt::Body(&["source"]), &["destination"], Never, AddsDestination),
    row!(Delete,            Exact("/api/delete"),          DELETE,    ROUTE,   OLLAMA, MODEL_OR_NAME, &[], Never, RemovesModel),
    row!(Blobs,             Param("/api/blobs/"),          HEAD_POST, UPLOAD,  OLLAMA, ModelAt::None, &[], Never),
    row!(OpenaiChat,        Exact("/v1/chat/completions"), POST,      ROUTE,   OPENAI, MODEL,         STREAM, IfTrue),
    row!(OpenaiCompletions, Exact("/v1/completions"),      POST,      ROUTE,   OPENAI, MODEL,         STREAM, IfTrue),
    row!(OpenaiEmbeddings,  Exact("/v1/embeddings"),       POST,      ROUTE,   OPENAI, MODEL,         &[], Never),
    row!(OpenaiModels,      Exact("/v1/models"),           GET,       DATA,    OPENAI, ModelAt::None, &[], Never),
    row!(OpenaiModel,       Param("/v1/models/"),          GET,       ROUTE,   OPENAI, ModelAt::Path, &[], Never),
    row!(OpenaiResponses,   Exact("/v1/responses"),        POST,      ROUTE,   OPENAI, MODEL,         STREAM, IfTrue),
    row!(OpenaiMessages,    Exact("/v1/messages"),         POST,      ROUTE,   OPENAI, MODEL,         STREAM, IfTrue),
    // Not in the WIT contract's `endpoint` enum (0.1.0, 0.2.0): plugins see `other`, with the model.
    row!(Other,             Exact("/v1/audio/transcriptions"), POST,  ROUTE,   OPENAI, ModelAt::Form, &[], Never),
];

/// The row of any other path: forwarded, by `model` when the body has one.
/// Its error style follows the path: OpenAI's under `/v1/`, else Ollama's.
pub static OTHER: Row = row!(Other, Exact(""), &[], ROUTE, OLLAMA, MODEL, &[], Never);

/// What kind of work a routed request asks of its backend: it decides
/// whether the request may be sent again elsewhere and whether it takes a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Generation and embeddings: safe to send to another replica while no
    /// answer has begun; takes a slot of the backend and the model.
    Inference,
    /// `show` and `/v1/models/{model}`: reads, safe to send again.
    Lookup,
    /// pull, push, create, copy, delete, blob uploads: never sent twice (a
    /// backend may have acted on it), and pull, push, create and uploads may
    /// take long before their first byte.
    Management,
    /// A path llamagate does not know: forwarded once, never sent twice.
    Unknown,
}

impl Work {
    /// Whether a request may be sent to another backend (or again) after it
    /// reached one that failed before its response head.
    pub fn resendable(self) -> bool {
        matches!(self, Work::Inference | Work::Lookup)
    }
}

impl Row {
    /// The kind of work its requests are.
    pub fn work(&self) -> Work {
        use Endpoint as E;
        match self.endpoint {
            E::Generate
            | E::Chat
            | E::Embed
            | E::Embeddings
            | E::OpenaiChat
            | E::OpenaiCompletions
            | E::OpenaiEmbeddings
            | E::OpenaiResponses
            | E::OpenaiMessages => Work::Inference,
            E::Show | E::OpenaiModel | E::Version | E::Tags | E::Ps | E::OpenaiModels | E::Root => {
                Work::Lookup
            }
            E::Pull | E::Push | E::Create | E::Copy | E::Delete | E::Blobs => Work::Management,
            E::Other => Work::Unknown,
        }
    }

    /// Whether a request's first byte may take long for a reason other than a
    /// stuck backend (a pull or push moving gigabytes with `stream: false`, a
    /// create quantising, an upload): no first-byte timeout applies.
    pub fn slow_to_answer(&self) -> bool {
        use Endpoint as E;
        matches!(self.endpoint, E::Pull | E::Push | E::Create | E::Blobs)
    }

    /// The row of `endpoint`.
    pub fn of(endpoint: Endpoint) -> &'static Row {
        TABLE
            .iter()
            .find(|r| r.endpoint == endpoint && endpoint != Endpoint::Other)
            .unwrap_or(&OTHER)
    }

    /// The path of a row matched exactly (a listing's, say); `None` for a
    /// parameter route.
    pub fn exact_path(&self) -> Option<&'static str> {
        match self.pattern {
            Exact(p) => Some(p),
            Param(_) => None,
        }
    }

    /// The prefix of a parameter route (`/v1/models/`); `None` for an exact one.
    pub fn param_prefix(&self) -> Option<&'static str> {
        match self.pattern {
            Param(prefix) => Some(prefix),
            Exact(_) => None,
        }
    }

    /// What the pattern captures from `path`: `Some("")` for an exact match,
    /// `Some(segment)` for a parameter.
    fn capture<'p>(&self, path: &'p [u8]) -> Option<&'p [u8]> {
        match self.pattern {
            Exact(p) => (path == p.as_bytes()).then_some(&path[..0]),
            Param(prefix) => {
                let segment = path.strip_prefix(prefix.as_bytes())?;
                (!segment.is_empty() && !segment.contains(&b'/')).then_some(segment)
            }
        }
    }
}

/// A classified request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    /// The endpoint's row.
    pub row: &'static Row,
    /// The endpoint.
    pub endpoint: Endpoint,
    /// How to serve it.
    pub handling: Handling,
    /// Error shape.
    pub style: ApiStyle,
    /// For `/v1/models/{model}`: the model in the path, decoded.
    pub path_model: Option<String>,
    /// The path as Ollama's router reads it (percent-decoded; lossy where
    /// the bytes are not UTF-8), for plugins and logs.
    pub path: String,
    /// The path to send to the backend: the canonical encoding of the decoded
    /// path, so the backend decodes exactly what was classified.
    pub forward_path: String,
}

impl PartialEq for Row {
    fn eq(&self, other: &Row) -> bool {
        self.endpoint == other.endpoint && self.pattern == other.pattern
    }
}

impl Eq for Row {}

/// Why a request cannot be served as it is, answered the way Ollama's router would.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The path exists but not for this method: 405 `405 method not allowed`.
    MethodNotAllowed,
    /// A malformed percent escape: 400, as Go's URL parser refuses it.
    BadPath,
    /// gin's trailing-slash redirect: 301 for GET, 307 otherwise, to this
    /// location (path without the slash, and the query).
    Redirect {
        /// 301 or 307.
        status: u16,
        /// Where to.
        location: String,
    },
}

/// Classifies a request by `method` and the raw (still percent-encoded)
/// `raw_path`. Unknown paths are [`Endpoint::Other`] and are forwarded.
pub fn classify(
    method: &Method,
    raw_path: &str,
    query: Option<&str>,
) -> Result<Classified, Rejection> {
    let decoded = path::decode(raw_path).map_err(|_| Rejection::BadPath)?;
    let found = TABLE
        .iter()
        .find_map(|row| row.capture(&decoded).map(|c| (row, c)));
    let Some((row, captured)) = found else {
        if let Some(location) = trailing_slash_redirect(method, &decoded, query) {
            return Err(location);
        }
        return Ok(classified(&OTHER, &decoded, None));
    };
    if !row.methods.contains(method) {
        return Err(Rejection::MethodNotAllowed);
    }
    let path_model =
        (row.model == ModelAt::Path).then(|| String::from_utf8_lossy(captured).into_owned());
    Ok(classified(row, &decoded, path_model))
}

fn classified(row: &'static Row, decoded: &[u8], path_model: Option<String>) -> Classified {
    let path = String::from_utf8_lossy(decoded).into_owned();
    let style = if !std::ptr::eq(row, &OTHER) {
        row.style
    } else if decoded.starts_with(b"/v1/") {
        ApiStyle::OpenAi
    } else {
        ApiStyle::Ollama
    };
    Classified {
        row,
        endpoint: row.endpoint,
        handling: row.handling,
        style,
        path_model,
        forward_path: path::encode(decoded),
        path,
    }
}

/// gin redirects `/x/` to `/x` when `/x` is a route for this method.
fn trailing_slash_redirect(
    method: &Method,
    decoded: &[u8],
    query: Option<&str>,
) -> Option<Rejection> {
    let trimmed = decoded.strip_suffix(b"/").filter(|t| !t.is_empty())?;
    TABLE
        .iter()
        .find(|row| row.capture(trimmed).is_some() && row.methods.contains(method))?;
    let mut location = path::encode(trimmed);
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    let status = if method == Method::GET { 301 } else { 307 };
    Some(Rejection::Redirect { status, location })
}

/// Whether the endpoint streams when the body has no `stream` field.
pub fn streams_by_default(endpoint: Endpoint) -> bool {
    Row::of(endpoint).streams == Streams::UnlessFalse
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listing_has_a_path_and_every_v1_route_speaks_openai() {
        for row in TABLE {
            if matches!(row.handling, Handling::FanOut(_)) {
                assert!(row.exact_path().is_some(), "{:?}", row.endpoint);
            }
            if let Some(path) = row.exact_path() {
                let openai = path.starts_with("/v1/");
                assert_eq!(row.style == ApiStyle::OpenAi, openai, "{path}");
            }
        }
    }

    fn endpoint(method: Method, path: &str) -> Endpoint {
        classify(&method, path, None).unwrap().endpoint
    }

    #[test]
    fn known_paths() {
        let c = classify(&Method::POST, "/api/chat", None).unwrap();
        assert_eq!(c.endpoint, Endpoint::Chat);
        assert_eq!(c.style, ApiStyle::Ollama);
        let c = classify(&Method::GET, "/v1/models/llama3.2%3Alatest", None).unwrap();
        assert_eq!(c.endpoint, Endpoint::OpenaiModel);
        assert_eq!(c.path_model.as_deref(), Some("llama3.2:latest"));
        assert_eq!(c.forward_path, "/v1/models/llama3.2:latest");
        assert_eq!(
            classify(&Method::HEAD, "/api/blobs/sha256:00", None)
                .unwrap()
                .handling,
            Handling::RouteStreaming
        );
        assert_eq!(endpoint(Method::GET, "/api/tags"), Endpoint::Tags);
    }

    #[test]
    fn every_row_classifies_as_itself() {
        for row in TABLE {
            let path = match row.pattern {
                Exact(p) => p.to_string(),
                Param(prefix) => format!("{prefix}x"),
            };
            for method in row.methods {
                assert_eq!(endpoint(method.clone(), &path), row.endpoint, "{path}");
            }
        }
    }

    #[test]
    fn percent_decoding_before_routing() {
        assert_eq!(endpoint(Method::DELETE, "/api/%64elete"), Endpoint::Delete);
        assert_eq!(endpoint(Method::POST, "/api%2Fcopy"), Endpoint::Copy);
        assert_eq!(endpoint(Method::POST, "/%61pi/%63hat"), Endpoint::Chat);
        assert_eq!(
            classify(&Method::POST, "/api/%63hat", None)
                .unwrap()
                .forward_path,
            "/api/chat"
        );
        assert_eq!(
            classify(&Method::POST, "/api/%zzchat", None),
            Err(Rejection::BadPath)
        );
    }

    #[test]
    fn no_cleaning_no_case_folding() {
        for path in [
            "/API/CHAT",
            "/Api/chat",
            "//api/chat",
            "/api//chat",
            "/api/./chat",
            "/api/x/../chat",
            "/api/chat%00",
            "/api/chat;x",
        ] {
            assert_eq!(endpoint(Method::POST, path), Endpoint::Other, "{path}");
        }
        // The forwarded path decodes to what was classified.
        let c = classify(&Method::POST, "/api/x%2F..%2Fchat", None).unwrap();
        assert_eq!(c.endpoint, Endpoint::Other);
        assert_eq!(c.forward_path, "/api/x/../chat");
    }

    #[test]
    fn trailing_slash_redirects() {
        assert_eq!(
            classify(&Method::POST, "/api/chat/", Some("a=1")),
            Err(Rejection::Redirect {
                status: 307,
                location: "/api/chat?a=1".into()
            })
        );
        assert_eq!(
            classify(&Method::GET, "/api/tags/", None),
            Err(Rejection::Redirect {
                status: 301,
                location: "/api/tags".into()
            })
        );
        assert_eq!(
            classify(&Method::DELETE, "/api/%64elete%2F", None),
            Err(Rejection::Redirect {
                status: 307,
                location: "/api/delete".into()
            })
        );
        // Only where the slash-less path is a route for this method.
        assert_eq!(endpoint(Method::GET, "/api/chat/"), Endpoint::Other);
        assert_eq!(endpoint(Method::POST, "/api/nothing/"), Endpoint::Other);
        assert!(matches!(
            classify(&Method::GET, "/v1/models/x/", None),
            Err(Rejection::Redirect { status: 301, .. })
        ));
    }

    #[test]
    fn path_parameters_are_one_segment() {
        assert_eq!(endpoint(Method::GET, "/v1/models/a/b"), Endpoint::Other);
        assert_eq!(endpoint(Method::GET, "/v1/models/a%2Fb"), Endpoint::Other);
        assert_eq!(endpoint(Method::POST, "/api/blobs/a/b"), Endpoint::Other);
        assert_eq!(endpoint(Method::POST, "/api/blobs/"), Endpoint::Other);
    }

    #[test]
    fn wrong_method() {
        for (method, path) in [
            (Method::GET, "/api/chat"),
            (Method::POST, "/api/delete"),
            (Method::POST, "/api/%64elete"),
            (Method::HEAD, "/api/ps"),
            (Method::from_bytes(b"delete").unwrap(), "/api/delete"),
        ] {
            assert_eq!(
                classify(&method, path, None),
                Err(Rejection::MethodNotAllowed),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn unknown_paths_are_forwarded() {
        let c = classify(&Method::POST, "/v1/audio/transcriptions", None).unwrap();
        assert_eq!(c.endpoint, Endpoint::Other);
        assert_eq!(c.row.model, ModelAt::Form);
        assert_eq!(c.style, ApiStyle::OpenAi);
        let c = classify(&Method::POST, "/api/experimental/web_search", None).unwrap();
        assert_eq!(c.row, &OTHER);
    }
}

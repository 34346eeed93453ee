//! How Ollama reads a request, mirrored: the one place that says which of
//! Ollama's parsing rules llamagate follows, so that the request a policy
//! judges is the request the backend executes.
//!
//! Ollama serves its API with Go's `net/http`, routes with gin v1.10
//! (`gin.Default()`, `HandleMethodNotAllowed = true`) and decodes every body
//! with `encoding/json` into a struct. llamagate reads each request the same
//! way **before any plugin runs**, and where a reading could be ambiguous it
//! refuses the request with a 400 instead of guessing.
//!
//! Besides the tests named below, `props` checks the path classifier and the
//! field reader against small independent models of Go's rules (proptest):
//! whenever llamagate accepts a request, it reads it as the model does.
//!
//! | Ollama's rule | llamagate | test |
//! |---|---|---|
//! | `net/http` routes on the percent-decoded path (`/api/%64elete` is `/api/delete`, `/api%2Fcopy` is `/api/copy`) | [`path::decode`] before classifying; the backend gets the canonical encoding of the decoded path | `path::tests::decodes_like_go`, `it::bypass::encoded_paths_are_classified_as_ollama_routes_them` |
//! | a malformed escape (`%zz`, `%4`) is `400 Bad Request` | 400, never forwarded | `path::tests::bad_escapes_are_refused`, `it::bypass::malformed_escapes_are_refused` |
//! | gin: no case-insensitive or cleaned-path matching (`/API/CHAT`, `//api/chat`, `/api/./chat` are 404) | such paths are unknown endpoints, forwarded as written, where Ollama answers 404 | `endpoint::tests::no_cleaning_no_case_folding` |
//! | gin: a trailing slash is redirected (301 for GET, 307 otherwise) when the path without it is a route for that method | llamagate answers the redirect itself; nothing is forwarded | `endpoint::tests::trailing_slash_redirects`, `it::bypass::trailing_slash_is_redirected_not_forwarded` |
//! | gin: a route's `:param` is one non-empty segment of the decoded path (`/v1/models/a%2Fb` is 404) | same | `endpoint::tests::path_parameters_are_one_segment` |
//! | gin: a known path with another method is `405 method not allowed` | same | `endpoint::tests::wrong_method` |
//! | `encoding/json`: an object key matches a struct field exactly or case-insensitively, after `\uXXXX` escapes are decoded, folding `K` (U+212A) to `K`, `ſ` (U+017F) to `S`, `İ` (U+0130) and `ı` (U+0131) to `I` | [`json::go_fold_eq`] | `json::tests::go_folding`, `json::tests::fold_table_is_complete` |
//! | `encoding/json`: when several keys match one field, the last one wins (strings ignore a later `null`; maps merge) | a body in which a field llamagate reads is given more than once, in any spelling, is refused with 400 — there is never a second reading | `json::tests::duplicates_and_case_variants_are_ambiguous`, `it::bypass::case_variant_model_is_refused` |
//! | a future `encoding/json/v2` matches names ignoring `_` and `-` too | a key that would match only that way (`keepAlive`, `keep-alive`) is refused as well | `json::tests::near_misses_are_ambiguous` |
//! | only the first JSON value is read; trailing bytes are ignored | same | `body::tests::peeks_fields_and_ignores_trailing_bytes` |
//! | `options` is a `map[string]any`: exact keys, the last duplicate wins; runner options are applied by exact name | same; at most `max_options` keys | `body::tests::options_last_duplicate_wins`, `it::bypass::too_many_options_is_a_400_and_costs_little` |
//! | the struct decides which keys are fields: `name` exists only on show, pull, push, create and delete; `model` wins over `name` when both are non-empty | [`crate::api::endpoint`]'s table lists the fields per endpoint | `it::bypass::legacy_name_only_where_ollama_reads_it` |
//! | a field of the wrong type is a 400 (`json: cannot unmarshal number into ... of type string`) | same | `body::tests::errors` |
//! | `/v1/audio/transcriptions` takes `model` with `FormValue`: the URL query first, then multipart parts (RFC 2231 names, quoted-printable parts, bare-LF delimiters) | the model is read from the one plain `name="model"` part; a query naming a model, a second candidate part or any unusual encoding is refused with 400 | `form::tests::refuses_every_other_reading`, `it::bypass::transcriptions_are_judged_on_their_form_model` |
//! | `/v1/responses` inflates `Content-Encoding: zstd` bodies | a request body with any `Content-Encoding` other than `identity` is refused with 415 on endpoints whose body llamagate reads | `it::bypass::compressed_bodies_are_refused` |

pub mod body;
pub mod cors;
pub mod endpoint;
pub mod error;
pub mod form;
pub mod intake;
pub mod json;
pub mod path;
#[cfg(test)]
mod props;
pub mod version;

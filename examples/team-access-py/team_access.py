"""Per-team access control: the policy, as plain Python.

Nothing here imports the component bindings, so the rules run (and are
unit-tested) under any CPython: `python test_policy.py`. `app.py` is the thin
adapter that turns llamagate's WIT types into these calls and back.

Config (the plugin's `config` table, handed to `init` as JSON)::

    {"tokens": {"sha256:<64 hex digits>": "team-a", "sha256:<...>": "admins"},
     "teams":  {"team-a": ["llama3.2", "qwen2.5:14b"], "admins": ["*"]}}

A token is configured by its SHA-256 (`printf %s "$TOKEN" | sha256sum`), so the
config holds no usable secret. A presented token is hashed and its digest compared
with every configured digest by `hmac.compare_digest`, without stopping at a match
(the rules of plugins/sdk/src/keys.rs). Plaintext tokens are still accepted, hashed
when the config is read, and counted so that `init` can warn.
"""

from dataclasses import dataclass
import hashlib
import hmac
import json
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple, Union

# ---------------------------------------------------------------------------
# Ollama model names (a port of plugins/sdk/src/names.rs)
# ---------------------------------------------------------------------------

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _ascii_lower(s: str) -> str:
    # Rust's to_ascii_lowercase: only A-Z change, unlike str.lower().
    return s.translate(_ASCII_LOWER)


def display(name: str) -> str:
    """The shortest display form Ollama uses in listings: default host and
    namespace dropped, tag always present (`llama3.2` -> `llama3.2:latest`)."""
    name = name.strip()
    name = name.split("@", 1)[0]
    prefix, _, last = name.rpartition("/")
    model, sep, tag = last.rpartition(":")
    if not (sep and tag):
        model, tag = last.rstrip(":"), DEFAULT_TAG
    if "/" in prefix:
        host, _, namespace = prefix.partition("/")
    elif not prefix:
        host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    else:
        host, namespace = DEFAULT_HOST, prefix
    if _ascii_lower(host) != DEFAULT_HOST:
        return f"{host}/{namespace}/{model}:{tag}"
    if _ascii_lower(namespace) == DEFAULT_NAMESPACE:
        return f"{model}:{tag}"
    return f"{namespace}/{model}:{tag}"


def key(name: str) -> str:
    """The comparison key: two names with the same key name the same model."""
    return _ascii_lower(display(name))


def same(a: str, b: str) -> bool:
    """Whether two names name the same model (`llama3.2` == `LLAMA3.2:latest`)."""
    return key(a) == key(b)


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------

WILDCARD = "*"


class ConfigError(ValueError):
    """The plugin's config is unusable; the message says what to fix."""


@dataclass(frozen=True)
class Team:
    name: str
    everything: bool
    models: FrozenSet[str]  # comparison keys

    def allows(self, model: str) -> bool:
        return self.everything or key(model) in self.models


DIGEST_PREFIX = "sha256:"


def sha256_hex(token: str) -> str:
    """The SHA-256 of a token's UTF-8 bytes, lowercase hex: what follows `sha256:`."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True)
class Config:
    # (SHA-256 of a token, its team), in config order. A list, not a dict keyed by
    # token: a lookup compares the presented token's digest with every entry.
    tokens: Tuple[Tuple[bytes, Team], ...]
    plaintext: int = 0  # how many tokens were written in plain text

    def team(self, token: str) -> Optional[Team]:
        """The team of `token`, if configured. Compares its digest with every
        entry in constant time (`hmac.compare_digest`) and does not stop at the
        first match, so the time taken does not tell which entry, or how much of
        the token, was right. Digests are unique (parse_config checks)."""
        presented = _digest(token)
        found = None
        for digest, team in self.tokens:
            if hmac.compare_digest(digest, presented):
                found = team
        return found

    @property
    def teams(self) -> FrozenSet[str]:
        return frozenset(t.name for _, t in self.tokens)


def _parse_key(key: str) -> Tuple[bytes, bool]:
    """A config key -> (digest, written in plain text?). Raises ConfigError with
    a message that never quotes the key."""
    if not key:
        raise ConfigError("the key is empty")
    if key[: len(DIGEST_PREFIX)].lower() == DIGEST_PREFIX:
        hexpart = key[len(DIGEST_PREFIX):]
        if len(hexpart) != 64:
            raise ConfigError(
                "a `sha256:` key must be followed by 64 hex digits (the SHA-256 of the "
                'token, as `printf %s "$TOKEN" | sha256sum` prints it); this one has '
                f"{len(hexpart)} characters"
            )
        if any(c not in "0123456789abcdefABCDEF" for c in hexpart):
            raise ConfigError("a `sha256:` key must be followed by hex digits only (0-9, a-f)")
        return bytes.fromhex(hexpart), False
    if key != key.strip():
        raise ConfigError("the key starts or ends with whitespace, which no bearer token can")
    return _digest(key), True


EXAMPLE = (
    '{"tokens": {"sha256:<printf %s $TOKEN | sha256sum>": "team-a"}, '
    '"teams": {"team-a": ["llama3.2"]}}'
)


def parse_config(text: str) -> Config:
    """Checks the config and compiles it. Raises ConfigError naming the key."""
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"config is not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError("config must be a table with `tokens` and `teams`")
    unknown = sorted(k for k in raw if k not in ("tokens", "teams"))
    if unknown:
        raise ConfigError(
            f"unknown config key `{unknown[0]}` (expected `tokens` and `teams`)"
        )
    for field in ("teams", "tokens"):
        if field not in raw:
            raise ConfigError(
                f"`{field}` is missing: the config needs `tokens` (bearer token -> team) "
                f"and `teams` (team -> allowed models), e.g. {EXAMPLE}"
            )
        if not isinstance(raw[field], dict):
            raise ConfigError(f"`{field}` must be a table, not {type(raw[field]).__name__}")

    teams: Dict[str, Team] = {}
    for name, models in raw["teams"].items():
        where = f"`teams.{name}`"
        if not isinstance(models, list):
            raise ConfigError(f'{where} must be a list of model names (or ["*"])')
        keys = set()
        everything = False
        for m in models:
            if not isinstance(m, str) or not m.strip():
                raise ConfigError(f"{where} holds {json.dumps(m)}, not a model name")
            if m.strip() == WILDCARD:
                everything = True
            else:
                keys.add(key(m))
        teams[name] = Team(name, everything, frozenset(keys))

    # Messages name the entry by its position and team, never by its key: the
    # log must not hold a token, nor a hash to try candidates against.
    tokens: List[Tuple[bytes, Team]] = []
    plaintext = 0
    for n, (token, team) in enumerate(raw["tokens"].items(), 1):
        where = f"`tokens` entry {n}"
        if not isinstance(team, str):
            raise ConfigError(f"{where} must name a team (a string)")
        where += f" (team {json.dumps(team)})"
        if team not in teams:
            known = ", ".join(sorted(teams)) or "none"
            raise ConfigError(
                f"`tokens` entry {n} names team {json.dumps(team)}, "
                f"which is not in `teams` ({known})"
            )
        try:
            digest, plain = _parse_key(token)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        if any(d == digest for d, _ in tokens):
            raise ConfigError(f"{where}: the key stands for the same token as another entry")
        tokens.append((digest, teams[team]))
        plaintext += plain
    return Config(tuple(tokens), plaintext)


# ---------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------

Headers = Sequence[Tuple[str, str]]


@dataclass(frozen=True)
class Deny:
    status: int
    message: str
    headers: Tuple[Tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Allow:
    remove_headers: Tuple[str, ...] = ()


Verdict = Union[Deny, Allow]

CHALLENGE = (("www-authenticate", "Bearer"),)


def header(headers: Headers, name: str) -> Optional[str]:
    """The first value of a header (case-insensitive name)."""
    name = name.lower()
    for n, v in headers:
        if n.lower() == name:
            return v
    return None


def bearer_token(headers: Headers) -> Optional[str]:
    """The token of `Authorization: Bearer <token>` (as the Rust SDK reads it)."""
    value = header(headers, "authorization")
    if value is None:
        return None
    scheme, sep, token = value.strip().partition(" ")
    if not sep or scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


def team_of(config: Config, headers: Headers) -> Optional[Team]:
    token = bearer_token(headers)
    return None if token is None else config.team(token)


def decide(config: Config, model: Optional[str], headers: Headers, manages: bool = False) -> Verdict:
    """The verdict on one request. `model` is what the request names, if anything;
    `manages` says whether the request changes a server for everyone (pull, push,
    create, copy, delete, blob uploads, endpoints llamagate does not know), which
    only teams allowed "*" may do.

    The token never reaches a backend. Listings (`/api/tags`, ...) lose nothing by
    this: llamagate calls `list-models` with the request as the client sent it."""
    token = bearer_token(headers)
    if token is None:
        return Deny(401, "missing bearer token: send `Authorization: Bearer <token>`", CHALLENGE)
    team = config.team(token)
    if team is None:
        return Deny(401, "invalid bearer token", CHALLENGE)
    if manages and not team.everything:
        return Deny(403, f"team {json.dumps(team.name)} may not manage models or call this endpoint")
    if model is not None and not team.allows(model):
        return Deny(403, f"team {json.dumps(team.name)} may not use model {json.dumps(model)}")
    return Allow(remove_headers=("authorization",))


def visible(config: Config, headers: Headers, sources: Iterable[str]) -> List[bool]:
    """For each listed model (by `source`: the model an alias stands for), whether
    the caller's team may see it. No or unknown token: nothing is visible."""
    team = team_of(config, headers)
    return [team is not None and team.allows(s) for s in sources]

"""Per-team access control: the policy, as plain Python.

Nothing here imports the component bindings, so the rules run (and are
unit-tested) under any CPython: `python test_policy.py`. `app.py` is the thin
adapter that turns llamagate's WIT types into these calls and back.

Config (the plugin's `config` table, handed to `init` as JSON)::

    {"tokens": {"sk-a": "team-a", "sk-root": "admins"},
     "teams":  {"team-a": ["llama3.2", "qwen2.5:14b"], "admins": ["*"]}}
"""

from dataclasses import dataclass
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


@dataclass(frozen=True)
class Config:
    tokens: Dict[str, Team]


def _redact(token: str) -> str:
    # Errors end up in llamagate's log: never print a whole secret.
    return (token[:4] + "...") if len(token) > 8 else "..."


EXAMPLE = '{"tokens": {"sk-a": "team-a"}, "teams": {"team-a": ["llama3.2"]}}'


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

    tokens: Dict[str, Team] = {}
    for token, team in raw["tokens"].items():
        where = f"`tokens` entry {json.dumps(_redact(token))}"
        if not token or token != token.strip():
            raise ConfigError(f"{where}: a token must be non-empty, without surrounding spaces")
        if not isinstance(team, str):
            raise ConfigError(f"{where} must name a team (a string)")
        if team not in teams:
            known = ", ".join(sorted(teams)) or "none"
            raise ConfigError(
                f"{where} names team {json.dumps(team)}, which is not in `teams` ({known})"
            )
        tokens[token] = teams[team]
    return Config(tokens)


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
    return None if token is None else config.tokens.get(token)


def decide(config: Config, model: Optional[str], headers: Headers) -> Verdict:
    """The verdict on one request. `model` is what the request names, if anything.

    The token never reaches a backend. Listings (`/api/tags`, ...) lose nothing by
    this: llamagate calls `list-models` with the request as the client sent it."""
    token = bearer_token(headers)
    if token is None:
        return Deny(401, "missing bearer token: send `Authorization: Bearer <token>`", CHALLENGE)
    team = config.tokens.get(token)
    if team is None:
        return Deny(401, "invalid bearer token", CHALLENGE)
    if model is not None and not team.allows(model):
        return Deny(403, f"team {json.dumps(team.name)} may not use model {json.dumps(model)}")
    return Allow(remove_headers=("authorization",))


def visible(config: Config, headers: Headers, sources: Iterable[str]) -> List[bool]:
    """For each listed model (by `source`: the model an alias stands for), whether
    the caller's team may see it. No or unknown token: nothing is visible."""
    team = team_of(config, headers)
    return [team is not None and team.allows(s) for s in sources]

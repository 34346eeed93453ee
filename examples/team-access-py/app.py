"""The component's entry point: adapts llamagate's WIT types to team_access.

componentize-py looks for a class named after each exported interface
(`policy` -> `Policy`) in this module. The rules live in team_access.py,
which does not import the bindings and is tested natively.
"""

from typing import List, Optional

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    Backend,
    Decision,
    Endpoint,
    Decision_Forward,
    Decision_Respond,
    Edits,
    Header,
    Level,
    ListedModel,
    Reply,
    Request,
)

import team_access

# Requests that change a server for everyone: only teams allowed "*".
_MANAGING = {
    Endpoint.PULL,
    Endpoint.PUSH,
    Endpoint.CREATE,
    Endpoint.COPY,
    Endpoint.DELETE,
    Endpoint.BLOBS,
    Endpoint.OTHER,
}

# One per instance: llamagate calls `init` once on every fresh instance.
_config: Optional[team_access.Config] = None


def _headers(req: Request):
    return [(h.name, h.value) for h in req.headers]


class Policy(exports.Policy):
    def init(self, config: str) -> None:
        global _config
        try:
            _config = team_access.parse_config(config)
        except team_access.ConfigError as e:
            raise Err(str(e))
        host.log(Level.INFO, f"{len(_config.tokens)} tokens for {len(_config.teams)} teams")
        if _config.plaintext:
            host.log(
                Level.WARN,
                f"{_config.plaintext} of {len(_config.tokens)} tokens are written in plain "
                'text: write "sha256:<hex>" (printf %s "$TOKEN" | sha256sum) so the config '
                "holds no usable secret",
            )

    def on_request(self, req: Request, backends: List[Backend]) -> Decision:
        verdict = team_access.decide(
            _config, req.model, _headers(req), manages=req.endpoint in _MANAGING
        )
        if isinstance(verdict, team_access.Deny):
            return Decision_Respond(
                Reply(
                    status=verdict.status,
                    message=verdict.message,
                    headers=[Header(name=n, value=v) for n, v in verdict.headers],
                )
            )
        return Decision_Forward(
            Edits(
                model=None,
                set_options=[],
                remove_options=[],
                keep_alive=None,
                set_headers=[],
                remove_headers=list(verdict.remove_headers),
                backends=None,  # keep the earlier plugins' routing
            )
        )

    def list_models(self, req: Request, models: List[ListedModel]) -> List[ListedModel]:
        shown = team_access.visible(_config, _headers(req), [m.source for m in models])
        return [m for m, keep in zip(models, shown) if keep]

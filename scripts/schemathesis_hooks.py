"""Schemathesis hooks for scripts/schemathesis: what OpenAPI cannot say.

Loaded through SCHEMATHESIS_HOOKS; each hook names the rule it stands for.
"""

import re

import schemathesis

CLOUD_ID = re.compile(r"^[0-9a-fA-F]{6}$")


def body_meant_valid(case):
    """Whether Schemathesis generated this case's body to be valid."""
    meta = getattr(case, "meta", None)
    if meta is None:
        return True
    for location, info in (getattr(meta, "components", None) or {}).items():
        if getattr(location, "name", "") == "BODY":
            return info.mode.name == "POSITIVE"
    return meta.generation.mode.name == "POSITIVE"


@schemathesis.hook
def map_case(context, case):
    # POST /api/users/{cloud_id} accepts a body `cloud_id` only when it
    # equals the path's id (old import lines carry one). OpenAPI cannot
    # relate a body field to a path parameter, so a case meant to be valid
    # gets the path's id in its body; cases meant to be invalid, and body
    # ids that are malformed anyway, are left for the server to refuse.
    body = case.body
    path = case.path_parameters or {}
    if (
        isinstance(body, dict)
        and isinstance(body.get("cloud_id"), str)
        and (body_meant_valid(case) or CLOUD_ID.match(body["cloud_id"]))
        and isinstance(path.get("cloud_id"), str)
    ):
        body["cloud_id"] = path["cloud_id"]
    return case

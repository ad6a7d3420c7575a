"""Schemathesis hooks for scripts/schemathesis: what OpenAPI cannot say.

Loaded through SCHEMATHESIS_HOOKS; each hook names the rule it stands for.
"""

import re

import schemathesis

CLOUD_ID = re.compile(r"^[0-9a-fA-F]{6}$")
# What a stored EAGLE-200 host looks like in its canonical spelling (the
# server refuses other spellings of the same address, e.g. `0177.0.0.1`).
CANONICAL_HOST = re.compile(
    r"^(?:[a-z][a-z0-9-]{0,20}(?:\.[a-z][a-z0-9-]{0,20})*"
    r"|(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3})"
    r"(?::[1-9][0-9]{0,3})?$"
)


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
    # A local EAGLE-200's host must be `host[:port]` in its canonical
    # spelling: more than a pattern can say (which spellings of an address
    # are canonical, names that end in a number read as IPv4). A case meant
    # to be valid gets a canonical host; the others are left to be refused.
    local = body.get("local") if isinstance(body, dict) else None
    if (
        isinstance(local, dict)
        and isinstance(local.get("host"), str)
        and body_meant_valid(case)
        and not CANONICAL_HOST.match(local["host"])
    ):
        local["host"] = "eagle-200.example"
    return case

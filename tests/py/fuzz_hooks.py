"""Schemathesis hooks of the fuzz test (test_schemathesis.py), loaded through
SCHEMATHESIS_HOOKS.

A create (`POST /v1/sessions`) is sent only when its body is NOT a valid create body by the
document's own schema: ingot takes a valid one and starts a browser, and the fuzz test
asserts that no session is ever created. The negative mode sends invalid bodies, yet a few of
its cases keep the valid template body and make something else invalid: the request-shape
probes send it with another Content-Type (ingot reads every body as JSON, whatever its
label), and a case may leave an optional body out (an empty body means all defaults).
"""

from __future__ import annotations

import json

import jsonschema_rs
import schemathesis
from schemathesis.core import NOT_SET

_validators: dict[int, object] = {}


def _create_body_validator(case):
    raw = case.operation.schema.raw_schema
    key = id(raw)
    if key not in _validators:
        body = raw["paths"]["/v1/sessions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        _validators[key] = jsonschema_rs.validator_for(
            {**body, "components": raw["components"]}, validate_formats=True
        )
    return _validators[key]


@schemathesis.hook("filter_case").apply_to(method="POST", path="/v1/sessions")
def only_invalid_create_bodies(ctx, case) -> bool:
    body = case.body
    if body is NOT_SET or body is None:
        return False
    if isinstance(body, (bytes, str)):
        if not body.strip():
            return False  # an empty body means all defaults
        try:
            body = json.loads(body)
        except ValueError:
            return True  # not JSON: refused with 400
    return not _create_body_validator(case).is_valid(body)

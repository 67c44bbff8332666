"""Schemathesis against the committed OpenAPI document and the live app: no 5xx, and every response
conforms to the documented schema, status codes and content types.

Excluded: "schema-valid data must be accepted". A tensor's own consistency (data as long as its shape
says, class indices below C) is beyond JSON Schema, so schema-valid requests are rightly refused.
Requests that break the schema must still be refused (negative data rejection stays on)."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.app import create_app
from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
APP = create_app(Settings(device="cpu", log_level="warning"))
# fuzzing phase only (the coverage phase's exhaustive boundary cases take minutes over 40 operations)
# A limit (413) refuses a request as surely as a 4xx of schemathesis' default list does.
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5XX"]
CONFIG = SchemathesisConfig.from_dict(
    {
        "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
        "checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}},
    }
)
schema = schemathesis.openapi.from_path(ROOT / "openapi" / "openapi.json", config=CONFIG)
schema.app = APP  # type: ignore[attr-defined]


@schema.parametrize()
@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api(case: schemathesis.Case) -> None:
    case.call_and_validate(app=APP, excluded_checks=[positive_data_acceptance])

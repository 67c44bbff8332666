"""Size limits on what one request may ask of the process: one `Limits` per app, made from its settings.

The data plane holds its app's limits and passes them to the codec and the cost check, so a request can
neither allocate more than its body allows nor make torch broadcast into an enormous intermediate. Two
apps in one process each keep their own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from service.errors import Loc, PayloadTooLarge


@dataclass(frozen=True)
class Limits:
    max_tensor_elements: int = 1 << 26
    """Elements in any one tensor: an argument, a broadcast result, a gradient."""
    max_request_elements: int = 1 << 27
    """Elements in all the tensors of one request together."""
    max_dims: int = 32
    """Dimensions (JSON nesting depth) of a tensor."""
    max_evaluate_entries: int = 64
    """Losses in one /v1/evaluate request."""
    max_work_bytes: int = 1 << 30
    """Memory one computation may build, as its loss's cost model predicts it."""
    max_response_bytes: int = 512 * 2**20
    """Size of a response body, predicted from the output's elements and encoding."""

    def tensor(self, name: str, shape: Sequence[int]) -> None:
        """Refuse a tensor of `shape` larger than the per-tensor limit (413, with limit and actual)."""
        self.elements(name, math.prod(shape), (name,))

    def elements(self, name: str, count: int, loc: Loc) -> None:
        """Refuse a tensor of `count` elements beyond the per-tensor limit; `loc` names its argument."""
        if count > self.max_tensor_elements:
            raise PayloadTooLarge(
                f"{name} would hold {count} elements; the limit is {self.max_tensor_elements} per tensor",
                loc=loc,
                limit=self.max_tensor_elements,
                actual=count,
            )

    def request(self, counts: Sequence[int]) -> int:
        """Refuse a request whose tensors together exceed the per-request limit; returns the total."""
        total = sum(counts)
        if total > self.max_request_elements:
            raise PayloadTooLarge(
                f"the request's tensors hold {total} elements; the limit is {self.max_request_elements}",
                limit=self.max_request_elements,
                actual=total,
            )
        return total

    def work(self, what: str, nbytes: int, loc: Loc) -> None:
        """Refuse a computation predicted to build more than `max_work_bytes`; `what` says what it builds."""
        if nbytes > self.max_work_bytes:
            raise PayloadTooLarge(
                f"{what}: about {nbytes} bytes of memory; the limit is {self.max_work_bytes} (LOSSD_MAX_WORK_BYTES)",
                loc=loc,
                limit=self.max_work_bytes,
                actual=nbytes,
            )

    def response(self, nbytes: int) -> None:
        """Refuse a request whose response is predicted to pass `max_response_bytes`."""
        if nbytes > self.max_response_bytes:
            raise PayloadTooLarge(
                f"the response would take up to {nbytes} bytes; the limit is {self.max_response_bytes} "
                "(LOSSD_MAX_RESPONSE_BYTES): ask for fewer outputs, a reduction, or output_encoding base64",
                limit=self.max_response_bytes,
                actual=nbytes,
            )

    def entries(self, count: int) -> None:
        """Refuse a /v1/evaluate request with more losses than the limit."""
        if count > self.max_evaluate_entries:
            raise PayloadTooLarge(
                f"{count} losses in one request; the limit is {self.max_evaluate_entries}",
                loc=("losses",),
                limit=self.max_evaluate_entries,
                actual=count,
            )


DEFAULTS = Limits()
"""The limits of the default settings (frozen: nothing can change them for anyone else)."""

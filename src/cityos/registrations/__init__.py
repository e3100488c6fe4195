"""Context source registrations (spec 5.2.9, 5.9, 5.10, 4.3.6): the resource (model), which
registrations answer a request (matching), the conflicts between them (conflicts), and the
subscriptions to them (subscriptions)."""

from cityos.registrations.matching import RegistrationFilter, as_entity, matches, matching_items
from cityos.registrations.model import (
    TYPE,
    check_mode,
    expired,
    extra_properties,
    merge_registration,
    parse_registration,
    render_registration,
)

__all__ = [
    "TYPE",
    "RegistrationFilter",
    "as_entity",
    "check_mode",
    "expired",
    "extra_properties",
    "matches",
    "matching_items",
    "merge_registration",
    "parse_registration",
    "render_registration",
]

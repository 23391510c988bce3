"""FlowKey, outcomes and the error tree."""

from __future__ import annotations

import pytest

import sluicegate as sg


def test_flow_key_rejects_empty_id() -> None:
    """An empty fairness id is rejected at construction."""
    with pytest.raises(ValueError, match="non-empty"):
        sg.FlowKey("", 0)


def test_flow_key_rejects_non_int_priority() -> None:
    """Priorities are ints; a bool or a str is a mistake."""
    with pytest.raises(ValueError, match="priority"):
        sg.FlowKey("a", True)
    with pytest.raises(ValueError, match="priority"):
        sg.FlowKey("a", "1")  # type: ignore[arg-type]  # the point of the test


def test_flow_key_str_renders_negative_priority_signed() -> None:
    """Regression (upstream bug 5): -1 printed as 18446744073709551615."""
    assert str(sg.FlowKey("batch", -1)) == "batch:-1"


def test_flow_keys_differ_by_priority() -> None:
    """The same tenant at two priorities is two flows."""
    assert sg.FlowKey("a", 1) != sg.FlowKey("a", 2)
    assert len({sg.FlowKey("a", 1), sg.FlowKey("a", 1)}) == 1


def test_outcome_values_are_metric_labels() -> None:
    """The enum values are the upstream-compatible labels."""
    assert [o.value for o in sg.Outcome] == [
        "Dispatched",
        "RejectedCapacity",
        "RejectedNoEndpoints",
        "RejectedOther",
        "RejectedDeadline",
        "EvictedTTL",
        "EvictedNoEndpoints",
        "EvictedCancelled",
        "EvictedOther",
        "EvictedDisplaced",
    ]
    assert sg.Outcome.REJECTED_CAPACITY.rejected
    assert sg.Outcome.EVICTED_TTL.evicted
    assert not sg.Outcome.DISPATCHED.rejected and not sg.Outcome.DISPATCHED.evicted


@pytest.mark.parametrize(
    ("error", "parent", "outcome", "status"),
    [
        (sg.QueueFullError, sg.RejectedError, sg.Outcome.REJECTED_CAPACITY, 429),
        (sg.NoEndpointsError, sg.RejectedError, sg.Outcome.REJECTED_NO_ENDPOINTS, 503),
        (sg.ControllerClosedError, sg.RejectedError, sg.Outcome.REJECTED_OTHER, 503),
        (sg.TTLExpiredError, sg.EvictedError, sg.Outcome.EVICTED_TTL, 503),
        (sg.NoEndpointsEvictedError, sg.EvictedError, sg.Outcome.EVICTED_NO_ENDPOINTS, 503),
        (sg.ControllerClosedEvictedError, sg.EvictedError, sg.Outcome.EVICTED_OTHER, 503),
        (sg.DeadlineUnreachableError, sg.RejectedError, sg.Outcome.REJECTED_DEADLINE, 429),
        (sg.DisplacedError, sg.EvictedError, sg.Outcome.EVICTED_DISPLACED, 429),
    ],
)
def test_error_tree_carries_outcome_and_status(
    error: type[sg.FlowControlError], parent: type[Exception], outcome: sg.Outcome, status: int
) -> None:
    """Each error sits in the tree with its outcome and HTTP status.

    Regression (upstream bug 12): capacity rejection is 429 in code and docs alike;
    (bug 9): a TTL expiry is never a 500.
    """
    assert issubclass(error, parent)
    assert issubclass(error, sg.FlowControlError)
    assert error.outcome is outcome
    assert error.status_hint == status


def test_config_errors_are_value_errors() -> None:
    """ConfigError is a ValueError; an unknown plugin is also a LookupError."""
    assert issubclass(sg.ConfigError, ValueError)
    assert issubclass(sg.UnknownPluginError, LookupError)
    assert issubclass(sg.IncompatiblePolicyError, sg.ConfigError)


def test_public_names_live_at_the_package() -> None:
    """Everything in __all__ imports, and reports the public module."""
    for name in sg.__all__:
        obj = getattr(sg, name)
        module = getattr(obj, "__module__", None)
        if isinstance(obj, type):
            assert module == "sluicegate", name

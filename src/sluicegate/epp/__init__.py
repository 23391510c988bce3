"""The endpoint picker for Envoy (`sluicegate epp`): flow control over ext_proc v3.

Envoy (or a gateway built on it) relays the bytes; for each HTTP request it opens an
External Processing stream, and the picker classifies the request, holds it in flow
control while Envoy waits, and answers with the endpoint to use
(``x-gateway-destination-endpoint``), as the Gateway API Inference Extension's
endpoint picker does. Needs the ``epp`` extras (gRPC and Envoy's generated stubs).
"""

from __future__ import annotations

from .._exports import publish
from ._emulator import Decision, EmulatedRequest, EnvoyEmulator, ResponseReplies
from ._objectives import OBJECTIVE_KIND, ObjectiveManifestError, load_objectives
from ._picker import Admission, EndpointPicker, endpoint_of
from ._protocol import (
    DESTINATION_HEADER,
    DESTINATION_NAMESPACE,
    SUBSET_KEY,
    SUBSET_NAMESPACE,
)
from ._server import (
    DEFAULT_GRPC_PORT,
    DEFAULT_METRICS_PORT,
    EXT_PROC_SERVICE,
    RunningPicker,
    run,
    serve_in_background,
)
from ._subset import SubsetControllers, SubsetDetector

__all__ = [
    "DEFAULT_GRPC_PORT",
    "DEFAULT_METRICS_PORT",
    "DESTINATION_HEADER",
    "DESTINATION_NAMESPACE",
    "EXT_PROC_SERVICE",
    "OBJECTIVE_KIND",
    "SUBSET_KEY",
    "SUBSET_NAMESPACE",
    "Admission",
    "Decision",
    "EmulatedRequest",
    "EndpointPicker",
    "EnvoyEmulator",
    "ObjectiveManifestError",
    "ResponseReplies",
    "RunningPicker",
    "SubsetControllers",
    "SubsetDetector",
    "endpoint_of",
    "load_objectives",
    "run",
    "serve_in_background",
]

publish(globals(), __all__, __name__)

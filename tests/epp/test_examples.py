"""The shipped Envoy and Kubernetes examples: they parse, and their names and ports match
what `sluicegate epp` serves. No Envoy binary or cluster is run (none is available)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sluicegate.epp import (
    DEFAULT_GRPC_PORT,
    DEFAULT_METRICS_PORT,
    DESTINATION_HEADER,
    EXT_PROC_SERVICE,
    SUBSET_NAMESPACE,
    load_objectives,
)
from sluicegate.gateway import load_config, parse_config

EXAMPLES = Path(__file__).parents[2] / "examples"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def _typed(filters: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [f["typed_config"] for f in filters if f["name"] == name]
    assert isinstance(found, dict)
    return found


def test_envoy_bootstrap_points_ext_proc_at_the_picker_in_full_duplex() -> None:
    (doc,) = _docs(EXAMPLES / "envoy" / "envoy.yaml")
    resources = doc["static_resources"]
    clusters = {c["name"]: c for c in resources["clusters"]}
    (listener,) = resources["listeners"]
    hcm = _typed(
        listener["filter_chains"][0]["filters"], "envoy.filters.network.http_connection_manager"
    )
    http_filters = hcm["http_filters"]
    assert http_filters[-1]["name"] == "envoy.filters.http.router"  # the router comes last
    ext_proc = _typed(http_filters, "envoy.filters.http.ext_proc")
    assert ext_proc["@type"].endswith("ext_proc.v3.ExternalProcessor")
    mode = ext_proc["processing_mode"]
    assert mode["request_body_mode"] == mode["response_body_mode"] == "FULL_DUPLEX_STREAMED"
    # Full duplex needs trailers sent (Envoy's rule for that mode).
    assert mode["request_trailer_mode"] == mode["response_trailer_mode"] == "SEND"
    assert ext_proc["failure_mode_allow"] is False
    assert SUBSET_NAMESPACE in ext_proc["metadata_options"]["forwarding_namespaces"]["untyped"]
    # The ext_proc cluster reaches the picker's gRPC port over HTTP/2, health-checked.
    epp = clusters[ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"]]
    address = epp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"]["port_value"] == DEFAULT_GRPC_PORT
    options = epp["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]
    assert epp["health_checks"][0]["grpc_health_check"]["service_name"] == EXT_PROC_SERVICE
    # Every route goes to the ORIGINAL_DST cluster, which reads the picker's header.
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    target = clusters[routes[0]["route"]["cluster"]]
    assert target["type"] == "ORIGINAL_DST"
    assert target["lb_policy"] == "CLUSTER_PROVIDED"
    assert target["original_dst_lb_config"] == {
        "use_http_header": True,
        "http_header_name": DESTINATION_HEADER,
    }


def test_kubernetes_manifests_match_each_other_and_the_picker() -> None:
    epp = _docs(EXAMPLES / "kubernetes" / "epp.yaml")
    pool_docs = _docs(EXAMPLES / "kubernetes" / "inferencepool.yaml")
    (deployment,) = _by_kind(epp, "Deployment")
    (service,) = _by_kind(epp, "Service")
    (pool,) = _by_kind(pool_docs, "InferencePool")
    (route,) = _by_kind(pool_docs, "HTTPRoute")
    configmaps = {c["metadata"]["name"]: c for c in _by_kind(epp, "ConfigMap")}

    # InferencePool -> Service -> Deployment.
    ref = pool["spec"]["endpointPickerRef"]
    assert ref["name"] == service["metadata"]["name"]
    assert ref["port"]["number"] == DEFAULT_GRPC_PORT
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    ports = {p["port"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT}
    assert ports[DEFAULT_GRPC_PORT]["appProtocol"] == "http2"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container_ports = {p["containerPort"] for p in container["ports"]}
    assert {p["targetPort"] for p in ports.values()} == container_ports
    command = " ".join(container["args"])
    assert f"--grpc-port {DEFAULT_GRPC_PORT}" in command
    assert f"--metrics-port {DEFAULT_METRICS_PORT}" in command
    assert container["readinessProbe"]["grpc"]["port"] == DEFAULT_GRPC_PORT
    assert container["livenessProbe"]["httpGet"]["port"] == DEFAULT_METRICS_PORT
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == pool["metadata"]["name"]

    # The mounted files are where the command reads them, and they load.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {
        v["name"]: v["configMap"]["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]
    }
    config_map = configmaps[volumes["config"]]
    assert f"--config {mounts['config']}/config.yaml" in command
    assert f"--objectives {mounts['objectives']}" in command
    config = parse_config(yaml.safe_load(config_map["data"]["config.yaml"]), source="epp.yaml")
    assert config.server.host == "0.0.0.0"  # reachable from Envoy's pods
    assert [p.name for p in config.pools] == [pool["metadata"]["name"]]
    port = pool["spec"]["targetPorts"][0]["number"]
    assert all(b.endswith(f":{port}") for b in config.pools[0].backends)
    # grace for the drain < the pod's termination grace
    assert (
        config.server.drain_grace
        < deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    )


def test_objective_manifests_load_and_match_the_mounted_copy(tmp_path: Path) -> None:
    shipped = load_objectives(EXAMPLES / "kubernetes")
    assert shipped == {"chat-interactive": 10, "batch-summaries": -1}
    (objectives_map,) = [
        c
        for c in _by_kind(_docs(EXAMPLES / "kubernetes" / "epp.yaml"), "ConfigMap")
        if c["metadata"]["name"] == "sluicegate-epp-objectives"
    ]
    for name, text in objectives_map["data"].items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert load_objectives(tmp_path) == shipped
    pool_names = {
        d["spec"]["poolRef"]["name"] for d in _docs(EXAMPLES / "kubernetes" / "objectives.yaml")
    }
    (pool,) = _by_kind(_docs(EXAMPLES / "kubernetes" / "inferencepool.yaml"), "InferencePool")
    assert pool_names == {pool["metadata"]["name"]}


def test_the_gateway_example_config_also_serves_the_picker() -> None:
    """The same YAML schema: the gateway's example loads for `sluicegate epp`."""
    config = load_config(EXAMPLES / "gateway.yaml")
    assert config.pools

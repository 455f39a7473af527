"""The seed guide's own deployment examples, transcribed as the dictionaries its code builds.

Each is a fresh copy, so a test may change it. Comments in the guide ("// 5 minutes") are
dropped; nothing else is changed, including the values that cannot work.
"""

from __future__ import annotations

from typing import Any


def quick_start_config() -> dict[str, Any]:
    """ "Basic Usage": `createSimpleCanaryConfig({...})` with one 5% phase."""
    return {
        "name": "My Service Canary",
        "serviceName": "my-service",
        "stableVersion": "1.0.0",
        "canaryVersion": "2.0.0",
        "initialTrafficPercentage": 5,
        "phases": [
            {
                "id": "phase-1",
                "name": "5% Traffic",
                "trafficPercentage": 5,
                "durationMs": 300000,
                "successCriteria": [
                    {
                        "metric": "availability",
                        "operator": "greater_than",
                        "threshold": 99,
                        "durationMs": 180000,
                    },
                ],
                "rollbackThresholds": {
                    "errorRate": 5,
                    "latencyP95": 1000,
                    "availability": 95,
                },
                "status": "pending",
            },
        ],
    }


def multi_phase_config() -> dict[str, Any]:
    """ "Multi-Phase Canary Deployment": the four-phase user-service rollout."""
    return {
        "name": "Progressive Service Rollout",
        "serviceName": "user-service",
        "stableVersion": "1.2.0",
        "canaryVersion": "2.0.0",
        "trafficShiftStrategy": "phased",
        "phases": [
            {
                "id": "phase-1-internal",
                "name": "Internal Testing (1%)",
                "trafficPercentage": 1,
                "durationMs": 600000,
                "successCriteria": [
                    {
                        "metric": "availability",
                        "operator": "greater_than",
                        "threshold": 100,
                        "durationMs": 300000,
                    },
                    {
                        "metric": "error_rate",
                        "operator": "less_than",
                        "threshold": 0,
                        "durationMs": 600000,
                    },
                ],
                "rollbackThresholds": {"errorRate": 1, "latencyP95": 500, "availability": 99.5},
                "status": "pending",
            },
            {
                "id": "phase-2-beta",
                "name": "Beta Users (5%)",
                "trafficPercentage": 5,
                "durationMs": 1800000,
                "successCriteria": [
                    {
                        "metric": "availability",
                        "operator": "greater_than",
                        "threshold": 99.9,
                        "durationMs": 900000,
                    },
                    {
                        "metric": "error_rate",
                        "operator": "less_than",
                        "threshold": 0.5,
                        "durationMs": 1800000,
                    },
                    {
                        "metric": "response_time",
                        "operator": "less_than",
                        "threshold": 200,
                        "durationMs": 600000,
                    },
                ],
                "rollbackThresholds": {"errorRate": 2, "latencyP95": 800, "availability": 99},
                "status": "pending",
            },
            {
                "id": "phase-3-partial",
                "name": "Partial Rollout (25%)",
                "trafficPercentage": 25,
                "durationMs": 3600000,
                "successCriteria": [
                    {
                        "metric": "availability",
                        "operator": "greater_than",
                        "threshold": 99.5,
                        "durationMs": 1800000,
                    },
                    {
                        "metric": "error_rate",
                        "operator": "less_than",
                        "threshold": 1,
                        "durationMs": 3600000,
                    },
                    {
                        "metric": "throughput",
                        "operator": "greater_than",
                        "threshold": 1000,
                        "durationMs": 1800000,
                    },
                ],
                "rollbackThresholds": {"errorRate": 3, "latencyP95": 1000, "availability": 98},
                "status": "pending",
            },
            {
                "id": "phase-4-full",
                "name": "Full Rollout (100%)",
                "trafficPercentage": 100,
                "durationMs": 7200000,
                "successCriteria": [
                    {
                        "metric": "availability",
                        "operator": "greater_than",
                        "threshold": 99,
                        "durationMs": 3600000,
                    },
                    {
                        "metric": "error_rate",
                        "operator": "less_than",
                        "threshold": 2,
                        "durationMs": 7200000,
                    },
                ],
                "rollbackThresholds": {"errorRate": 5, "latencyP95": 1500, "availability": 95},
                "status": "pending",
            },
        ],
        "autoPromote": True,
        "autoRollback": True,
        "maxDeploymentTimeMs": 14400000,
        "notifications": {
            "onStart": True,
            "onPhaseComplete": True,
            "onFailure": True,
            "onComplete": True,
            "onRollback": True,
        },
    }


def validation_context() -> dict[str, Any]:
    """ "Configuration Validation": the context the guide validates its configuration in."""
    return {
        "environment": "production",
        "resourceConstraints": {
            "maxTrafficPercentage": 50,
            "maxRollbackTime": 600000,
        },
        "securityPolicies": [
            {
                "name": "production-security",
                "rules": [
                    {
                        "type": "encryption",
                        "required": True,
                    },
                ],
            },
        ],
    }


def traffic_split_endpoints() -> dict[str, str]:
    """ "Traffic Splitting": the endpoints of the stable and canary targets."""
    return {
        "stableEndpoint": "http://stable-service:8080",
        "canaryEndpoint": "http://canary-service:8080",
    }

"""The YAML deployment file: a valid one builds services, every mistake is one clear message."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import (
    ConfigError,
    GatewayConfig,
    WorkflowEntry,
    build_services,
    load_config,
    parse_config,
)
from services.workflow import WorkflowService, WorkflowServiceConfig

ROOT = Path(__file__).resolve().parent.parent
ECHO = {"type": "workflow", "source": "examples.echo:workflow"}


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # build_services puts the config file's folder on sys.path; keep that local to each test
    monkeypatch.setattr(sys, "path", list(sys.path))


def write(tmp_path: Path, data: Any, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def config_error(tmp_path: Path, data: Any, *, build: bool = False) -> str:
    """The ConfigError message for `data` written to a file, loaded (and built)."""
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        config = load_config(path)
        if build:
            build_services(config)
    message = str(info.value)
    assert "\n" not in message, "start-up errors are one line"
    assert message.startswith(f"{path}: "), "the message names the file first"
    return message


# -- valid ------------------------------------------------------------------------------------
def test_valid_config_parses_and_builds(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "name": "demo",
            "port": 8123,
            "default_service": "echo",
            "bus": {"buffer_size": 16, "publish_timeout": 0.5},
            "services": {
                "echo": {**ECHO, "max_concurrent_tasks": 3, "timeout": 12},
                "stats": {
                    "type": "workflow",
                    "source": "examples.pipeline:build",  # a factory, called once
                    "prefix": "/stats",
                    "description": "numbers",
                },
            },
        },
    )
    config = load_config(path)
    assert isinstance(config, GatewayConfig)
    assert config.name == "demo" and config.port == 8123 and config.default_service == "echo"
    assert config.bus.buffer_size == 16 and config.bus.publish_timeout == 0.5
    assert isinstance(config.services["echo"], WorkflowEntry)
    assert config.source_path == str(path)

    echo, stats = build_services(config)
    assert isinstance(echo, WorkflowService) and isinstance(stats, WorkflowService)
    assert echo.service_name == "echo" and echo.max_concurrent_tasks == 3 and echo.timeout == 12
    assert type(echo.workflow).__name__ == "EchoWorkflow"
    assert type(stats.workflow).__name__ == "StatsWorkflow"  # the factory's product
    assert stats.mount_prefix == "/stats" and stats.description == "numbers"
    assert echo.mount_prefix == "/services/echo"


def test_the_shipped_config_is_valid() -> None:
    config = load_config(ROOT / "config.yaml")
    assert [s.service_name for s in build_services(config)] == list(config.services)


def test_gateway_config_env_selects_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, {"name": "from-env", "services": {"echo": ECHO}})
    monkeypatch.setenv("GATEWAY_CONFIG", str(path))
    assert load_config().name == "from-env"


def test_empty_file_is_refused_as_a_gateway_with_no_services(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="services: none configured"):
        load_config(write(tmp_path, ""))


# -- one clear message per mistake ----------------------------------------------------------------
def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, {"nmae": "x"})
    assert "nmae: unknown key" in message


def test_unknown_key_in_a_service(tmp_path: Path) -> None:
    message = config_error(tmp_path, {"services": {"echo": {**ECHO, "colour": "red"}}})
    assert "service 'echo'" in message and "colour: unknown key" in message


def test_unknown_key_in_a_section(tmp_path: Path) -> None:
    message = config_error(tmp_path, {"bus": {"size": 3}})
    assert "bus.size: unknown key" in message


def test_bad_type_in_a_service(tmp_path: Path) -> None:
    message = config_error(
        tmp_path, {"services": {"echo": {**ECHO, "max_concurrent_tasks": "lots"}}}
    )
    assert "service 'echo'" in message
    assert "max_concurrent_tasks" in message and "integer" in message


def test_bad_type_at_top_level(tmp_path: Path) -> None:
    message = config_error(tmp_path, {"port": "eighty"})
    assert "port:" in message and "integer" in message


def test_out_of_range_value(tmp_path: Path) -> None:
    message = config_error(tmp_path, {"services": {"echo": {**ECHO, "timeout": -1}}})
    assert "service 'echo'" in message and "timeout" in message and "greater than 0" in message


def test_store_retention_takes_durations_and_can_be_turned_off(tmp_path: Path) -> None:
    retain = {"max_age": "12h", "max_tasks": None, "sweep_every": "30s"}
    one = {"services": {"echo": ECHO}}
    config = parse_config({"store": {"kind": "sqlite", "retain": retain}, **one}, "test")
    assert config.store.retain.max_age == 12 * 3600
    assert config.store.retain.max_tasks is None
    assert config.store.retain.sweep_every == 30
    default = parse_config({"store": "sqlite", **one}, "test").store.retain
    assert (default.max_age, default.max_tasks) == (7 * 86400, 100_000)
    message = config_error(tmp_path, {"store": {"retain": {"max_age": "soonish"}}})
    assert "store.retain.max_age" in message


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value) == f"{missing}: config file not found"


def test_invalid_yaml(tmp_path: Path) -> None:
    message = config_error(tmp_path, "services:\n  echo: {type: workflow\n")
    assert "invalid YAML" in message and "line" in message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    message = config_error(tmp_path, "- just\n- a list\n")
    assert "top level must be a mapping" in message


def test_missing_source(tmp_path: Path) -> None:
    message = config_error(tmp_path, {"services": {"echo": {"type": "workflow"}}})
    assert "service 'echo'" in message and "source" in message and "required" in message


def test_import_failure_missing_module(tmp_path: Path) -> None:
    data = {"services": {"echo": {**ECHO, "source": "no_such_module_xyz:workflow"}}}
    message = config_error(tmp_path, data, build=True)
    assert "service 'echo'" in message
    assert "cannot import module 'no_such_module_xyz'" in message


def test_import_failure_missing_attribute(tmp_path: Path) -> None:
    data = {"services": {"echo": {**ECHO, "source": "examples.echo:nothing_here"}}}
    message = config_error(tmp_path, data, build=True)
    assert "service 'echo'" in message
    assert "'examples.echo' has no attribute 'nothing_here'" in message


def test_import_failure_module_raises_while_importing(tmp_path: Path) -> None:
    (tmp_path / "broken_at_import_mod.py").write_text("raise RuntimeError('half-written module')\n")
    data = {"services": {"echo": {**ECHO, "source": "broken_at_import_mod:workflow"}}}
    message = config_error(tmp_path, data, build=True)
    assert "service 'echo'" in message
    assert "RuntimeError: half-written module" in message


def test_source_next_to_the_config_file_is_importable(tmp_path: Path) -> None:
    (tmp_path / "my_local_flows.py").write_text("from examples.echo import workflow\n")
    config = load_config(
        write(tmp_path, {"services": {"mine": {**ECHO, "source": "my_local_flows:workflow"}}})
    )
    (service,) = build_services(config)
    assert type(service.workflow).__name__ == "EchoWorkflow"


def test_malformed_source_spec(tmp_path: Path) -> None:
    data = {"services": {"echo": {**ECHO, "source": "examples.echo"}}}
    message = config_error(tmp_path, data, build=True)
    assert "service 'echo'" in message and "module:attribute" in message


def test_source_of_the_wrong_kind(tmp_path: Path) -> None:
    data = {"services": {"echo": {**ECHO, "source": "tests.fixtures_workflows:not_a_workflow"}}}
    message = config_error(tmp_path, data, build=True)
    assert "service 'echo'" in message and "expected a llama-index Workflow, got dict" in message


def test_factory_that_raises(tmp_path: Path) -> None:
    data = {"services": {"echo": {**ECHO, "source": "tests.fixtures_workflows:broken_factory"}}}
    message = config_error(tmp_path, data, build=True)
    assert "service 'echo'" in message
    assert "factory 'tests.fixtures_workflows:broken_factory' raised RuntimeError" in message
    assert "factory exploded on purpose" in message


def test_unknown_default_service(tmp_path: Path) -> None:
    message = config_error(tmp_path, {"default_service": "nope", "services": {"echo": ECHO}})
    assert "default_service 'nope' is not one of the services (echo)" in message


def test_duplicate_prefix(tmp_path: Path) -> None:
    data = {"services": {"a": {**ECHO, "prefix": "/same"}, "b": {**ECHO, "prefix": "/same"}}}
    message = config_error(tmp_path, data)
    assert "service 'b'" in message and "'/same' is already used by 'a'" in message


def test_explicit_prefix_colliding_with_a_default_one(tmp_path: Path) -> None:
    data = {"services": {"a": ECHO, "b": {**ECHO, "prefix": "/services/a"}}}
    message = config_error(tmp_path, data)
    assert "service 'b'" in message and "already used by 'a'" in message


def test_prefix_under_the_control_plane(tmp_path: Path) -> None:
    message = config_error(tmp_path, {"services": {"a": {**ECHO, "prefix": "/control_plane/x"}}})
    assert "service 'a'" in message and "shadow the gateway's own /control_plane" in message


def test_reserved_service_name(tmp_path: Path) -> None:
    message = config_error(tmp_path, {"services": {"control_plane": ECHO}})
    assert "'control_plane'" in message


def test_unknown_service_type(tmp_path: Path) -> None:
    message = config_error(tmp_path, {"services": {"echo": {"type": "wizard", "source": "a:b"}}})
    assert "service 'echo'" in message
    assert "type: unknown service type 'wizard'" in message and "workflow" in message


def test_missing_service_type(tmp_path: Path) -> None:
    message = config_error(tmp_path, {"services": {"echo": {"source": "a:b"}}})
    assert "service 'echo'" in message and "type: missing" in message


def test_service_type_whose_module_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "services.component", None)  # import fails
    data = {"services": {"comp": {"type": "component", "source": "examples.echo:workflow"}}}
    message = config_error(tmp_path, data, build=True)
    assert "service 'comp'" in message and "service type 'component' is not available" in message


# -- WORKFLOW_SERVICE_* environment --------------------------------------------------------------
def test_env_default_applies_to_workflow_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKFLOW_SERVICE_MAX_CONCURRENT_TASKS", "3")
    monkeypatch.setenv("WORKFLOW_SERVICE_RAISE_EXCEPTIONS", "true")
    config = load_config(
        write(
            tmp_path,
            {"services": {"plain": ECHO, "explicit": {**ECHO, "max_concurrent_tasks": 5}}},
        )
    )
    plain, explicit = build_services(config)
    assert plain.max_concurrent_tasks == 3 and plain.raise_exceptions is True
    assert explicit.max_concurrent_tasks == 5, "the config file wins over the environment"


def test_bad_env_value_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKFLOW_SERVICE_MAX_CONCURRENT_TASKS", "many")
    message = config_error(tmp_path, {"services": {"echo": ECHO}}, build=True)
    assert "service 'echo'" in message and "max_concurrent_tasks" in message


def test_workflow_service_config_reads_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKFLOW_SERVICE_HOST", "10.0.0.5")
    monkeypatch.setenv("WORKFLOW_SERVICE_PORT", "9001")
    monkeypatch.setenv("WORKFLOW_SERVICE_SERVICE_NAME", "from_env")
    monkeypatch.setenv("WORKFLOW_SERVICE_MAX_CONCURRENT_TASKS", "4")
    monkeypatch.setenv("WORKFLOW_SERVICE_INTERNAL_PORT", "9101")
    settings = WorkflowServiceConfig()
    assert settings.host == "10.0.0.5" and settings.port == 9001
    assert settings.service_name == "from_env" and settings.max_concurrent_tasks == 4
    assert settings.internal_port == 9101 and settings.step_interval == 0.1

    from examples.echo import workflow

    service = WorkflowService.from_config(workflow, settings)
    assert service.service_name == "from_env" and service.max_concurrent_tasks == 4
    assert service.service_definition.host == "10.0.0.5"
    assert service.service_definition.port == 9001


def test_parse_config_direct_source_label() -> None:
    with pytest.raises(ConfigError, match=r"^inline: nmae: unknown key$"):
        parse_config({"nmae": 1}, "inline")

"""`launch_local`: a service served alone in-process, inside the caller's task group."""

from __future__ import annotations

import anyio
import pytest

from examples.echo import EchoWorkflow
from gateway.messages import TaskDefinition, TaskStatus
from services.workflow import WorkflowService

pytestmark = pytest.mark.anyio


async def test_launch_local_serves_tasks_until_its_task_group_is_cancelled() -> None:
    service = WorkflowService(service_name="solo", workflow=EchoWorkflow(timeout=5))
    async with anyio.create_task_group() as tg:
        await service.launch_local(tg)  # returns once the service is serving
        control_plane = service.service_host.control_plane
        record = await control_plane.run(TaskDefinition(input='{"message": "alone"}'), "solo", 5)
        assert (record.status, record.result.result) == (TaskStatus.COMPLETED, "alone")
        assert list(control_plane.registry.definitions()) == ["solo"]
        tg.cancel_scope.cancel()
    # the loop lived in our task group: cancelling it ended everything, nothing is left behind
    assert not control_plane.accepting

"""The agent's side of ``potluck doctor --cluster``: open a probe listener, probe peers.

A daemon thread long-polls the coordinator's ``/api/v1/doctor/tasks/{node_id}``. A ``listen``
task opens a :class:`~potluck.net.probe.ProbeListener` on this node's data-plane address for
the round's lifetime and reports its port together with this node's local checks; a
``probe`` task probes every listed peer and reports the raw measurements (the coordinator
classifies them). Independent of the heartbeat loop: a slow probe never delays a heartbeat,
and a coordinator without doctor routes (404) just stops the thread.
"""

from __future__ import annotations

import threading
from typing import Any

from potluck.contracts import wire as d
from potluck.contracts.client import CoordinatorClient
from potluck.contracts.errors import NotFoundError, PotluckError
from potluck.log import get_logger
from potluck.net.probe import ProbeListener, ProbeSettings, probe_link

log = get_logger("doctor.responder")

POLL_WAIT_S = 20.0


class DoctorResponder:
    """Serve doctor rounds for one agent (an agent service: ``Agent(services=[DoctorResponder])``). ``agent`` is read for ``node_id`` on every poll
    (it changes when the agent registers again)."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        config = agent.config
        self.url = config.url.rstrip("/")
        self.address: str = config.node.advertise
        self.name: str = getattr(agent.registration, "name", None) or config.name
        self._client = CoordinatorClient(self.url, config.token)
        self.host = self._client.host
        self._stop = threading.Event()
        self._listeners: list[ProbeListener] = []
        self._thread = threading.Thread(target=self._loop, name="doctor", daemon=True)

    def start(self) -> DoctorResponder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for listener in self._listeners:
            listener.close()
        self._client.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            node_id = self.agent.node_id
            self._client.node_credential = self.agent.client.node_credential
            try:
                task = self._client.doctor_task(node_id, POLL_WAIT_S)
                if task is not None:
                    self._handle(node_id, task)
            except NotFoundError as exc:
                if "doctor run" not in str(exc):
                    log.info("the host has no doctor routes; not serving doctor rounds")
                    return
                log.info("doctor round gone: %s", exc)  # it ended before we answered
            except PotluckError as exc:
                if self._stop.is_set():
                    return  # stop() closed the client under a long poll
                # The heartbeat loop reports a host that is down; here we only back off.
                log.info("doctor poll failed (retrying in 2 s): %s", exc)
                self._stop.wait(2.0)

    def _handle(self, node_id: int, task: d.Task) -> None:
        if task.kind == "listen":
            body = d.Listening(node_id=node_id, port=0, checks=self._checks(task.mode))
            try:
                listener = ProbeListener(self.address, 0, ttl=task.ttl_s).start()
            except OSError as exc:
                body.error = f"cannot open a probe listener on {self.address}: {exc}"
            else:
                self._listeners = [lst for lst in self._listeners if not lst.closed] + [listener]
                body.port = listener.port
            self._client.doctor_listening(task.run_id, body)
        else:
            settings = ProbeSettings(**task.settings.model_dump(exclude_none=True))
            probes = [
                d.ProbeOut(target=t.name, probe=d.LinkProbeMsg.model_validate(
                    probe_link(t.address, t.port, settings).to_dict()))
                for t in task.targets
            ]
            self._client.doctor_probed(task.run_id, d.Probed(node_id=node_id, probes=probes))

    def _checks(self, mode: str) -> list[d.CheckMsg]:
        from potluck.doctor.node import node_checks_for_agent

        checks = node_checks_for_agent(
            self.name, self.host, self.address, self.agent.config.state_dir, cuda=mode == "full"
        )
        return [d.CheckMsg.model_validate(c.to_dict()) for c in checks]

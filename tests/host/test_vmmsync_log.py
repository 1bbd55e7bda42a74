"""The VMM sync says a failure once per account and message, not every tick (an LXC
account waiting for its image fails the same way each time)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from p2pmarket.auction.accounts import ACTIVE
from p2pmarket.host import vmmsync
from p2pmarket.host.vmm.base import VmmError
from p2pmarket.host.vmmsync import VmmSync


class FailingVMM:
    max_vcpus = 4
    message = "the container has no root file system"

    def apply(self, account_id: str, spec: Any) -> Any:
        raise VmmError(self.message, account_id)


async def test_the_same_failure_is_a_warning_once(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(vmmsync, "domain_spec", lambda *a: object())
    account: Any = type("A", (), {"state": ACTIVE, "allocation": {}, "bids": {}})()
    vmm = FailingVMM()
    sync = VmmSync(vmm)   # type: ignore[arg-type]
    with caplog.at_level(logging.DEBUG, logger=vmmsync.__name__):
        for _ in range(3):
            await sync.run({"a1": account}, {"a1": {}}, {}, {})
        vmm.message = "another failure"
        await sync.run({"a1": account}, {"a1": {}}, {}, {})
    levels = [(r.levelno, r.getMessage().rsplit(": ", 1)[1]) for r in caplog.records
              if r.name == vmmsync.__name__]
    assert levels == [(logging.WARNING, "the container has no root file system"),
                      (logging.DEBUG, "the container has no root file system"),
                      (logging.DEBUG, "the container has no root file system"),
                      (logging.WARNING, "another failure")]

"""Replays of XUA assertions refused (IHE ITI TF-2b 3.40; SAML 2.0 Core 2.5.1).

A verified assertion (kuva.xds.xua) is a bearer token: whoever holds it can send
it. So kuva remembers each one it accepted until it expires and refuses it again
within that time, on every node of the index (one row per assertion, its primary
key the SHA-256 of the ID: the second insert fails on whichever node comes second).

With ``[xds] xua_assertion_reuse`` an identity provider's assertion may serve
several requests (ITI TF-2b 3.40.4.1.2 lets an X-Service User reuse it within its
lifetime); then what is remembered is the assertion with the request's
wsa:MessageID, and only a request sent again is refused.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from kuva.index.uow import UnitOfWork
from kuva.model.clock import Clock, utcnow

log = logging.getLogger(__name__)

# Expired rows are dropped by the first acceptance after this long.
_SWEEP = timedelta(minutes=5)


class AssertionReplay:
    def __init__(self, engine: Engine, *, reuse: bool = False, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._reuse = reuse
        self._clock = clock
        self._swept: datetime | None = None

    def first_use(self, assertion_id: str, message_id: str, expires_at: datetime) -> bool:
        """Whether this is the assertion's first use (then it is remembered until
        ``expires_at``); False for a replay."""
        key = f"{assertion_id}\n{message_id}" if self._reuse else assertion_id
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        now = self._clock()
        try:
            with UnitOfWork(self._engine) as uow:
                if uow.assertions.seen(digest):
                    return False
                uow.assertions.add(digest, expires_at)
                if self._swept is None or now - self._swept > _SWEEP:
                    uow.assertions.forget_expired(now)
                    self._swept = now
                uow.commit()
        except IntegrityError:
            return False  # another request (on this node or another) took it first
        return True

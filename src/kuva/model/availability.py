"""Instance availability, as an Instance Availability Notification reports it
(PS3.3 C.4.23.1.1: ONLINE, NEARLINE, OFFLINE, UNAVAILABLE)."""

from __future__ import annotations

from dataclasses import dataclass

ONLINE = "ONLINE"
UNAVAILABLE = "UNAVAILABLE"
AVAILABILITIES = frozenset({"ONLINE", "NEARLINE", "OFFLINE", "UNAVAILABLE"})


@dataclass(frozen=True)
class AvailableInstance:
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    availability: str = ONLINE

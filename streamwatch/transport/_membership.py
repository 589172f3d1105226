"""Consumer-group bookkeeping for the in-memory transport (callers hold the bus lock)."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field

from streamwatch.transport.base import Message, RebalanceCallback, TopicPartition

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Member:
    """One subscribed consumer in a group."""

    member_id: str
    group_id: str
    topics: frozenset[str]
    on_assign: RebalanceCallback | None
    on_revoke: RebalanceCallback | None
    assignment: frozenset[TopicPartition] = frozenset()
    applied_generation: int = -1


@dataclass(eq=False)
class Group:
    """Membership, generation, pending rebalance and committed offsets of one group.

    A rebalance completes once every member has joined it (revoked its partitions in its
    own ``poll``); members that do not join before the deadline are evicted.
    """

    group_id: str
    logs: dict[str, list[list[Message]]]
    members: dict[str, Member] = field(default_factory=dict)
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    generation: int = 0
    rebalancing: bool = False
    joined: set[str] = field(default_factory=set)
    deadline: float = 0.0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def join(
        self,
        topics: frozenset[str],
        on_assign: RebalanceCallback | None,
        on_revoke: RebalanceCallback | None,
    ) -> Member:
        member = Member(
            f"{self.group_id}-{next(self._ids):06d}", self.group_id, topics, on_assign, on_revoke
        )
        self.members[member.member_id] = member
        logger.debug("member joined group=%s member=%s", self.group_id, member.member_id)
        return member

    def leave(self, member: Member) -> None:
        self.members.pop(member.member_id, None)
        self.joined.discard(member.member_id)
        logger.debug("member left group=%s member=%s", self.group_id, member.member_id)

    def change_subscription(self, member: Member, topics: frozenset[str]) -> None:
        member.topics = topics

    def is_member(self, member: Member) -> bool:
        return self.members.get(member.member_id) is member

    def has_joined(self, member: Member) -> bool:
        return member.member_id in self.joined

    def subscribes(self, topic: str) -> bool:
        return any(topic in m.topics for m in self.members.values())

    def begin_rebalance(self, session_timeout_ms: int) -> None:
        """Start a rebalance unless one is under way (late joiners join that one)."""
        if not self.rebalancing:
            self.rebalancing = True
            self.joined = set()
            self.deadline = time.monotonic() + session_timeout_ms / 1000
            logger.debug("rebalance started group=%s members=%d", self.group_id, len(self.members))
        self._maybe_complete()

    def mark_joined(self, member: Member) -> None:
        self.joined.add(member.member_id)
        self._maybe_complete()

    def evict_late_members(self) -> None:
        if not self.rebalancing or time.monotonic() < self.deadline:
            return
        for member_id in [m for m in self.members if m not in self.joined]:
            logger.warning(
                "evicting member group=%s member=%s: no poll within the session timeout",
                self.group_id,
                member_id,
            )
            del self.members[member_id]
        self._maybe_complete()

    def _maybe_complete(self) -> None:
        if not self.rebalancing or not set(self.members) <= self.joined:
            return
        self.rebalancing = False
        self.generation += 1
        assignment = range_assignment(self.members, self.logs)
        for member_id, member in self.members.items():
            member.assignment = frozenset(assignment.get(member_id, ()))
        logger.info(
            "rebalance done group=%s generation=%d members=%d",
            self.group_id,
            self.generation,
            len(self.members),
        )


def range_assignment(
    members: dict[str, Member], logs: dict[str, list[list[Message]]]
) -> dict[str, list[TopicPartition]]:
    """Kafka's range assignor: per topic, contiguous partition ranges to sorted members."""
    out: dict[str, list[TopicPartition]] = {member_id: [] for member_id in members}
    topics = sorted({t for m in members.values() for t in m.topics})
    for topic in topics:
        if topic not in logs:
            continue
        subscribers = sorted(mid for mid, m in members.items() if topic in m.topics)
        n_parts = len(logs[topic])
        per, extra = divmod(n_parts, len(subscribers))
        start = 0
        for i, member_id in enumerate(subscribers):
            count = per + (1 if i < extra else 0)
            out[member_id].extend(TopicPartition(topic, p) for p in range(start, start + count))
            start += count
    return out

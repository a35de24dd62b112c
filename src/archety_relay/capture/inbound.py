"""What happens to a captured message before it is queued: the backend's rules and the chat's
context. Capture calls `admit(message, now)` once per message, before the enqueue.

- A `filter` rule that matches: the message is not queued (capture's cursor still moves past
  it) and a `message_filtered` event says so, so nothing disappears silently.
- An `auto_reply` rule that matches: the reply is stored on the durable outgoing path, a
  `rule_triggered` event reports it, and the message still goes to the orchestrator, marked
  `metadata.auto_replied`.
- Otherwise, and in both delivered cases, the body carries the persona, and the chat's
  `context` and `plan` as the last `context_update` / `update_plan` left them.

Rules are few and change only by sync commands, so they are held in memory and re-read
(`reload`) after a `set_rule`. Chat state is not: one chat's context and plan are read by key
for each message (a primary-key lookup), so thousands of chats cost neither memory nor a reload
of everything per command (review 2026-12-04 #16). A rule's effect on a message is recorded
once (`store.record_rule_hit`), so a crash between that and the enqueue neither doubles the auto
reply nor loses the filtering.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog

from ..backend import rules
from ..chatdb.guids import is_chat_guid
from ..config import Settings
from ..model import Message, Skipped
from ..store import NewOutgoing, Store

log = structlog.get_logger("archety_relay.inbound")

AUTO_REPLY_ORIGIN = "auto_reply"
# A rule whose pattern runs out of time this many times is turned off (and reported).
TIMEOUTS_BEFORE_DISABLE = 3


class Inbound:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.notify: Callable[[], None] = lambda: None  # an auto reply is waiting to be sent
        self.rules: tuple[rules.Rule, ...] = ()
        self._timeouts: Counter[str] = Counter()  # pattern timeouts per rule since the start
        self.reload()

    def reload(self) -> None:
        """Re-read the rules (after a command changed them). Chats' context and plan are read
        per message, by key: thousands of chats cost nothing here."""
        loaded: list[rules.Rule] = []
        for source in self.store.rules():
            rule = rules.parse(source)
            if isinstance(rule, rules.Rule):
                loaded.append(rule)
            else:  # stored by an older version that read it differently: say so, skip it
                log.warning("rule_unreadable", reason=rule)
        self.rules = tuple(loaded)

    def admit(self, message: Message, now: float) -> bytes | Skipped:
        """The exact body to queue for this message, or Skipped("filtered")."""
        verdict = self._verdict(message, now)
        extra: dict[str, Any] = dict(self.settings.persona_fields())
        extra.update(self._chat_fields(message))
        if verdict.action == "filter" and verdict.rule:
            done = self.store.record_rule_hit(
                message.message_guid,
                "filter",
                verdict.rule,
                now,
                event=(
                    "message_filtered",
                    {
                        "message_guid": message.message_guid,
                        "chat_guid": message.chat_guid,
                        "details": {"rule": verdict.rule},
                    },
                ),
            )
            if done == "filter":
                log.info("message_filtered", message_guid=message.message_guid, rule=verdict.rule)
                return Skipped(message.rowid, message.message_guid, "filtered")
        elif (
            verdict.action == "auto_reply"
            and verdict.rule
            and verdict.reply_text
            and self._auto_reply(message, verdict.rule, verdict.reply_text, now)
        ):
            extra["metadata"] = {**message.payload()["metadata"], "auto_replied": True}
        try:
            return message.frozen_body(extra)
        except ValueError as exc:  # text that cannot be UTF-8 (a lone surrogate)
            log.warning(
                "row_unreadable", message_guid=message.message_guid, error_type=type(exc).__name__
            )
            return Skipped(message.rowid, message.message_guid, "unreadable")

    def holds_back(self, message: Message, now: float) -> bool:
        """Whether a filter rule would keep this message from the orchestrator (nothing is
        recorded: `backfill` asks before the operator confirms)."""
        return self._verdict(message, now).action == "filter"

    def _verdict(self, message: Message, now: float) -> rules.Verdict:
        if not self.rules:
            return rules.Verdict("deliver")
        facts = rules.Facts(
            sender=message.sender,
            content=message.text,
            chat_keys=tuple(k for k in (message.chat_guid, message.chat_identifier) if k),
            is_group=message.mode == "group",
        )
        try:
            verdict = rules.decide(self.rules, facts)
        except Exception as exc:  # a rule must never cost a message: deliver it
            log.warning("rule_evaluation_failed", error_type=type(exc).__name__)
            return rules.Verdict("deliver")
        for name in verdict.timed_out:
            log.warning(
                "rule_match_timeout",
                rule=name,
                message_guid=message.message_guid,
                budget_s=rules.MATCH_BUDGET_SECONDS,
            )
            self._timeouts[name] += 1
            if self._timeouts[name] >= TIMEOUTS_BEFORE_DISABLE:
                self._disable(name, now)
        return verdict

    def _disable(self, name: str, now: float) -> None:
        """A pattern that keeps running out of time would cost every message its budget (and
        starve the other rules' patterns): turn the rule off and tell the backend, which can
        set it again."""
        reason = (
            f"its regular expression ran out of time on {TIMEOUTS_BEFORE_DISABLE} messages; "
            "disabled by the relay"
        )
        if self.store.disable_rule(name, reason, now):
            log.error(
                "rule_disabled",
                rule=name,
                hint="a set_rule with a simpler `matches` pattern turns it on again",
            )
        del self._timeouts[name]
        self.reload()

    def _auto_reply(self, message: Message, rule: str, text: str, now: float) -> bool:
        if not is_chat_guid(message.chat_guid):
            return False
        done = self.store.record_rule_hit(
            message.message_guid,
            "auto_reply",
            rule,
            now,
            event=(
                "rule_triggered",
                {
                    "message_guid": message.message_guid,
                    "chat_guid": message.chat_guid,
                    "details": {"rule": rule, "action": "auto_reply"},
                },
            ),
            outgoing=[
                NewOutgoing(
                    message.chat_guid,
                    text,
                    now,
                    AUTO_REPLY_ORIGIN,
                    reply_to=message.message_guid,
                )
            ],
        )
        if done == "auto_reply":
            log.info("auto_reply_planned", message_guid=message.message_guid, rule=rule)
            self.notify()
            return True
        return False

    def _chat_fields(self, message: Message) -> dict[str, Any]:
        """`context` and `plan` for this chat, whichever key (guid or chat_identifier) they
        were set under; the most recent setting (or reset) wins."""
        keys = [k for k in (message.chat_guid, message.chat_identifier) if k]
        states = list(self.store.chat_states(keys).values())
        fields: dict[str, Any] = {}
        context = max(states, key=lambda s: s.context_at or 0.0, default=None)
        if context is not None and context.context is not None:
            fields["context"] = context.context
        plan = max(states, key=lambda s: s.plan_at or 0.0, default=None)
        if plan is not None and plan.plan_at is not None:
            fields["plan"] = plan.plan
        return fields

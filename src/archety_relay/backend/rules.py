"""The backend's message rules (`set_rule`): which incoming message is held back or answered
locally. Pure functions over values; the store keeps the rules, `inbound` applies the verdict.

    {"rule_type": "filter" | "auto_reply",
     "rule_config": {"name": "quiet-bob", "enabled": true,
                     "conditions": [{"field": "sender", "operator": "equals", "value": "+1555…"}],
                     "action": {"type": "auto_reply", "parameters": {"text": "back soon"}}}}

Conditions are those of the previous edge client: fields `sender`, `content`, `thread_id`
(the chat's guid or its chat_identifier), `is_group`; operators `equals`, `contains`,
`starts_with`, `ends_with` (case-insensitive) and `matches` (a regular expression). All the
conditions of a rule must hold. A key the relay does not know is refused, not ignored, and so is
a filter without conditions (it would hold back every message). A matching filter wins over an auto reply; among rules of one
kind the oldest wins.

`matches` is the one condition that could take unbounded time: a pattern like `(a|aa)+$` on a
long message backtracks for hours in Python's `re`. It runs on the `regex` engine with a
timeout instead, and all of one message's patterns share one budget, so a hostile rule costs a
message at most `MATCH_BUDGET_SECONDS` and counts as "no match". A worker process would bound
it as well, but costs a process per relay and a round trip per message; the in-engine timeout
is checked inside the backtracking loop itself, so no pattern can escape it.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from typing import Any

import regex

FIELDS = ("sender", "content", "thread_id", "is_group")
OPERATORS = ("equals", "contains", "matches", "starts_with", "ends_with")
SUPPORTED_TYPES = ("filter", "auto_reply")
KNOWN_TYPES = ("auto_reply", "forward", "filter", "schedule_reply")
MAX_NAME_CHARS = 200
MAX_VALUE_CHARS = 1000
MAX_CONDITIONS = 20
MAX_REPLY_CHARS = 2000
# The most one message may spend in `matches` patterns, over all rules together.
MATCH_BUDGET_SECONDS = 0.2
# The most a pattern may cost to compile (see pattern_cost): compiling has no timeout, and
# `(?:a{65535}){65535}` (19 characters) takes over 12 GB in 12 s.
MAX_PATTERN_COST = 10_000
# What a rule_config and a condition may hold. Anything else is refused rather than ignored: a
# misspelt key ("condition") silently read as "no conditions" made a filter hold back every
# message (review 2026-12-04 #7), so a key we do not know is more likely a mistake than news.
CONFIG_KEYS = frozenset({"name", "enabled", "conditions", "action", "rule_type"})
CONDITION_KEYS = frozenset({"field", "operator", "value"})
_COUNTED = re.compile(r"\{(\d*)(,?)(\d*)\}")


@dataclass(frozen=True)
class Condition:
    field: str
    operator: str
    value: str | bool
    pattern: Any = dataclasses.field(
        default=None, compare=False, repr=False
    )  # compiled, for `matches`


@dataclass(frozen=True)
class Rule:
    name: str
    rule_type: str  # "filter" | "auto_reply"
    enabled: bool
    conditions: tuple[Condition, ...]
    reply_text: str | None  # auto_reply's action.parameters.text
    source: dict[str, Any] = dataclasses.field(
        compare=False
    )  # as set (stored, and listed by `status`)


@dataclass(frozen=True)
class Facts:
    """What the conditions can look at in one incoming message."""

    sender: str
    content: str
    chat_keys: tuple[str, ...]  # the chat's guid and its chat_identifier
    is_group: bool


@dataclass(frozen=True)
class Verdict:
    action: str  # "deliver" | "filter" | "auto_reply"
    rule: str | None = None
    reply_text: str | None = None
    timed_out: tuple[str, ...] = ()  # rules whose pattern ran out of time (counted as no match)


def parse(payload: dict[str, Any]) -> Rule | str:
    """A `set_rule` payload as a Rule, or the reason it cannot be one."""
    config = payload.get("rule_config")
    if not isinstance(config, dict):
        return "rule_config must be an object"
    rule_type = payload.get("rule_type") or config.get("rule_type")
    if rule_type not in KNOWN_TYPES:
        return f"unknown rule_type {str(rule_type)[:40]!r}"
    if rule_type not in SUPPORTED_TYPES:
        return f"rule_type {rule_type!r} is not supported by this relay (filter, auto_reply are)"
    unknown = sorted(str(k)[:40] for k in config if k not in CONFIG_KEYS)
    if unknown:
        return f"unknown key(s) in rule_config: {', '.join(unknown[:5])}"
    name = config.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
        return "rule_config.name must be a non-empty string"
    enabled = config.get("enabled", True)
    if not isinstance(enabled, bool):
        return "rule_config.enabled must be true or false"
    raw_conditions = config.get("conditions")
    if not isinstance(raw_conditions, list) or len(raw_conditions) > MAX_CONDITIONS:
        return f"rule_config.conditions must be a list of at most {MAX_CONDITIONS}"
    if rule_type == "filter" and not raw_conditions:
        # all([]) is true: a filter with no condition would hold back every message.
        return "a filter needs at least one condition"
    conditions: list[Condition] = []
    for raw in raw_conditions:
        parsed = _condition(raw)
        if isinstance(parsed, str):
            return parsed
        conditions.append(parsed)
    reply_text = None
    if rule_type == "auto_reply":
        action = config.get("action")
        params = action.get("parameters") if isinstance(action, dict) else None
        text = params.get("text") if isinstance(params, dict) else None
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_REPLY_CHARS:
            return "auto_reply needs action.parameters.text"
        reply_text = text
    source = {"rule_type": rule_type, "rule_config": config}
    return Rule(name, rule_type, enabled, tuple(conditions), reply_text, source)


def _condition(raw: Any) -> Condition | str:
    if not isinstance(raw, dict):
        return "each condition must be an object {field, operator, value}"
    unknown = sorted(str(k)[:40] for k in raw if k not in CONDITION_KEYS)
    if unknown:
        return f"unknown key(s) in a condition: {', '.join(unknown[:5])}"
    name, operator, value = raw.get("field"), raw.get("operator"), raw.get("value")
    if name not in FIELDS:
        return f"condition field must be one of {', '.join(FIELDS)}"
    if operator not in OPERATORS:
        return f"condition operator must be one of {', '.join(OPERATORS)}"
    if name == "is_group":
        flag = {"true": True, "false": False}.get(str(value).lower()) if value is not None else None
        if operator != "equals" or flag is None:
            return "is_group takes operator equals and value true or false"
        return Condition(name, operator, flag)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return f"condition value for {name} must be a string"
    text = str(value)
    if not text or len(text) > MAX_VALUE_CHARS:
        return f"condition value must be 1 to {MAX_VALUE_CHARS} characters"
    if operator == "matches":
        if pattern_cost(text) > MAX_PATTERN_COST:
            return "regular expression too large: its counted repeats multiply past 10,000"
        try:
            return Condition(name, operator, text, regex.compile(text))
        except (regex.error, RecursionError, OverflowError, ValueError) as exc:
            return f"invalid regular expression: {str(exc)[:100]}"
    return Condition(name, operator, text)


def pattern_cost(pattern: str) -> int:
    """An upper estimate of a pattern's compiled size: each atom counts 1, a group the sum of
    what it holds, and a counted repeat multiplies what it repeats by its bound (`{m,n}` by n,
    `{m,}` by m + 1). Nested counted repeats are what make compiling explode; a pattern a person
    writes (`\\d{3}-\\d{4}`, `.{0,200}`) costs a few hundred at most."""
    stack: list[list[int]] = [[]]
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            stack[-1].append(1)
            i += 2
            continue
        if ch == "[":  # a set is one atom: skip to its end (a leading ] or ^] is literal)
            j = i + 1
            j += pattern[j : j + 1] == "^"
            j += pattern[j : j + 1] == "]"
            while j < len(pattern) and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            stack[-1].append(1)
            i = j + 1
            continue
        if ch == "(":
            stack.append([])
        elif ch == ")" and len(stack) > 1:
            inner = sum(stack.pop())
            stack[-1].append(max(1, inner))
        elif ch == "{" and (counted := _COUNTED.match(pattern, i)) and stack[-1]:
            low, comma, high = counted.groups()
            if low or high:
                bound = int(high) if high else int(low or 0) + (1 if comma else 0)
                stack[-1][-1] = min(stack[-1][-1] * max(1, bound), 10**12)
                i = counted.end()
                continue
            stack[-1].append(1)
        elif ch not in "|*+?":
            stack[-1].append(1)
        i += 1
    while len(stack) > 1:
        inner = sum(stack.pop())
        stack[-1].append(max(1, inner))
    return sum(stack[0])


class _Budget:
    def __init__(self, seconds: float, clock: Any) -> None:
        self.clock = clock
        self.deadline = clock() + seconds

    def left(self) -> float:
        return self.deadline - self.clock()


def decide(
    rules: list[Rule] | tuple[Rule, ...],
    facts: Facts,
    *,
    budget_seconds: float = MATCH_BUDGET_SECONDS,
    clock: Any = time.monotonic,
) -> Verdict:
    """What the enabled rules say about one message (oldest rule first; a filter wins)."""
    budget = _Budget(budget_seconds, clock)
    timed_out: list[str] = []
    found: dict[str, Rule] = {}
    for rule in rules:
        if not rule.enabled or rule.rule_type in found:
            continue
        try:
            if all(_holds(c, facts, budget) for c in rule.conditions):
                found[rule.rule_type] = rule
        except TimeoutError:
            timed_out.append(rule.name)
    if "filter" in found:
        return Verdict("filter", found["filter"].name, timed_out=tuple(timed_out))
    if "auto_reply" in found:
        rule = found["auto_reply"]
        return Verdict("auto_reply", rule.name, rule.reply_text, tuple(timed_out))
    return Verdict("deliver", timed_out=tuple(timed_out))


def _holds(condition: Condition, facts: Facts, budget: _Budget) -> bool:
    if condition.field == "is_group":
        return facts.is_group is condition.value
    subjects = {
        "sender": (facts.sender,),
        "content": (facts.content,),
        "thread_id": facts.chat_keys,
    }[condition.field]
    return any(_compare(condition, s, budget) for s in subjects)


def _compare(condition: Condition, subject: str, budget: _Budget) -> bool:
    if condition.operator == "matches":
        left = budget.left()
        if left <= 0:
            raise TimeoutError
        return condition.pattern.search(subject, timeout=left) is not None
    value, text = str(condition.value).casefold(), subject.casefold()
    if condition.operator == "equals":
        return text == value
    if condition.operator == "contains":
        return value in text
    if condition.operator == "starts_with":
        return text.startswith(value)
    return text.endswith(value)

"""Per-layer decisions: which candidates to convert, and with which ``cg`` / ``co``.

Module names are matched with fnmatch globs (``"features.*"``), or with regular
expressions given as compiled patterns (``re.compile(r"layer\\d\\.0\\..*")``) or as strings
prefixed ``"re:"``; a regex must match the whole name.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..geometry import check_cg_co, valid_cgs
from .patterns import Candidate, channels

__all__ = ["Decision", "LayerPolicy", "PATTERNS", "name_matches", "parse_patterns"]

PATTERNS = ("dw_pw", "pw", "std", "linear")

NamePattern = str | re.Pattern


def name_matches(name: str, pattern: NamePattern) -> bool:
    if isinstance(pattern, re.Pattern):
        return pattern.fullmatch(name) is not None
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def parse_patterns(patterns: str | Iterable[str]) -> tuple[str, ...]:
    """``("dw_pw", "pw")`` from an iterable of names or one string (``"pw"``, ``"dw_pw,pw"``)."""
    if isinstance(patterns, str):
        names = tuple(p.strip() for p in patterns.split(",") if p.strip())
    else:
        names = tuple(patterns)
    unknown = [p for p in names if p not in PATTERNS]
    if unknown:
        raise ValueError(f"unknown pattern(s) {unknown}; choose from {list(PATTERNS)}")
    return names


@dataclass
class Decision:
    convert: bool
    cg: int | None = None
    co: float | None = None
    reason: str = ""  # why a layer is skipped, or a note on a converted one
    cause: str = ""  # the kind of reason a layer is skipped ("indivisible", "pattern", ...)


def _as_list(patterns: NamePattern | Iterable[NamePattern] | None) -> list[NamePattern]:
    if patterns is None:
        return []
    if isinstance(patterns, (str, re.Pattern)):
        return [patterns]
    return list(patterns)


class LayerPolicy:
    """Turns the user's settings into a :class:`Decision` per candidate."""

    def __init__(
        self,
        cg: int,
        co: float,
        *,
        patterns: str | Iterable[str],
        include: NamePattern | Iterable[NamePattern] | None,
        exclude: NamePattern | Iterable[NamePattern] | None,
        min_channels: int,
        overrides: Mapping[NamePattern, Mapping[str, float]] | None,
        on_indivisible: str,
        skip_first: bool,
        skip_last: bool,
    ) -> None:
        check_cg_co(cg, co)
        self.cg, self.co = cg, co
        self.patterns = parse_patterns(patterns)
        if on_indivisible not in ("skip", "nearest"):
            raise ValueError(f"on_indivisible={on_indivisible!r}; use 'skip' or 'nearest'")
        if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
            raise ValueError(f"min_channels={min_channels!r} must be an int >= 1")
        self.include, self.exclude = _as_list(include), _as_list(exclude)
        self.min_channels = min_channels
        self.on_indivisible = on_indivisible
        self.skip_first, self.skip_last = skip_first, skip_last
        self.overrides: list[tuple[NamePattern, dict]] = []
        for key, value in (overrides or {}).items():
            extra = set(value) - {"cg", "co"}
            if extra:
                raise ValueError(f"overrides[{key!r}] has unknown keys {sorted(extra)}; only 'cg' and 'co'")
            o_cg, o_co = value.get("cg", cg), value.get("co", co)
            try:
                check_cg_co(o_cg, o_co)
            except (TypeError, ValueError) as err:
                raise type(err)(f"overrides[{key!r}]: {err}") from None
            self.overrides.append((key, dict(value)))

    def decide(self, candidates: list[Candidate]) -> list[Decision]:
        enabled = [i for i, c in enumerate(candidates) if c.pattern in self.patterns and c.used]
        edge = set()
        if self.skip_first and enabled:
            edge.add(enabled[0])
        if self.skip_last and enabled:
            edge.add(enabled[-1])
        return [self._decide(c, i in edge) for i, c in enumerate(candidates)]

    def unmatched(self, candidates: list[Candidate]) -> list[str]:
        """One line per ``include`` / ``exclude`` / ``overrides`` pattern that matches no candidate."""
        names = [c.name for c in candidates]
        lines = []
        for what, patterns in (("include", self.include), ("exclude", self.exclude),
                               ("overrides", [key for key, _ in self.overrides])):
            for p in patterns:
                if not any(name_matches(n, p) for n in names):
                    example = f" (candidate names look like {names[len(names) // 2]!r})" if names else ""
                    lines.append(f"{what} pattern {_show(p)} matches no candidate layer{example}")
        return lines

    def _decide(self, c: Candidate, at_edge: bool) -> Decision:
        conv = c.layer
        if c.pattern not in self.patterns:
            return _skip("pattern", f"pattern {c.pattern!r} not enabled (patterns={list(self.patterns)})")
        if not c.used:
            return _skip("unused", c.unused_reason)
        if c.unsupported:
            return _skip("unsupported", c.unsupported)
        hit = next((p for p in self.exclude if name_matches(c.name, p)), None)
        if hit is not None:
            return _skip("exclude", f"excluded by {_show(hit)}")
        if self.include and not any(name_matches(c.name, p) for p in self.include):
            return _skip("include", "not matched by include")
        if c.head and not self.include:
            return _skip("head", "the model's output layer (classifier head): name it in include= to convert it")
        if at_edge:
            return _skip("edge", "first/last layer skipped (skip_first/skip_last)")
        if c.pattern in ("dw_pw", "pw"):
            if conv.padding != (0, 0) and conv.padding != "valid":
                return _skip("padding", f"1x1 conv with padding={conv.padding} (output would change size)")
            if conv.stride[0] != conv.stride[1]:
                return _skip("stride", f"unequal stride {conv.stride}")
        cin, _ = channels(conv)
        what = "in_features" if c.pattern == "linear" else "in_channels"
        if cin < self.min_channels:
            return _skip("min_channels", f"{what}={cin} < min_channels={self.min_channels}")
        cg, co = self.cg, self.co
        for key, value in self.overrides:
            if name_matches(c.name, key):
                cg, co = value.get("cg", cg), value.get("co", co)
        note = ""
        if cin % cg:
            if self.on_indivisible == "skip":
                return _skip("indivisible", f"cg={cg} does not divide {what}={cin} (on_indivisible='skip')")
            nearest = min(valid_cgs(cin), key=lambda d: (abs(d - cg), d))
            if nearest == 1:
                return _skip("indivisible", f"cg={cg} does not divide {what}={cin} and its nearest divisor is 1, "
                                            "which would save nothing (on_indivisible='nearest')")
            note = f"cg {cg} -> {nearest}: nearest divisor of {cin}"
            cg = nearest
        return Decision(True, cg=cg, co=co, reason=note)


def _skip(cause: str, reason: str) -> Decision:
    return Decision(False, reason=reason, cause=cause)


def _show(p: NamePattern) -> str:
    return f"re:{p.pattern}" if isinstance(p, re.Pattern) else f"'{p}'"

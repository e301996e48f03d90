"""Browse-path globs (agent.commands.path_glob): * ? within a name, ** across levels, pruning, nearest paths."""

from agent.commands.path_glob import check_pattern, matches, may_match_below, nearest, split


def m(pattern: str, path: str) -> bool:
    return matches(split(pattern), split(path))


def test_segments_and_deep_wildcard():
    assert m("Site/Line1/Pump*/Flow", "Site/Line1/Pump7/Flow")
    assert not m("Site/Line1/Pump*/Flow", "Site/Line1/Pump7/Sub/Flow")  # * stays within one name
    assert m("Site/Line1/Pump*/**", "Site/Line1/Pump7/Sub/Flow")
    assert m("Site/Line1/Pump*/**", "Site/Line1/Pump7")  # ** matches zero or more names
    assert m("Site/**/Flow", "Site/Flow")  # ** may match zero levels
    assert m("Site/**/Flow", "Site/A/B/C/Flow")
    assert not m("Site/**/Flow", "Site/A/B/C/Flows")
    assert m("**", "Any/Thing")
    assert m("Pump?", "Pump1") and not m("Pump?", "Pump10")
    assert not m("site/**", "Site/Flow")  # case-sensitive, as browse names are


def test_pruning():
    p = split("Site/Line1/Pump*/**")
    assert may_match_below(p, ())
    assert may_match_below(p, ("Site", "Line1"))
    assert may_match_below(p, ("Site", "Line1", "Pump3", "Sub"))
    assert not may_match_below(p, ("Site", "Line2"))
    assert not may_match_below(split("Site/Line1/Flow"), ("Site", "Line1", "Flow"))  # a full match, nothing below


def test_bad_patterns_and_nearest():
    assert check_pattern("Site/Pump**") is not None
    assert check_pattern("/") is not None
    assert check_pattern("Site/**/Flow") is None
    paths = ["Site", "Site/Line1", "Site/Line1/Pump1", "Site/Line1/Pump1/Flow", "Site/Line2"]
    assert nearest("Site/Line1/Pmp1/*", paths)[:2] == ["Site/Line1", "Site/Line1/Pump1"]

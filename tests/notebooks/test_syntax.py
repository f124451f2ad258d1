"""The notebooks show rules in the syntax the class uses (issue 12 item 5): iptables by
default, nft when the teacher sets NATTRACK_RULES_SYNTAX=nft once (or a notebook calls
ui.set_syntax("nft"), or open_session(..., syntax="nft"))."""
from __future__ import annotations

import pytest

from nattrack.lab import RULES_DIR
from nattrack.netfilter.rulesfile import load_rules, parse_rules
from nattrack.notebook import SYNTAX_ENV, open_session, ui
from nattrack.notebook.session import SessionError
from nattrack.widgets import widget_state

DNAT = "-A PREROUTING -i ntr-wan -p tcp --dport 8080 -j DNAT --to-destination 10.0.0.11:5080"


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv(SYNTAX_ENV, raising=False)
    ui.set_syntax(None)
    yield
    ui.set_syntax(None)


def _text(widget) -> str:
    import html
    import re
    pre = widget.value.split("<pre>", 1)[1].split("</pre>", 1)[0]
    return html.unescape(re.sub(r"<[^>]+>", "", pre))


def test_iptables_by_default():
    w = ui.show_rules("classroom-firewall")
    assert widget_state(w.value)["syntax"] == "iptables"
    assert "-A FORWARD -m conntrack --ctstate INVALID -j DROP" in _text(w)
    assert _text(ui.show_rule("nat", DNAT)).strip() == f"iptables -t nat {DNAT}"


def test_the_teachers_environment_variable_shows_nft(monkeypatch):
    monkeypatch.setenv(SYNTAX_ENV, "nft")
    w = ui.show_rules("classroom-firewall")
    assert widget_state(w.value)["syntax"] == "nft"
    text = _text(w)
    assert "ct state invalid counter drop" in text and "-A FORWARD" not in text
    assert parse_rules(text) == load_rules(RULES_DIR / "classroom-firewall.nft")
    assert _text(ui.show_rule("nat", DNAT)).strip() == (
        'nft add rule ip nat PREROUTING iifname "ntr-wan" tcp dport 8080 dnat to 10.0.0.11:5080')


def test_a_notebook_choice_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(SYNTAX_ENV, "nft")
    ui.set_syntax("iptables")
    assert ui.rules_syntax() == "iptables"
    s = open_session("02-snat", "replay", syntax="nft")
    try:
        assert ui.rules_syntax() == "nft"
    finally:
        s.close()
    assert widget_state(ui.show_rules("classroom", syntax="iptables").value)["syntax"] == \
        "iptables"


def test_a_wrong_syntax_is_one_line(monkeypatch):
    with pytest.raises(SessionError, match="syntax 'pf': iptables or nft"):
        ui.set_syntax("pf")
    monkeypatch.setenv(SYNTAX_ENV, "pf")
    with pytest.raises(SessionError, match=f"{SYNTAX_ENV}=pf: iptables or nft"):
        ui.show_rules("classroom")
    with pytest.raises(SessionError, match="^the rule:2: unsupported option .--bogus."):
        ui.show_rule("nat", "-A PREROUTING --bogus", syntax="nft")


@pytest.mark.parametrize("name, shown", [
    ("02-snat", "nft add rule ip nat PREROUTING iifname"),
    ("04-related-and-invalid", "ct state invalid counter drop"),
])
def test_a_class_in_nft_runs_the_notebook_with_nft_rules(name, shown, replay_user):
    """The notebook runs headless (replay) with NATTRACK_RULES_SYNTAX=nft and shows its
    rules in nft, no iptables rule left on the page."""
    import json

    from . import nbrun
    env = nbrun.kernel_env(replay_user, {"NATTRACK_RUN_DIR": "/nonexistent-nattrack",
                                         SYNTAX_ENV: "nft"})
    run = nbrun.execute(name, {"MODE": "replay"}, env, user=replay_user)
    views = json.dumps(run.nb.metadata.get("widgets", {}))       # the widgets' final state
    assert shown in views
    assert 'data-syntax=\\"nft\\"' in views and 'data-syntax=\\"iptables\\"' not in views

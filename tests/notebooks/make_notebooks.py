"""Write notebooks/*.ipynb from the text below (the notebooks' source of truth).

    .venv/bin/python -m tests.notebooks.make_notebooks          # rewrite them
    .venv/bin/python -m tests.notebooks.make_notebooks --check  # exit 1 if out of date

Each notebook: a title and story in markdown, a ``parameters`` cell (``MODE``), the
mode banner, then per scenario some text with questions and two thin code cells (the
panel with its buttons, then every step run from code, so a headless run drives
every state).  No outputs are stored.  tests/notebooks/test_notebooks.py checks that
the committed files are what this writes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "notebooks"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}

PARAMS = ('MODE = "auto"   # "live": the lab; "replay": a recorded run; '
          '"auto": live when a lab answers')


def md(text: str):
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def code(text: str, tags=(), timeout: int | None = None):
    c = nbformat.v4.new_code_cell(text.strip("\n"))
    if tags:
        c.metadata["tags"] = list(tags)
    if timeout:
        c.metadata["nattrack"] = {"timeout": timeout}
    return c


def opening(name: str, title: str, story: str) -> list:
    return [
        md(f"# {title}\n\n{story}"),
        code(PARAMS, tags=["parameters"]),
        code(f'from nattrack.notebook import open_session, ui\n'
             f'session = open_session("{name}", MODE)\nui.banner(session)'),
    ]


def scenario(var: str, name: str, text: str, questions: str = "", maker: str = "stepper",
             timeout: int | None = None) -> list:
    """The scenario's introduction, its panel, every step run from code, then the
    questions: about what the panel above them shows."""
    cells = ([md(text)] if text.strip() else []) + [
        code(f'{var} = ui.{maker}(session, "{name}")\n{var}'),
        code(f"{var}.run_all();", timeout=timeout)]
    return cells + ([md(questions)] if questions else [])


CLOSING = [md("## When you are done\n\n`ui.close(session)` stops this notebook's views and "
              "background refresh and lets go of the lab (the pictures stay as they are, the "
              "buttons stop working). Shutting the kernel down does the same; "
              "*Kernel → Restart* starts afresh.")]


def welcome() -> list:
    return [
        *opening("00-welcome", "Welcome: the lab, the views, and how to start again", """
Linux remembers every connection that crosses a NAT router in its **connection tracking
table** (`nf_conntrack`), and rewrites addresses (`nf_nat`) from what it remembers. In these
notebooks you send packets through a small router by hand and watch what it remembers.

**The lab.** `h1` (10.0.0.10) and `h2` (10.0.0.11) sit on a private LAN behind the router
`r` (10.0.0.1 inside, 203.0.113.1 outside); `srv` (203.0.113.10) is on the public side.
In the live lab the **kernel** of `r` does the NAT and nattrack's Python tracker follows every
packet beside it, so you always see both tables.

**Starting it.** A teacher (or you, with root) runs, from the kit's folder:

```sh
sudo .venv/bin/nattrack notebook          # starts the lab, then JupyterLab as you
```

Without root the notebooks run in **replay mode**: recorded runs of the same lab, played
back through the same tracker. The banner below says which mode this notebook is in.
"""),
        md("""
## What the views show

The next cells show one ping from `h1` to `srv`. Look at each part of the panel:

* **buttons**: one per step, *next step* and *reset*; pressing a step runs the steps before it
  first; after the last step the text says the scenario is over, and *reset* starts again;
* **the step's text**: what the tracker did with the packet (state, flags, which timeout and
  why), computed from what happened, then what the script expected, in red where they differ;
* **nattrack's tracker: its connection table**: one row per entry with the fields `conntrack -L`
  prints (protocol, timeout, state, both tuples, flags); a new row is green, a changed cell yellow;
* **tracker and kernel**: the same entries side by side, disagreements in red;
* **the packet before and after the router**: every header field; what NAT changed is highlighted;
* **events**: `conntrack -E`, NEW / UPDATE / DESTROY;
* **steps so far**: each step and what it did to the entry.
"""),
        code('ping = ui.stepper(session, "ping")\nping'),
        code("ping.run_all();"),
        md("""
*Question:* the table's entry has two tuples (the *original* and *reply* columns). Which one
did `h1` send, and which one did `srv`'s echo reply match (see the packet view: pick it in
the *packet* list)?
"""),
        *scenario("udp", "udp", """
## A UDP question and its answer
""", """
*Questions:* press *question* alone (or *reset*, then *next step*): what does `[UNREPLIED]`
mean in the table? Then press *answer*: which flag disappeared, and which timeout does the
step's text say the answer set?
"""),
        md("""
## The table, live

In the live lab this table follows the tracker on its own: run
`.venv/bin/nattrack lab exec h1 -- curl -s 203.0.113.10` in a terminal and watch it.
In replay mode it shows the table once.

## Starting again

* a panel's **reset** button empties both tables (live) or rewinds the recording (replay);
* `session.reset()` does the same from code;
* *Kernel → Restart Kernel and Run All Cells* starts the notebook over;
* `sudo .venv/bin/nattrack lab down` stops the lab (`--force` clears what a crash left).
"""),
        code("table = ui.live_table(session)\ntable"),
        *CLOSING,
    ]


def tcp_states() -> list:
    return [
        *opening("01-tcp-states", "TCP states: SYN, ACK, FIN by hand", """
Conntrack does not run TCP; it *watches* it. Every packet moves the connection's entry
through a small state machine (`tcp_conntracks[][][]` in `nf_conntrack_proto_tcp.c`), chosen
by the packet's direction and flags. Here you play both ends of a connection by hand, one
packet per button, and watch the entry move on the diagram, with the kernel's own entry beside.
"""),
        *scenario("handshake", "handshake", """
## Open and close a connection

Step through the handshake, some data, and the close: press *reset*, then *next step* once
per packet, and predict each time which state comes next.
""", """
*Questions* (the *steps so far* table and the step texts above keep every step):
* which flags does the table show after the SYN, and after the third packet (`[UNREPLIED]`,
  `[ASSURED]`)?
* the timeout is 2 minutes after the SYN and 60 s after the SYN-ACK: why does it jump to
  5 days at the third packet?
* at the *data* step it drops from 431999 to 299 s, and after *data-ACK* it is back at
  431999: which setting gives the 300 s, and what was "in flight"?
* which states are there only because conntrack sees both directions?
"""),
        *scenario("rst", "rst", """
## A reset
""", """
*Question:* after the RST the entry is still in the table. For how long (read its timeout and
the step's text), and why keep it at all?
"""),
        *scenario("simultaneous", "simultaneous-close", """
## Both ends close at once

The two FINs cross on the wire.
""", """
*Question:* the diagram has no state "both closing". Where does the entry go instead (the
*FIN-srv* step), and does it still end in TIME_WAIT?
"""),
        *scenario("half", "half-close", """
## Half close

After `h1`'s FIN, `srv` keeps sending.
""", """
*Question:* which direction is closed in CLOSE_WAIT, and does data in the other direction
change the state (the *data* step in *steps so far*)?
"""),
        *scenario("closed", "closed-port", """
## A SYN to a closed port

Nothing listens on `srv`'s port 6000: its kernel answers with a RST.
""", """
*Questions:* the packet list has the RST: where did it go before and after the router?
The table is empty afterwards: in the events, which state was the entry in when it was
destroyed, and why at once rather than after 10 s like the RST panel's?
"""),
        *CLOSING,
    ]


def snat() -> list:
    return [
        *opening("02-snat", "SNAT: what the router rewrites, and how replies find their way back",
                 """
Masquerading rewrites the source of what leaves the LAN, and the destination of what comes
back. The table's two tuples are how the router knows: the **original** tuple is what `h1`
sent, the **reply** tuple is what `srv`'s answer will look like.
"""),
        *scenario("rewrite", "rewrite", """
## One packet before and after
""", """
Look at the packet view, field by field (the *packet* list has each packet of the last step;
press *SYN* to see h1's). *Questions:* which fields changed? Why did the checksums change
although you did not touch them? In the reply, which address is rewritten?
"""),
        *scenario("clash", "clash", """
## Two hosts, one source port

`h1` and `h2` both send from port 40021 to the same server port.
""", """
*Questions:* in the table, `h1`'s reply tuple ends in `203.0.113.1:40021`: MASQUERADE kept
its port, which was free. The public side has one address; what did the router change for
`h2`, and where do you read the port it chose? How does `srv`'s answer to that port reach
`h2` (the packet view)?
"""),
        md("""
## SNAT with a port range

The rules for the next scenario (loaded into the router at its first step, and again before
any step if another notebook loaded others meanwhile; the step's text then says so):
"""),
        code('ui.show_rules("classroom-snat-range")'),
        *scenario("snatrange", "snat-range", "", """
*Question:* in the previous panel MASQUERADE kept `h1`'s free port 40021. Here `h1` sends
from port 40022, just as free: which source port does the table's reply tuple show, and why
does SNAT with a range change it anyway?
"""),
        md("""
## Port forwarding (DNAT)

`srv` connects to the router's public port 8080; this rule sends it to `h2` (shown in the
syntax your class uses, iptables or nft: `ui.set_syntax("nft")` switches):
"""),
        code('ui.show_rule("nat", "-A PREROUTING -i ntr-wan -p tcp --dport 8080 '
             '-j DNAT --to-destination 10.0.0.11:5080")'),
        *scenario("forward", "port-forward", "", """
*Questions:* in the table, which tuple now differs from the packet `srv` sent? Which address
does `srv` see in the answer (pick the SYN-ACK in the packet view: *after*)?
"""),
        *CLOSING,
    ]


def timeouts() -> list:
    return [
        *opening("03-timeouts", "Timeouts: countdowns, garbage collection, a full table", """
Every entry has a deadline. Each packet that matches it sets a new one, from a timeout that
depends on the protocol and the state: `sysctl net.netfilter.nf_conntrack_*_timeout*`.
Here the timeouts are shortened (on nattrack's tracker and on the kernel alike, with the
kernel's names) so that you can watch them run out.
"""),
        *scenario("udp", "udp-assured", """
## UDP: UNREPLIED, a reply, ASSURED, expiry

Watch the chart while the steps run (the last one waits 25 seconds).
""", """
*Questions:* which timeout applies before the reply, after it, and after the third packet (each
step's text names the setting)? The entry disappears from the table at zero, but when does
`[DESTROY]` appear in the events, and why later?

*Try:* press *reset*, *question*, *answer*, then *+10 s* before *again*: what does the step's
text say happened, and why does it differ from the script?
""", maker="timeouts_panel", timeout=120),
        md("Let a few more seconds pass (the buttons *+1 s* ... *+30 s* do the same):"),
        code("udp.watch(5)", timeout=60),
        *scenario("tw", "time-wait", """
## TIME_WAIT runs out
""", """
*Question:* the chart shows TIME_WAIT's 5 s running out, then the `[DESTROY]`: why does
conntrack keep a closed connection in TIME_WAIT at all?
""", maker="timeouts_panel", timeout=120),
        *scenario("full", "table-full", """
## A full table and early drop

When the table is full, a new connection is only admitted if an entry that never became
ASSURED can be evicted (`early_drop()`); ASSURED ones are kept. A lab namespace cannot
lower the kernel's `nf_conntrack_max`, so this scenario runs nattrack's tracker alone
(live or not), with room for 4 entries.
""", """
*Questions:* which entry was evicted to make room (the last step's text and the `[DESTROY]`
in the events), and which kind survived?
"""),
        *CLOSING,
    ]


def related_invalid() -> list:
    return [
        *opening("04-related-and-invalid", "RELATED and INVALID: errors, strays and a firewall",
                 """
Not every packet belongs to a connection the simple way. An ICMP error is **RELATED** to the
connection whose packet it quotes; a packet that fits no connection's rules is **INVALID**:
it gets no entry, and therefore no NAT.
"""),
        *scenario("unreach", "port-unreachable", """
## An ICMP error is RELATED
""", """
The packet view shows the ICMP error (the step's last packet). *Questions:* the error quotes
the datagram `srv` received; which addresses are inside the quote (the `inner` rows) before
and after the router? Why must the router rewrite the inside too?
"""),
        *scenario("ttl", "ttl-exceeded", """
## Time exceeded: from further on, and from the router itself
""", """
The packet view shows the router's own error (one column: it was never translated, the
router made it). *Questions:* which entry does it belong to (the *steps so far* table says
RELATED), and what is its source address on the LAN side? Compare with the *far-error*
step's error, which came from outside.
"""),
        *scenario("leak", "invalid-leak", """
## INVALID packets leak without a filter rule
""", """
*Questions:* the packet is forwarded, but look at its source address after the router (the
packet view). Why was it not translated? Who on the Internet sees a private address now?
"""),
        md("""
## A stateful firewall from conntrack states

The next scenario loads these rules (in the syntax your class uses, iptables or nft:
`ui.set_syntax("nft")` switches):
"""),
        code('ui.show_rules("classroom-firewall")'),
        *scenario("fw", "firewall", "", """
*Questions:* which rule stops the stray ACK now (its verdict is in *steps so far*)? The
unsolicited SYN from outside is translated by DNAT but dropped: why does it never appear in
the table?
"""),
        *CLOSING,
    ]


def incidents() -> list:
    """05: two production incidents on the engine (nattrack.notebook.incidents)."""
    return [
        md("""
# Incidents: the DNS race and the stale UDP entry

Two faults operators really fight with (issue tracker rows #2 and #3 of lab 07), replayed
step by step on nattrack's engine: packets made here and run through the same conntrack and
NAT code as the other notebooks, with the kernel's rules for clashes and timeouts. The race
needs two CPUs within the same microsecond, so this notebook never uses the live lab (lab 07
stages both incidents live); `tests/kernel/test_race.py` shows the real kernel doing what
the engine does here.
"""),
        code(PARAMS, tags=["parameters"]),
        code('from nattrack.notebook import incidents, ui\n'
             'session = incidents.open_session("05-incidents", MODE)\nui.banner(session)'),
        md("""
## 1. DNS lookups that take 5 seconds: the insertion race

A new connection's entry is made when its first packet enters the node
(`nf_conntrack_in()`), but it only goes into the table at the very end of that packet's
trip (`__nf_conntrack_confirm()`). Two packets of one new flow handled **at the same time on
two CPUs** both find nothing, both make an entry, and the second to confirm finds the first's:
a *clash* (docs/clash.md). Step through it: both CPUs' packets, each CPU's unconfirmed
entry, the confirms, and what the loser's fate was. The drop-downs change the variant, the
kernel (6.1 is Debian 12's, 6.18 the newest) and which CPU confirms first.
"""),
        code('race = incidents.race_panel("dns-race")\nrace'),
        code("race.run_all();"),
        md("""
*Questions:* after *cpu-1*, why is the table (`conntrack -L`) still empty although two
entries exist? At *confirm-second*, which counter of `conntrack -S` moved, on which CPU?
The loser's entry is inserted "in the reply direction only": why does `conntrack -L` never
show it, and why does the AAAA answer still reach the client? Switch the variant to *both
drawn to the same instance*: what happens to the loser now? Does the kernel drop-down change
anything (the table under the timeline says)?
"""),
        md("""
## 2. Where the 5 seconds still come from: two pods, one source port, SNAT

On current kernels a DNAT race to two backends is resolved (above). A query is still
**dropped** when the loser's *reply* tuple is held by another flow: two pods asking the same
server from the same source port at the same moment, through the node's masquerade.
"""),
        code('snat = incidents.race_panel("dns-race-snat")\nsnat'),
        code("snat.run_all();"),
        md("""
*Questions:* at *cpu-1*, compare the two unconfirmed entries' reply tuples: why did NAT give
both the same public port? At *confirm-second*, what does `conntrack -S` count, and what does
the timeline show the pod's resolver doing for 5 seconds? Switch to *--random-fully*: why
does the race no longer cost anything?
"""),
        md("""
## 3. A backend restarts, and one client is black-holed: the stale UDP entry

`srv` asks a UDP service through the node's DNAT every 2 seconds, always from port 5353.
The backend restarts and the rule is updated, but the client keeps getting no answer.
"""),
        code("stale = incidents.stale_panel()\nstale"),
        code("stale.run_all();"),
        md("""
*Questions:* after *queries-lost*, which address does the table's reply tuple still name?
Why does the entry never expire (the chart), although no answer has come for 30 seconds?
Why does a query from port 5354 work? What does `conntrack -D` change, and what does it
leave alone?
"""),
        *CLOSING,
    ]


NOTEBOOKS = {"00-welcome": welcome, "01-tcp-states": tcp_states, "02-snat": snat,
             "03-timeouts": timeouts, "04-related-and-invalid": related_invalid,
             "05-incidents": incidents}


def build(name: str):
    nb = nbformat.v4.new_notebook()
    nb.cells = NOTEBOOKS[name]()
    for i, c in enumerate(nb.cells):            # stable ids: no diff on regeneration
        c["id"] = f"{name[:2]}-{i:02d}"
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def text(name: str) -> str:
    return nbformat.writes(build(name)) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name in NOTEBOOKS:
        path = OUT / f"{name}.ipynb"
        want = text(name)
        if check:
            if not path.exists() or path.read_text() != want:
                stale.append(str(path))
        else:
            path.write_text(want)
    if stale:
        print("out of date (run `python -m tests.notebooks.make_notebooks`): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

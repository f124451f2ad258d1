"""TCP connection tracking.

Models net/netfilter/nf_conntrack_proto_tcp.c (Linux 6.x): tcp_error(),
tcp_new(), nf_conntrack_tcp_packet() (here tcp_packet) and tcp_in_window().

Theory of operation
-------------------
Every packet is reduced to a flag index (get_conntrack_index) and looked up in
``TCP_CONNTRACKS[direction][index][old_state]``.  The table gives the new
state, or one of two markers: sIV (the packet is INVALID) and sIG (let it
through, change nothing, but remember it in case the tracker is out of sync).
A handful of special cases follow the table (reopen from TIME_WAIT/CLOSE,
simultaneous open, the RST checks), then the window check, then the timeout.

The table is data: the notebooks' state diagrams are drawn from it.
"""
from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Mapping

from ..packet.ipv4 import TH_ACK, TH_CWR, TH_ECE, TH_FIN, TH_PSH, TH_RST, TH_SYN, TH_URG
from .conn import (IP_CT_DIR_ORIGINAL, IP_CT_DIR_REPLY, IPCT_ASSURED, IPCT_PROTOINFO,
                   IPS_ASSURED, IPS_CONFIRMED, IPS_FIXED_TIMEOUT, IPS_SEEN_REPLY)
from .seqadj import seq_offset
from .uapi import INVALID, NF_ACCEPT, REPEAT

if TYPE_CHECKING:
    from ..packet.ipv4 import Packet
    from .conn import Conn
    from .core import ConntrackTable

# enum tcp_conntrack
(TCP_CONNTRACK_NONE, TCP_CONNTRACK_SYN_SENT, TCP_CONNTRACK_SYN_RECV, TCP_CONNTRACK_ESTABLISHED,
 TCP_CONNTRACK_FIN_WAIT, TCP_CONNTRACK_CLOSE_WAIT, TCP_CONNTRACK_LAST_ACK,
 TCP_CONNTRACK_TIME_WAIT, TCP_CONNTRACK_CLOSE, TCP_CONNTRACK_SYN_SENT2, TCP_CONNTRACK_MAX,
 TCP_CONNTRACK_IGNORE, TCP_CONNTRACK_RETRANS, TCP_CONNTRACK_UNACK) = range(14)
TCP_CONNTRACK_NAMES = ["NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
                       "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"]

# The sysctl behind each state's timeout (RETRANS and UNACK are timeout classes).
TIMEOUT_SYSCTL = {
    TCP_CONNTRACK_SYN_SENT: "nf_conntrack_tcp_timeout_syn_sent",
    TCP_CONNTRACK_SYN_RECV: "nf_conntrack_tcp_timeout_syn_recv",
    TCP_CONNTRACK_ESTABLISHED: "nf_conntrack_tcp_timeout_established",
    TCP_CONNTRACK_FIN_WAIT: "nf_conntrack_tcp_timeout_fin_wait",
    TCP_CONNTRACK_CLOSE_WAIT: "nf_conntrack_tcp_timeout_close_wait",
    TCP_CONNTRACK_LAST_ACK: "nf_conntrack_tcp_timeout_last_ack",
    TCP_CONNTRACK_TIME_WAIT: "nf_conntrack_tcp_timeout_time_wait",
    TCP_CONNTRACK_CLOSE: "nf_conntrack_tcp_timeout_close",
    TCP_CONNTRACK_RETRANS: "nf_conntrack_tcp_timeout_max_retrans",
    TCP_CONNTRACK_UNACK: "nf_conntrack_tcp_timeout_unacknowledged",
}

# Flag index (get_conntrack_index)
TCP_SYN_SET, TCP_SYNACK_SET, TCP_FIN_SET, TCP_ACK_SET, TCP_RST_SET, TCP_NONE_SET = range(6)
INDEX_NAMES = ["SYN", "SYN-ACK", "FIN", "ACK", "RST", "NONE"]

# struct ip_ct_tcp_state flags
IP_CT_TCP_FLAG_WINDOW_SCALE = 0x01
IP_CT_TCP_FLAG_SACK_PERM = 0x02
IP_CT_TCP_FLAG_CLOSE_INIT = 0x04
IP_CT_TCP_FLAG_BE_LIBERAL = 0x08
IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED = 0x10
IP_CT_TCP_FLAG_MAXACK_SET = 0x20
IP_CT_EXP_CHALLENGE_ACK = 0x40
IP_CT_TCP_SIMULTANEOUS_OPEN = 0x80

MAXACKWINCONST = 66000

sNO, sSS, sSR, sES, sFW, sCW, sLA, sTW, sCL, sS2 = range(10)
sIV, sIG = TCP_CONNTRACK_MAX, TCP_CONNTRACK_IGNORE

# tcp_conntracks[dir][index][state] -- columns: sNO sSS sSR sES sFW sCW sLA sTW sCL sS2
# Under each row, one line per cell saying why, in the order and (where it has them) the
# words of the kernel's own comments; sIV: INVALID, sIG: ignored (see the module doc).
TCP_CONNTRACKS = (
    (   # ORIGINAL
        (sSS, sSS, sIG, sIG, sIG, sIG, sIG, sSS, sSS, sS2),   # syn
        # sNO -> sSS  Initialize a new connection
        # sSS -> sSS  Retransmitted SYN
        # sS2 -> sS2  Late retransmitted SYN
        # sSR -> sIG  A SYN after the server's SYN/ACK: as in sES
        # sES -> sIG  Error: a SYN in window outside SYN_SENT; the receiver will answer with RST
        #             and close, or we are out of sync and hold a dead connection
        # sFW -> sIG  As in sES
        # sCW -> sIG  As in sES
        # sLA -> sIG  As in sES
        # sTW -> sSS  Reopened connection (RFC 1122)
        # sCL -> sSS  Reopened after a RST
        (sIV, sIV, sSR, sIV, sIV, sIV, sIV, sIV, sIV, sSR),   # synack
        # sNO -> sIV  Too late and no reason to do anything
        # sSS -> sIV  Client can't send SYN and then SYN/ACK
        # sS2 -> sSR  SYN/ACK sent to SYN2 in simultaneous open
        # sSR -> sSR  Late retransmitted SYN/ACK in simultaneous open
        # sES -> sIV  Invalid SYN/ACK packets sent by the client
        # sFW -> sIV  As in sES
        # sCW -> sIV  As in sES
        # sLA -> sIV  As in sES
        # sTW -> sIV  As in sES
        # sCL -> sIV  As in sES
        (sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),   # fin
        # sNO -> sIV  Too late and no reason to do anything
        # sSS -> sIV  Client might not send FIN in this state: we wait for a SYN/ACK reply first
        # sS2 -> sIV  As in sSS
        # sSR -> sFW  Close started
        # sES -> sFW  Close started
        # sFW -> sLA  FIN seen in both directions, waiting for the last ACK (or a retransmitted FIN)
        # sCW -> sLA  The client closes too, now that the server's FIN was acknowledged
        # sLA -> sLA  Retransmitted FIN: remain in the same state
        # sTW -> sTW  Retransmitted FIN after the last ACK: remain
        # sCL -> sCL  Closed by a RST: remain
        (sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV),   # ack
        # sNO -> sES  Assumed: a connection picked up midway (nf_conntrack_tcp_loose)
        # sSS -> sIV  ACK is invalid: we haven't seen a SYN/ACK yet
        # sS2 -> sIV  As in sSS
        # sSR -> sES  Established state is reached
        # sES -> sES  Data and acknowledgments: stay established
        # sFW -> sCW  Normal close request answered by ACK
        # sCW -> sCW  Data and ACKs on the half still open
        # sLA -> sTW  Last ACK detected (RFC 5961 challenged)
        # sTW -> sTW  Retransmitted last ACK: remain in the same state
        # sCL -> sCL  Closed by a RST: remain
        (sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),   # rst
        # sNO -> sIV  A RST opens nothing
        # sSS -> sCL  The client aborts its own SYN
        # sS2 -> sCL  Simultaneous open aborted
        # sSR -> sCL  The client refuses the SYN/ACK
        # sES -> sCL  Connection reset (tcp_packet() has checked its sequence number)
        # sFW -> sCL  Reset while closing
        # sCW -> sCL  Reset while closing
        # sLA -> sCL  Reset instead of the last ACK
        # sTW -> sCL  Reset after both sides closed
        # sCL -> sCL  Another RST: remain
        (sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV),   # none
        # sNO..sS2 -> sIV  No SYN, FIN, ACK or RST: invalid in every state (tcp_error()
        #                  drops such a segment before the table is read)
    ),
    (   # REPLY
        (sIV, sS2, sIV, sIV, sIV, sIV, sIV, sSS, sIV, sS2),   # syn
        # sNO -> sIV  Never reached: an entry starts with its original direction
        # sSS -> sS2  Simultaneous open
        # sS2 -> sS2  Retransmitted simultaneous SYN
        # sSR -> sIV  Invalid SYN packets sent by the server
        # sES -> sIV  As in sSR
        # sFW -> sIV  As in sSR
        # sCW -> sIV  As in sSR
        # sLA -> sIV  As in sSR
        # sTW -> sSS  Reopened connection, but the server may have switched role
        # sCL -> sIV  Only the original direction reopens after a RST
        (sIV, sSR, sIG, sIG, sIG, sIG, sIG, sIG, sIG, sSR),   # synack
        # sNO -> sIV  Never reached: an entry starts with its original direction
        # sSS -> sSR  Standard open
        # sS2 -> sSR  Simultaneous open
        # sSR -> sIG  Retransmitted SYN/ACK, ignore it
        # sES -> sIG  Late retransmitted SYN/ACK?
        # sFW -> sIG  Might be SYN/ACK answering ignored SYN
        # sCW -> sIG  As in sFW
        # sLA -> sIG  As in sFW
        # sTW -> sIG  As in sFW
        # sCL -> sIG  As in sFW
        (sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),   # fin
        # sNO -> sIV  Never reached: an entry starts with its original direction
        # sSS -> sIV  Server might not send FIN in this state
        # sS2 -> sIV  As in sSS
        # sSR -> sFW  Close started
        # sES -> sFW  Close started
        # sFW -> sLA  FIN seen in both directions
        # sCW -> sLA  The server closes too, now that the client's FIN was acknowledged
        # sLA -> sLA  Retransmitted FIN
        # sTW -> sTW  Retransmitted FIN after the last ACK: remain
        # sCL -> sCL  Closed by a RST: remain
        (sIV, sIG, sSR, sES, sCW, sCW, sTW, sTW, sCL, sIG),   # ack
        # sNO -> sIV  Never reached: an entry starts with its original direction
        # sSS -> sIG  Might be a half-open connection
        # sS2 -> sIG  As in sSS
        # sSR -> sSR  Might answer late resent SYN
        # sES -> sES  Data and acknowledgments: stay established
        # sFW -> sCW  Normal close request answered by ACK
        # sCW -> sCW  Data and ACKs on the half still open
        # sLA -> sTW  Last ACK detected (RFC 5961 challenged)
        # sTW -> sTW  Retransmitted last ACK
        # sCL -> sCL  Closed by a RST: remain
        (sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),   # rst
        # sNO -> sIV  Never reached: an entry starts with its original direction
        # sSS -> sCL  The server refuses the connection (nothing listens on the port)
        # sS2 -> sCL  Simultaneous open aborted
        # sSR -> sCL  The server aborts its half-open connection
        # sES -> sCL  Connection reset (tcp_packet() has checked its sequence number)
        # sFW -> sCL  Reset while closing
        # sCW -> sCL  Reset while closing
        # sLA -> sCL  Reset instead of the last ACK
        # sTW -> sCL  Reset after both sides closed
        # sCL -> sCL  Another RST: remain
        (sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV),   # none
        # sNO..sS2 -> sIV  No SYN, FIN, ACK or RST: invalid in every state (tcp_error()
        #                  drops such a segment before the table is read)
    ),
)

# tcp_valid_flags[]: the only flag combinations tcp_error() accepts (PSH, ECE, CWR masked off).
TCP_VALID_FLAGS = frozenset((
    TH_SYN, TH_SYN | TH_URG, TH_SYN | TH_ACK, TH_RST, TH_RST | TH_ACK, TH_FIN | TH_ACK,
    TH_FIN | TH_ACK | TH_URG, TH_ACK, TH_ACK | TH_URG,
))

# Verdicts of tcp_in_window (tcp_packet's own, NF_ACCEPT, INVALID and REPEAT: uapi.py)
NFCT_TCP_IGNORE, NFCT_TCP_INVALID, NFCT_TCP_ACCEPT = 0, 1, 2


class RstCheck(enum.Enum):
    """What the TCP_CONNTRACK_CLOSE case of nf_conntrack_tcp_packet() decides for a RST."""
    INVALID = "invalid rst"               # return -NF_ACCEPT
    IN_WINDOW = "goto in_window"          # no window check
    CHECK_WINDOW = "break"                # on to tcp_in_window()


def get_conntrack_index(flags: int) -> int:
    """get_conntrack_index(): RST > SYN / SYN-ACK > FIN > ACK > NONE."""
    if flags & TH_RST:
        return TCP_RST_SET
    if flags & TH_SYN:
        return TCP_SYNACK_SET if flags & TH_ACK else TCP_SYN_SET
    if flags & TH_FIN:
        return TCP_FIN_SET
    if flags & TH_ACK:
        return TCP_ACK_SET
    return TCP_NONE_SET


def before(a: int, b: int) -> bool:
    """before(seq1, seq2) of include/net/tcp.h: (s32)(a - b) < 0."""
    return ((a - b) & 0xFFFFFFFF) >= 0x80000000


def after(a: int, b: int) -> bool:
    """after(seq2, seq1): before(seq1, seq2), written out (it runs a dozen times a packet)."""
    return ((b - a) & 0xFFFFFFFF) >= 0x80000000


class TcpSeen:
    """struct ip_ct_tcp_state: what the tracker knows of one direction."""
    __slots__ = ("td_end", "td_maxend", "td_maxwin", "td_maxack", "td_scale", "flags")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """memset(&ct->proto.tcp.seen[dir], 0, ...): forget what was seen of this direction."""
        self.td_end = self.td_maxend = self.td_maxwin = self.td_maxack = 0
        self.td_scale = 0
        self.flags = 0


class TcpState:
    """struct ip_ct_tcp: the state, both directions' windows and the last packet seen."""
    __slots__ = ("state", "seen", "last_dir", "last_index", "last_seq", "last_ack", "last_end",
                 "last_win", "last_wscale", "last_flags", "retrans")

    def __init__(self) -> None:
        self.state = TCP_CONNTRACK_NONE
        self.seen = (TcpSeen(), TcpSeen())
        self.last_dir = 0
        self.last_index = TCP_NONE_SET
        self.last_seq = self.last_ack = self.last_end = self.last_win = 0
        self.last_wscale = self.last_flags = 0
        self.retrans = 0


def segment_seq_plus_len(pkt: Packet) -> int:
    """seq + data length + SYN + FIN: the sequence number after this segment."""
    f = pkt.tcpflags
    data_len = pkt.l4len - pkt.doff                  # pkt.payload_len of a TCP segment
    return (pkt.seq + data_len + (1 if f & TH_SYN else 0) + (1 if f & TH_FIN else 0)) & 0xFFFFFFFF


def tcp_options(pkt: Packet, seen: TcpSeen) -> None:
    """tcp_options(): window scale and SACK-permitted from a SYN's options."""
    seen.td_scale = 0
    seen.flags &= IP_CT_TCP_FLAG_BE_LIBERAL
    if pkt.doff <= 20:
        return
    wscale, sackok, _ = pkt.tcp_options()
    if wscale is not None:
        seen.td_scale = wscale
        seen.flags |= IP_CT_TCP_FLAG_WINDOW_SCALE
    if sackok:
        seen.flags |= IP_CT_TCP_FLAG_SACK_PERM


def tcp_error(pkt: Packet, hook_is_prerouting: bool, sysctl: Mapping[str, int]) -> str | None:
    """tcp_error(): why the packet is INVALID before any state is looked at, or None."""
    if not pkt.l4ok:
        return "truncated packet"
    if sysctl["nf_conntrack_checksum"] and hook_is_prerouting and not pkt.l4_checksum_ok():
        return "bad checksum"
    if (pkt.tcpflags & ~(TH_ECE | TH_CWR | TH_PSH)) not in TCP_VALID_FLAGS:
        return "invalid tcp flag combination"
    return None


def tcp_new(ct: Conn, pkt: Packet, sysctl: Mapping[str, int]) -> bool:
    """tcp_new(): set up window data from the first packet; False if it cannot open."""
    index = get_conntrack_index(pkt.tcpflags)
    new_state = TCP_CONNTRACKS[0][index][TCP_CONNTRACK_NONE]
    if new_state >= TCP_CONNTRACK_MAX:
        return False                      # "invalid new"
    tcp = TcpState()
    s0 = tcp.seen[0]
    s0.td_end = segment_seq_plus_len(pkt)
    s0.td_maxwin = pkt.win or 1
    if new_state == TCP_CONNTRACK_SYN_SENT:
        s0.td_maxend = s0.td_end
        tcp_options(pkt, s0)
    elif not sysctl["nf_conntrack_tcp_loose"]:
        return False                      # don't try to pick up connections
    else:
        # Mid-stream pickup: history lost, guess from this packet; assume SACK and
        # be liberal in both directions since the window scale is unknown.
        s0.td_maxend = (s0.td_end + s0.td_maxwin) & 0xFFFFFFFF
        s0.flags = tcp.seen[1].flags = IP_CT_TCP_FLAG_SACK_PERM | IP_CT_TCP_FLAG_BE_LIBERAL
    ct.proto = tcp
    return True


def _tcp_init_sender(sender: TcpSeen, receiver: TcpSeen, pkt: Packet, end: int, win: int) -> None:
    """tcp_init_sender(): a SYN-ACK (or a reply-side SYN) initialises its direction."""
    sender.td_end = sender.td_maxend = end
    sender.td_maxwin = win or 1
    tcp_options(pkt, sender)
    # RFC 1323: both sides must send the window scale option to enable scaling.
    if not (sender.flags & IP_CT_TCP_FLAG_WINDOW_SCALE and receiver.flags & IP_CT_TCP_FLAG_WINDOW_SCALE):
        sender.td_scale = receiver.td_scale = 0


def _liberal(sender: TcpSeen, sysctl: Mapping[str, int], verdict: int) -> int:
    """nf_tcp_log_invalid(): with be_liberal every window failure is accepted."""
    if sender.flags & IP_CT_TCP_FLAG_BE_LIBERAL or sysctl["nf_conntrack_tcp_be_liberal"]:
        return NFCT_TCP_ACCEPT
    return verdict


def tcp_in_window(tcp: TcpState, direction: int, index: int, pkt: Packet, sysctl: Mapping[str, int],
                  receiver_offset: int = 0) -> int:
    """tcp_in_window(): the four sequence/ack checks (Rooij) and window bookkeeping;
    ``receiver_offset``: what a helper's NAT moved the receiver's bytes by (seqadj.py)."""
    sender, receiver = tcp.seen[direction], tcp.seen[1 - direction]
    flags = pkt.tcpflags
    seq = pkt.seq
    ack = sack = pkt.ack
    win_raw = win = pkt.win
    end = segment_seq_plus_len(pkt)
    M = 0xFFFFFFFF

    if (receiver.flags & IP_CT_TCP_FLAG_SACK_PERM and pkt.doff > 20
            and 5 in pkt.buf[pkt.l4 + 20:pkt.l4 + pkt.doff]):      # a SACK block may be there
        edge = pkt.tcp_options()[2]
        if edge is not None and after(edge, sack):
            sack = edge
    if receiver_offset:
        ack = (ack - receiver_offset) & M
        sack = (sack - receiver_offset) & M

    if sender.td_maxwin == 0:
        if flags & TH_SYN:
            _tcp_init_sender(sender, receiver, pkt, end, win)
            if not flags & TH_ACK:
                return NFCT_TCP_ACCEPT          # simultaneous open
        else:
            # Mid-stream: guess the sender's window from this packet.
            sender.td_end = end
            swin = (win << sender.td_scale) & M
            sender.td_maxwin = swin or 1
            sender.td_maxend = (end + sender.td_maxwin) & M
            if receiver.td_maxwin == 0:
                receiver.td_end = receiver.td_maxend = sack
            elif sack == (receiver.td_end + 1) & M:
                receiver.td_end = (receiver.td_end + 1) & M     # reply to a keepalive
    elif (flags & TH_SYN and after(end, sender.td_end)
          and tcp.state in (TCP_CONNTRACK_SYN_SENT, TCP_CONNTRACK_SYN_RECV)):
        # RFC 793: a reinitialised TCP uses higher sequence numbers; re-init this side.
        _tcp_init_sender(sender, receiver, pkt, end, win)
        if direction == IP_CT_DIR_REPLY and not flags & TH_ACK:
            return NFCT_TCP_ACCEPT

    if not flags & TH_ACK:
        ack = sack = receiver.td_end            # no ACK: pretend it was set and OK
    elif flags & (TH_ACK | TH_RST) == TH_ACK | TH_RST and ack == 0:
        ack = sack = receiver.td_end            # broken stacks: RST+ACK with ack 0

    if flags & TH_RST and seq == 0 and tcp.state == TCP_CONNTRACK_SYN_SENT:
        seq = end = sender.td_end               # RST answering a SYN

    maxackwin = max(sender.td_maxwin, MAXACKWINCONST)
    # Check I: upper bound of the sequence number.
    if not before(seq, (sender.td_maxend + 1) & M):
        overshot = (end - sender.td_maxend + 1) & M
        ack_ok = after(sack, (receiver.td_end - maxackwin - 1) & M)
        in_recv_win = bool(receiver.td_maxwin) and after(end, (sender.td_end - receiver.td_maxwin - 1) & M)
        if in_recv_win and ack_ok and overshot <= receiver.td_maxwin and before(sack, (receiver.td_end + 1) & M):
            # Slightly more than the window allows: remember it, ignore the packet.
            sender.td_end = end
            sender.flags |= IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED
            return _liberal(sender, sysctl, NFCT_TCP_IGNORE)
        return _liberal(sender, sysctl, NFCT_TCP_INVALID)      # SEQ is over upper bound
    # Check III: upper bound of the acknowledgement.
    if not before(sack, (receiver.td_end + 1) & M):
        return _liberal(sender, sysctl, NFCT_TCP_INVALID)      # ACK is over upper bound
    # Check II: lower bound of the sequence (retransmitted, already acknowledged data).
    if receiver.td_maxwin and not after(end, (sender.td_end - receiver.td_maxwin - 1) & M):
        return _liberal(sender, sysctl, NFCT_TCP_IGNORE)
    # Check IV: lower bound of the acknowledgement (overly delayed).
    if not after(sack, (receiver.td_end - maxackwin - 1) & M):
        return _liberal(sender, sysctl, NFCT_TCP_IGNORE)

    if not flags & TH_SYN:
        win = (win << sender.td_scale) & M
    # Update sender data.
    swin = (win + (sack - ack)) & M
    if sender.td_maxwin < swin:
        sender.td_maxwin = swin
    if after(end, sender.td_end):
        sender.td_end = end
        sender.flags |= IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED
    if flags & TH_ACK:
        if not sender.flags & IP_CT_TCP_FLAG_MAXACK_SET:
            sender.td_maxack = ack
            sender.flags |= IP_CT_TCP_FLAG_MAXACK_SET
        elif after(ack, sender.td_maxack):
            sender.td_maxack = ack
    # Update receiver data.
    if receiver.td_maxwin != 0 and after(end, sender.td_maxend):
        receiver.td_maxwin = (receiver.td_maxwin + end - sender.td_maxend) & M
    if after((sack + win) & M, (receiver.td_maxend - 1) & M):
        receiver.td_maxend = (sack + win) & M
        if win == 0:
            receiver.td_maxend = (receiver.td_maxend + 1) & M
    if ack == receiver.td_end:
        receiver.flags &= ~IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED
    # Count identical retransmissions.
    if index == TCP_ACK_SET:
        if (tcp.last_dir == direction and tcp.last_seq == seq and tcp.last_ack == ack
                and tcp.last_end == end and tcp.last_win == win_raw):
            tcp.retrans += 1
        else:
            tcp.last_dir, tcp.last_seq, tcp.last_ack = direction, seq, ack
            tcp.last_end, tcp.last_win = end, win_raw
            tcp.retrans = 0
    return NFCT_TCP_ACCEPT


def tcp_can_early_drop(tcp: TcpState) -> bool:
    """tcp_can_early_drop(): the connection is closing."""
    return tcp.state in (TCP_CONNTRACK_FIN_WAIT, TCP_CONNTRACK_LAST_ACK, TCP_CONNTRACK_TIME_WAIT,
                         TCP_CONNTRACK_CLOSE, TCP_CONNTRACK_CLOSE_WAIT)


SYN_SENT2_TIMEOUT = 120      # tcp_timeouts[TCP_CONNTRACK_SYN_SENT2]: no sysctl changes it


def state_timeout(sysctl: Mapping[str, int], state: int) -> int:
    if state == TCP_CONNTRACK_SYN_SENT2:
        return SYN_SENT2_TIMEOUT
    return sysctl[TIMEOUT_SYSCTL[state]]


def _handle_invalid(ct: Conn, tcp: TcpState, direction: int, index: int, table: ConntrackTable,
                    now_j: int) -> None:
    """nf_tcp_handle_invalid(): out-of-window FIN/RST both ways shortens an ASSURED entry."""
    if not ct.status & IPS_ASSURED or ct.status & IPS_FIXED_TIMEOUT:
        return
    if index not in (TCP_RST_SET, TCP_FIN_SET):
        return
    if tcp.last_dir != direction and tcp.last_index in (TCP_FIN_SET, TCP_RST_SET):
        hz = table.hz
        expires = max(0, ct.timeout - now_j)
        if expires < 120 * hz:
            return
        unack = state_timeout(table.sysctl, TCP_CONNTRACK_UNACK) * hz
        if expires > unack:
            ct.timeout = now_j + unack
    else:
        tcp.last_index, tcp.last_dir = index, direction


def tcp_packet(table: ConntrackTable, ct: Conn, pkt: Packet, ctinfo: int, direction: int,
               hook_is_prerouting: bool) -> int:
    """nf_conntrack_tcp_packet(): NF_ACCEPT, INVALID, or REPEAT (kill and look up again).

    ``table`` is the ConntrackTable: it supplies the settings, the clock and
    refresh/kill.  Events are cached on ``ct.ecache``.
    """
    sysctl = table.sysctl
    if tcp_error(pkt, hook_is_prerouting, sysctl):
        return INVALID
    if not ct.status & IPS_CONFIRMED and not tcp_new(ct, pkt, sysctl):
        return INVALID
    tcp: TcpState = ct.proto
    old_state = tcp.state
    flags = pkt.tcpflags
    index = get_conntrack_index(flags)
    new_state = TCP_CONNTRACKS[direction][index][old_state]

    in_window = False
    if new_state == TCP_CONNTRACK_SYN_SENT and old_state >= TCP_CONNTRACK_TIME_WAIT:
        # Reopen: a SYN on a closed/aborted connection.  RFC 1122 allows it from TIME_WAIT.
        if ((tcp.seen[direction].flags | tcp.seen[1 - direction].flags) & IP_CT_TCP_FLAG_CLOSE_INIT
                or (tcp.last_dir == direction and tcp.last_index == TCP_RST_SET)):
            table.kill(ct)
            return REPEAT
        new_state = TCP_CONNTRACK_IGNORE          # fall through to "ignore"
    if new_state == TCP_CONNTRACK_IGNORE:
        if (index == TCP_SYNACK_SET and tcp.last_index == TCP_SYN_SET
                and tcp.last_dir != direction and pkt.ack == tcp.last_end):
            # This SYN-ACK answers a SYN we ignored: both ends are in sync, we are not.
            old_state, new_state = TCP_CONNTRACK_SYN_SENT, TCP_CONNTRACK_SYN_RECV
            s = tcp.seen[tcp.last_dir]
            s.td_end = s.td_maxend = tcp.last_end
            s.td_maxwin = tcp.last_win or 1
            s.td_scale = tcp.last_wscale
            tcp.last_flags &= ~IP_CT_EXP_CHALLENGE_ACK
            s.flags = tcp.last_flags
            tcp.seen[direction].clear()
        else:
            tcp.last_index, tcp.last_dir = index, direction
            tcp.last_seq = pkt.seq
            tcp.last_end = segment_seq_plus_len(pkt)
            tcp.last_win = pkt.win
            if index == TCP_SYN_SET and direction == IP_CT_DIR_ORIGINAL:
                seen = TcpSeen()
                tcp.last_flags = tcp.last_wscale = 0
                tcp_options(pkt, seen)
                if seen.flags & IP_CT_TCP_FLAG_WINDOW_SCALE:
                    tcp.last_flags |= IP_CT_TCP_FLAG_WINDOW_SCALE
                    tcp.last_wscale = seen.td_scale
                if seen.flags & IP_CT_TCP_FLAG_SACK_PERM:
                    tcp.last_flags |= IP_CT_TCP_FLAG_SACK_PERM
                if old_state == TCP_CONNTRACK_LAST_ACK:
                    tcp.last_flags |= IP_CT_EXP_CHALLENGE_ACK   # RFC 5961 challenge ACK may follow
            if old_state == TCP_CONNTRACK_SYN_SENT and index == TCP_ACK_SET and direction == IP_CT_DIR_REPLY:
                tcp.last_ack = pkt.ack                           # possible challenge ACK to our SYN
            return NF_ACCEPT
    elif new_state == TCP_CONNTRACK_MAX:
        return INVALID
    elif new_state == TCP_CONNTRACK_TIME_WAIT:
        if (old_state == TCP_CONNTRACK_LAST_ACK and index == TCP_ACK_SET
                and tcp.last_dir != direction and tcp.last_index == TCP_SYN_SET
                and tcp.last_flags & IP_CT_EXP_CHALLENGE_ACK):
            tcp.last_flags &= ~IP_CT_EXP_CHALLENGE_ACK       # RFC 5961 challenge ACK: no state change
            return NF_ACCEPT
    elif new_state == TCP_CONNTRACK_SYN_SENT2:
        tcp.last_flags |= IP_CT_TCP_SIMULTANEOUS_OPEN
    elif new_state == TCP_CONNTRACK_SYN_RECV:
        if direction == IP_CT_DIR_REPLY and index == TCP_ACK_SET and tcp.last_flags & IP_CT_TCP_SIMULTANEOUS_OPEN:
            new_state = TCP_CONNTRACK_ESTABLISHED
    elif new_state == TCP_CONNTRACK_CLOSE and index == TCP_RST_SET:
        rst, keep = _rst_check(ct, tcp, direction, old_state, pkt, sysctl)
        if rst is RstCheck.INVALID:
            return INVALID
        in_window = rst is RstCheck.IN_WINDOW
        if keep:
            new_state = old_state

    now_j = table.now_j
    if not in_window:
        # NAT sequence mangling (nf_ct_seq_offset()): ACKs are read as the receiver sent.
        offset = seq_offset(table, ct, 1 - direction, (pkt.ack - 1) & 0xFFFFFFFF) if table.seqadj else 0
        res = tcp_in_window(tcp, direction, index, pkt, sysctl, offset)
        if res == NFCT_TCP_IGNORE:
            return NF_ACCEPT
        if res == NFCT_TCP_INVALID:
            _handle_invalid(ct, tcp, direction, index, table, now_j)
            return INVALID

    # From now on the packet is in window.
    tcp.last_index, tcp.last_dir = index, direction
    tcp.state = new_state
    if old_state != new_state and new_state == TCP_CONNTRACK_FIN_WAIT:
        tcp.seen[direction].flags |= IP_CT_TCP_FLAG_CLOSE_INIT

    timeout = _choose_timeout(tcp, new_state, index, sysctl)
    if new_state != old_state:
        ct.ecache |= IPCT_PROTOINFO

    if not ct.status & IPS_SEEN_REPLY:
        if flags & TH_RST:
            # The only answer is a RST: no connection, delete the entry at once.
            table.acct(ct, pkt, direction)      # nf_ct_kill_acct()
            table.kill(ct)
            return NF_ACCEPT
        if index == TCP_SYN_SET and old_state == TCP_CONNTRACK_SYN_SENT:
            return NF_ACCEPT                 # SYN retransmission: do not renew the timeout
        unack = state_timeout(sysctl, TCP_CONNTRACK_UNACK)
        if new_state == TCP_CONNTRACK_ESTABLISHED and timeout > unack:
            timeout = unack                  # mid-stream pickup: no 5-day timeout yet
    elif (not ct.status & IPS_ASSURED
          and old_state in (TCP_CONNTRACK_SYN_RECV, TCP_CONNTRACK_ESTABLISHED)
          and new_state == TCP_CONNTRACK_ESTABLISHED):
        ct.status |= IPS_ASSURED
        ct.ecache |= IPCT_ASSURED
    table.refresh(ct, timeout, pkt, direction)
    return NF_ACCEPT


def _rst_check(ct: Conn, tcp: TcpState, direction: int, old_state: int, pkt: Packet,
               sysctl: Mapping[str, int]) -> tuple[RstCheck, bool]:
    """The RST special cases of tcp_packet() (its TCP_CONNTRACK_CLOSE case).

    Returns (what to do, keep_state); keep_state leaves the state as it was so that a
    challenge ACK can still pass.
    """
    if tcp_can_early_drop(tcp):
        return RstCheck.IN_WINDOW, False   # closing: the tuple may be reused, skip checks
    peer = tcp.seen[1 - direction]
    seq = pkt.seq
    keep = False
    if peer.flags & IP_CT_TCP_FLAG_MAXACK_SET and tcp.last_index != TCP_SYN_SET:
        established = tcp.state == TCP_CONNTRACK_ESTABLISHED and ct.status & IPS_ASSURED
        if seq == 0 and not established:
            return RstCheck.CHECK_WINDOW, False   # most likely the answer to a SYN we let through
        if before(seq, peer.td_maxack) and not sysctl["nf_conntrack_tcp_ignore_invalid_rst"]:
            return RstCheck.INVALID, False
        if not established or seq == peer.td_maxack:
            return RstCheck.CHECK_WINDOW, False
        if tcp.last_index == TCP_ACK_SET and tcp.last_dir == direction and seq == tcp.last_end:
            return RstCheck.CHECK_WINDOW, False   # RST right after our own data: part of a train
        keep = True                        # not the exact sequence: allow a challenge ACK
    # The SYN case answers the other side's SYN only ("netfilter: conntrack: tcp: do not
    # force CLOSE on invalid-seq RST without direction check", stable June 2026: 6.12.93).
    if (((ct.status & IPS_SEEN_REPLY and tcp.last_index == TCP_SYN_SET
          and tcp.last_dir != direction)
         or (not ct.status & IPS_ASSURED and tcp.last_index == TCP_ACK_SET))
            and pkt.ack == tcp.last_end):
        return RstCheck.IN_WINDOW, keep    # RST to a SYN or ACK we let through unsynced
    if (old_state == TCP_CONNTRACK_SYN_SENT and tcp.last_index == TCP_ACK_SET
            and tcp.last_dir == IP_CT_DIR_REPLY and seq == tcp.last_ack):
        return RstCheck.IN_WINDOW, keep    # reset in response to a challenge ACK
    return RstCheck.CHECK_WINDOW, keep


def _choose_timeout(tcp: TcpState, new_state: int, index: int, sysctl: Mapping[str, int]) -> int:
    """The timeout for an accepted packet (first match wins, reference §3.5)."""
    t = state_timeout(sysctl, new_state)
    retrans = state_timeout(sysctl, TCP_CONNTRACK_RETRANS)
    if tcp.retrans >= sysctl["nf_conntrack_tcp_max_retrans"] and t > retrans:
        return retrans
    if index == TCP_RST_SET:
        return state_timeout(sysctl, TCP_CONNTRACK_CLOSE)
    unack = state_timeout(sysctl, TCP_CONNTRACK_UNACK)
    if (tcp.seen[0].flags | tcp.seen[1].flags) & IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED and t > unack:
        return unack
    if tcp.last_win == 0 and t > retrans:
        return retrans
    return t

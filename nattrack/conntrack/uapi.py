"""Netfilter's numbers every layer shares: the verdicts and the IPv4 hooks.

Models include/uapi/linux/netfilter.h (NF_DROP, NF_ACCEPT; enum nf_inet_hooks).  The
protocol trackers' own INVALID (0) and REPEAT (-1) are theirs, not netfilter verdicts.
"""
from __future__ import annotations

NF_DROP, NF_ACCEPT = 0, 1

# enum nf_inet_hooks
NF_INET_PRE_ROUTING, NF_INET_LOCAL_IN, NF_INET_FORWARD, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING = range(5)

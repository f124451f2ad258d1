"""Netfilter's numbers every layer shares: the verdicts and the IPv4 hooks.

Models include/uapi/linux/netfilter.h (NF_DROP, NF_ACCEPT; enum nf_inet_hooks) and
include/uapi/linux/netfilter_ipv4.h (enum nf_ip_hook_priorities, the ones used here).  The
protocol trackers' own INVALID (0) and REPEAT (-1) are theirs, not netfilter verdicts.
"""
from __future__ import annotations

NF_DROP, NF_ACCEPT = 0, 1

# enum nf_inet_hooks
NF_INET_PRE_ROUTING, NF_INET_LOCAL_IN, NF_INET_FORWARD, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING = range(5)

# enum nf_ip_hook_priorities: a hook's entries run in this order, lowest first.
NF_IP_PRI_RAW = -300
NF_IP_PRI_CONNTRACK = -200      # a chain at or below runs before conntrack (the raw table)

"""Netfilter's numbers every layer shares: the verdicts and the IPv4 hooks.

Models include/uapi/linux/netfilter.h (NF_DROP, NF_ACCEPT; enum nf_inet_hooks) and
include/uapi/linux/netfilter_ipv4.h (enum nf_ip_hook_priorities, the ones used here).  A
protocol tracker answers nf_conntrack_in() with NF_ACCEPT or, as the kernel's do, a negated
verdict: INVALID and REPEAT below.
"""
from __future__ import annotations

NF_DROP, NF_ACCEPT = 0, 1
NF_REPEAT = 4

# A tracker's negative answers (nf_conntrack_in(): "inverse of the return code tells the
# netfilter core what to do"): -NF_ACCEPT, the packet is INVALID (counted, let through
# without a conntrack); -NF_REPEAT, a SYN reopened a closed TCP connection: look up again.
INVALID, REPEAT = -NF_ACCEPT, -NF_REPEAT

# enum nf_inet_hooks
NF_INET_PRE_ROUTING, NF_INET_LOCAL_IN, NF_INET_FORWARD, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING = range(5)

# enum nf_ip_hook_priorities: a hook's entries run in this order, lowest first.
NF_IP_PRI_RAW = -300
NF_IP_PRI_CONNTRACK = -200      # a chain at or below runs before conntrack (the raw table)
